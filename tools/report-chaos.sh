#!/usr/bin/env bash
# Makes the README's screenshot of the report of a chaos run: runs `chaos` (4 branches at full
# speed, random kill -9s and, as root with nftables, partitions) for RUN with its files kept, then
# `snapctl report --faults` (the run's fault timeline) `--stats` (its branches' stats files) and
# screenshots the page with headless Chromium (Debian package `chromium`).
#
#   tools/report-chaos.sh [OUT.png]        default OUT: tools/report-chaos.png
#
# Environment: RUN (chaos --duration, default 25s), SEED (default 7), BIN_DIR (where bank, chaos
# and snapctl are; default: build them with cargo into ${CARGO_TARGET_DIR:-target}/release),
# KEEP=1 keeps the working directory.
set -euo pipefail
cd "$(dirname "$0")/.."

out=${1:-tools/report-chaos.png}
run=${RUN:-25s}
seed=${SEED:-7}

if ! command -v chromium >/dev/null 2>&1; then
  echo "report-chaos: chromium not found (Debian: apt-get install chromium)" >&2
  exit 1
fi
if [ -z "${BIN_DIR:-}" ]; then
  cargo build --release --bin bank --bin snapctl
  cargo build --release -p snapbank-tools --bin chaos
  BIN_DIR=${CARGO_TARGET_DIR:-target}/release
fi
for b in bank chaos snapctl; do
  if [ ! -x "$BIN_DIR/$b" ]; then
    echo "report-chaos: $BIN_DIR/$b not found" >&2
    exit 1
  fi
done

work=$(mktemp -d)
if [ "${KEEP:-}" = 1 ]; then
  echo "report-chaos: working directory $work"
else
  trap 'rm -rf "$work"' EXIT
fi

echo "== chaos for $run (seed $seed)"
if ! "$BIN_DIR/chaos" --duration "$run" --seed "$seed" --dir "$work/run" \
  --faults "$work/faults.jsonl" >"$work/chaos.log" 2>&1; then
  cat "$work/chaos.log" >&2
  exit 1
fi
grep -E '^chaos: (kills|verdict)' "$work/chaos.log"

echo "== snapctl report --faults --stats"
"$BIN_DIR/snapctl" report --data-dir "$work/run/data" --hosts "$work/run/host.list" \
  --faults "$work/faults.jsonl" --stats "$work/run/stats" --out "$work/report.html"

echo "== chromium --screenshot"
if ! chromium --headless --no-sandbox --disable-gpu --disable-quic --no-first-run \
  --disable-background-networking --disable-component-update --disable-sync \
  --hide-scrollbars --user-data-dir="$work/chromium" --window-size=1100,"${HEIGHT:-3300}" \
  --screenshot="$work/report.png" "file://$work/report.html" >"$work/chromium.log" 2>&1; then
  cat "$work/chromium.log" >&2
  exit 1
fi
mkdir -p "$(dirname "$out")"
cp "$work/report.png" "$out"
echo "wrote $out ($(wc -c <"$out") bytes)"

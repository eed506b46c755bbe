#!/usr/bin/env bash
# Makes the README's screenshot of `snapctl report`: runs a 4-branch cluster on loopback for a few
# seconds with a snapshot every 100 ms, stops it (start_bank --for), writes the report and
# screenshots it with headless Chromium (Debian package `chromium`).
#
#   tools/report-screenshot.sh [OUT.png]        default OUT: tools/report-example.png
#
# Environment: RUN (how long the cluster runs, default 6s), BASE_PORT (first of four ports,
# default 18800), BIN_DIR (where bank, start_bank and snapctl are; default: build them with
# cargo into ${CARGO_TARGET_DIR:-target}/release), KEEP=1 keeps the working directory.
set -euo pipefail
cd "$(dirname "$0")/.."

out=${1:-tools/report-example.png}
run=${RUN:-6s}
port=${BASE_PORT:-18800}

if ! command -v chromium >/dev/null 2>&1; then
  echo "report-screenshot: chromium not found (Debian: apt-get install chromium)" >&2
  exit 1
fi
if [ -z "${BIN_DIR:-}" ]; then
  cargo build --release --bin bank --bin start_bank --bin snapctl
  BIN_DIR=${CARGO_TARGET_DIR:-target}/release
fi
for b in bank start_bank snapctl; do
  if [ ! -x "$BIN_DIR/$b" ]; then
    echo "report-screenshot: $BIN_DIR/$b not found" >&2
    exit 1
  fi
done

work=$(mktemp -d)
if [ "${KEEP:-}" = 1 ]; then
  echo "report-screenshot: working directory $work"
else
  trap 'rm -rf "$work"' EXIT
fi

printf '127.0.0.1:%d:S\n127.0.0.1:%d\n127.0.0.1:%d\n127.0.0.1:%d\n' \
  "$port" $((port + 1)) $((port + 2)) $((port + 3)) >"$work/host.list"

echo "== running 4 branches for $run (snapshot every 100 ms)"
if ! "$BIN_DIR/start_bank" 127.0.0.1 --hosts "$work/host.list" --data-dir "$work/data" \
  --for "$run" --settle 300ms --transfer-interval 1ms --snapshot-interval 100ms --seed 1 \
  --status-interval 1h >"$work/start_bank.log" 2>&1; then
  cat "$work/start_bank.log" >&2
  exit 1
fi
tail -n 3 "$work/start_bank.log"

echo "== snapctl report"
"$BIN_DIR/snapctl" report --data-dir "$work/data" --hosts "$work/host.list" \
  --out "$work/report.html"

echo "== chromium --screenshot"
# 1100 px wide; tall enough for the five charts and the tables.
if ! chromium --headless --no-sandbox --disable-gpu --disable-quic --no-first-run \
  --disable-background-networking --disable-component-update --disable-sync \
  --hide-scrollbars --user-data-dir="$work/chromium" --window-size=1100,2800 \
  --screenshot="$work/report.png" "file://$work/report.html" >"$work/chromium.log" 2>&1; then
  cat "$work/chromium.log" >&2
  exit 1
fi
mkdir -p "$(dirname "$out")"
cp "$work/report.png" "$out"
echo "wrote $out ($(wc -c <"$out") bytes)"

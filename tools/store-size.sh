#!/usr/bin/env bash
# Store size over a long full-speed run (issue 5: "store size bounded over a 10-minute run").
# Starts the branches of a host.list on 127.0.0.1 at full speed with snapshots every 100 ms,
# prints every branch's store size (apparent bytes of its directory) every SAMPLE seconds, then
# stops the cluster with SIGTERM and audits it.
#
#   tools/store-size.sh [MINUTES=10] [SAMPLE=30] [BRANCHES=4]
#
# Needs `cargo build --release` first. Works in a fresh temporary directory, printed at the start.
set -euo pipefail
minutes=${1:-10}
sample=${2:-30}
n=${3:-4}
root=$(cd "$(dirname "$0")/.." && pwd)
bin=$root/target/release
dir=$(mktemp -d /tmp/store-size.XXXXXX)
echo "store-size: ${minutes} min, ${n} branches, sample every ${sample}s, in $dir"
base=$((20000 + RANDOM % 20000))
for i in $(seq 0 $((n - 1))); do
  if [ "$i" = 0 ]; then echo "127.0.0.1:$((base + i)):S"; else echo "127.0.0.1:$((base + i))"; fi
done >"$dir/host.list"
"$bin/start_bank" 127.0.0.1 --hosts "$dir/host.list" --data-dir "$dir/data" \
  --transfer-interval 0s --snapshot-interval 100ms --status-interval 60s \
  >"$dir/start_bank.log" 2>&1 &
pid=$!
trap 'kill -TERM $pid 2>/dev/null || true' INT TERM
start=$(date +%s)
printf '%8s' "t_s"
for d in $(sed 's/:S$//; s/:/_/' "$dir/host.list"); do printf ' %18s' "$d"; done
echo "   (store bytes)"
end=$((start + minutes * 60))
while [ "$(date +%s)" -lt "$end" ]; do
  sleep "$sample"
  printf '%8d' $(($(date +%s) - start))
  for d in $(sed 's/:S$//; s/:/_/' "$dir/host.list"); do
    printf ' %18s' "$(du -sb "$dir/data/$d" 2>/dev/null | cut -f1)"
  done
  echo
done
kill -TERM $pid
wait $pid || true
"$bin/snapctl" audit --data-dir "$dir/data" --hosts "$dir/host.list"

#!/usr/bin/env bash
# Where the time of running `bank` processes goes, from the kernel's scheduler statistics
# (/proc/PID/task/TID/schedstat: nanoseconds on a CPU, nanoseconds runnable but waiting for one).
# Over a window of SECONDS it prints, per process and thread kind, CPU time and run-queue wait
# per second of wall clock. Run-queue wait larger than CPU time means the machine is
# oversubscribed: every hop of a message through that thread waits for a CPU first.
#
#   tools/schedstat.sh [SECONDS=10] [PID...]     (default: every process named bank)
set -euo pipefail
secs=${1:-10}
shift || true
pids=("$@")
if [ ${#pids[@]} -eq 0 ]; then
  mapfile -t pids < <(pgrep -x bank || true)
fi
if [ ${#pids[@]} -eq 0 ]; then
  echo "schedstat: no bank process found" >&2
  exit 1
fi
sample() {
  for p in "${pids[@]}"; do
    for t in /proc/"$p"/task/*; do
      [ -r "$t/schedstat" ] || continue
      kind=$(tr -d '\n' <"$t/comm" | sed 's/-[0-9]*$//; s/ /_/g')
      [ "$(basename "$t")" = "$p" ] && kind=main
      echo "$p $kind $(awk '{print $1, $2}' "$t/schedstat")"
    done
  done
}
before=$(sample)
sleep "$secs"
after=$(sample)
echo "per second of wall clock, over ${secs}s (ms on CPU / ms runnable but waiting for a CPU):"
join <(echo "$before" | awk '{print $1"/"$2, $3, $4}' | sort | awk '{a[$1]+=$2; b[$1]+=$3} END {for (k in a) print k, a[k], b[k]}' | sort) \
     <(echo "$after" | awk '{print $1"/"$2, $3, $4}' | sort | awk '{a[$1]+=$2; b[$1]+=$3} END {for (k in a) print k, a[k], b[k]}' | sort) |
  awk -v s="$secs" '{ split($1, k, "/"); printf "  pid %-8s %-16s cpu %7.1f ms/s   waiting %7.1f ms/s\n", k[1], k[2], ($4-$2)/s/1e6, ($5-$3)/s/1e6 }'

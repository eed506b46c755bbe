#!/usr/bin/env bash
# Power-loss soak, by hand: the cuts of tests/power_loss.rs for hundreds of rounds (the same code,
# with POWER_LOSS_ROUNDS), then the figures and a verdict. Needs root and /dev/fuse.
#
#   ROUNDS=200 MODE=power tools/power-soak.sh
#
# MODE: power      every round kill -9 all 4 branches, clear the cache of their one LazyFS mount
#                  (a power cut of the host), restart them (the default)
#       power-one  every round one random branch (seeded) loses power on its own mount and restarts
#                  while the others run
#       kill       control: kill -9 all 4 and restart, no cache cleared (nothing may be lost)
# Knobs: ROUNDS (100), UP_MS (4000: ms the cluster runs between cuts), SEED (power-one's victims),
#        LAZYFS_BIN or LAZYFS_CACHE (tools/lazyfs/build.sh), SNAPBANK_BIN_DIR (the bank and snapctl
#        of another build, e.g. the commit before durability, to see the soak fail).
# Last line: rounds, transfers, snapshots completed, refused restarts, verdict. Exit 0 only if OK.
# Ctrl-C ends the run, kills the branches and LazyFS processes the test started and unmounts.
set -u
cd "$(dirname "$0")/.."
ROUNDS=${ROUNDS:-100}; MODE=${MODE:-power}; UP_MS=${UP_MS:-4000}
case $MODE in
  power) test=whole_host_power_cuts_lose_nothing; kill_only=0 ;;
  power-one) test=one_branch_power_cuts_lose_nothing; kill_only=0 ;;
  kill) test=whole_host_power_cuts_lose_nothing; kill_only=1 ;;
  *) echo "power-soak: MODE must be power, power-one or kill" >&2; exit 2 ;;
esac
[ "$(id -u)" = 0 ] || { echo "power-soak: needs root (FUSE)" >&2; exit 2; }

build=$(mktemp /tmp/power-soak.build.XXXXXX)
nice -n 10 cargo test --release --no-run --test power_loss >"$build" 2>&1 ||
  { tail -5 "$build"; echo "power-soak: build failed" >&2; exit 2; }
bin=$(sed -n 's/.*Executable tests\/power_loss.rs (\(.*\))$/\1/p' "$build" | tail -1)
rm -f "$build"
[ -x "$bin" ] || { echo "power-soak: no test binary found" >&2; exit 2; }

log=$(mktemp /tmp/power-soak.XXXXXX.log)
echo "power-soak: MODE=$MODE ROUNDS=$ROUNDS UP_MS=$UP_MS${SEED:+ SEED=$SEED}${SNAPBANK_BIN_DIR:+ SNAPBANK_BIN_DIR=$SNAPBANK_BIN_DIR} (log: $log)"

tp=
# Ctrl-C: the test runs in its own session (it cannot unwind on a signal), so end what it started
# here, by PID: its branches, then its LazyFS mounts (unmount, and LazyFS exits).
stop_test() {
  [ -n "$tp" ] && kill -0 "$tp" 2>/dev/null || return 0
  local kids k mnt work= lfs=()
  kids=$(pgrep -P "$tp")
  kill -9 "$tp" 2>/dev/null; wait "$tp" 2>/dev/null
  for k in $kids; do [ "$(cat /proc/"$k"/comm 2>/dev/null)" = bank ] && kill -9 "$k" 2>/dev/null; done
  for k in $kids; do
    [ "$(cat /proc/"$k"/comm 2>/dev/null)" = lazyfs ] || continue
    mnt=$(tr '\0' '\n' </proc/"$k"/cmdline | sed -n 2p)
    fusermount3 -u "$mnt" 2>/dev/null || fusermount3 -uz "$mnt" 2>/dev/null
    lfs+=("$k"); work=${mnt%/data*}                   # the test's temp dir: WORK/data[/STORE]
  done
  for k in "${lfs[@]}"; do timeout 10 tail --pid="$k" -f /dev/null || kill -9 "$k" 2>/dev/null; done
  # Its temp dir (stores, logs), once nothing is mounted in it.
  if [ -n "$work" ] && [ -f "$work/host.list" ] && ! grep -qF " $work/" /proc/mounts; then rm -rf "$work"; fi
  echo "power-soak: interrupted; ended the test's branches and LazyFS mounts"
}
trap 'stop_test; exit 130' INT TERM

# exec all the way down (subshell, setsid, nice), so that $! is the test process itself.
(
  export CI=1 RUST_BACKTRACE=0 POWER_LOSS_ROUNDS=$ROUNDS POWER_LOSS_UP_MS=$UP_MS POWER_LOSS_KILL_ONLY=$kill_only
  [ -n "${SEED:-}" ] && export POWER_LOSS_SEED=$SEED
  exec setsid nice -n 10 "$bin" --exact "$test" --nocapture --test-threads 1 >"$log" 2>&1
) &
tp=$!
wait "$tp"; rc=$?
tp=

sed -n '/panicked at/,/^test /p' "$log" | grep -v '^test \|panicked at\|^note:' | head -20
figures=$(grep '^power_loss: .*verdict' "$log" | tail -1)
[ -n "$figures" ] || { tail -5 "$log"; echo "power-soak: MODE=$MODE: no figures (rc=$rc), verdict FAILED"; exit 1; }
echo "$figures"
field() { sed -n "s/.*$1 \([0-9]*\).*/\1/p" <<<"$figures"; }
verdict=$(sed -n 's/.*verdict \([A-Z]*\).*/\1/p' <<<"$figures")
[ "$rc" = 0 ] || verdict=FAILED
echo "power-soak: MODE=$MODE rounds $(field rounds), transfers $(field transfers)," \
  "snapshots completed $(field 'snapshots completed'), refused restarts $(field 'refused restarts'), verdict $verdict"
[ "$verdict" = OK ]

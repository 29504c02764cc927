#!/usr/bin/env bash
# Run a command while reward-table collectors are paused, so that neither skews the other's timings.
#
#     experiments/paused.sh runs/tables/A.sqlite [runs/tables/B.sqlite ...] -- make test
#
# Each table named must have `experiments/collect.py` running on it: the collector finishes (or
# abandons and later redoes) its decode in flight, acknowledges with <table>.paused, and resumes
# once this script removes <table>.pause, which it does however the command ends. PAUSE_WAIT_S
# (default 120) bounds the wait for that acknowledgement.
set -euo pipefail
wait_s=${PAUSE_WAIT_S:-120}
tables=()
while [ $# -gt 0 ] && [ "$1" != "--" ]; do tables+=("$1"); shift; done
if [ ${#tables[@]} -eq 0 ] || [ $# -lt 2 ]; then
  echo "usage: $0 TABLE.sqlite [TABLE.sqlite ...] -- COMMAND [ARG ...]" >&2
  exit 2
fi
shift
resume() { for table in "${tables[@]}"; do rm -f "$table.pause"; done; }
trap resume EXIT
# A .paused left by a collector killed while paused would fool the wait below: clear it first
# (a collector that is really paused writes it again within a second).
for table in "${tables[@]}"; do rm -f "$table.paused"; touch "$table.pause"; done
for table in "${tables[@]}"; do
  for _ in $(seq "$wait_s"); do [ -e "$table.paused" ] && break; sleep 1; done
  if [ ! -e "$table.paused" ]; then
    echo "no collector acknowledged $table.pause within $wait_s s: is experiments/collect.py running on $table?" >&2
    exit 1
  fi
done
"$@"

#!/usr/bin/env bash
# perf/profile-commit.sh -- where the time goes in a sustained mirrored commit load: runs
# `mirrorlog bench commit --safety $SAFETY --clients $CLIENTS --duration $DUR` (default FULL, 64
# clients, 30 s), and in the middle of it measures, over $SAMPLE seconds:
#   - CPU seconds used by the principal, the mirror and the load generator (from /proc/PID/stat),
#     against the wall time times the cores: what share of the machine each takes;
#   - a `perf record -g` profile of the principal and of the mirror (top symbols), when perf works;
# then prints the benchmark's row, including the mirror's redo queue after the full-load run.
# Output goes to stdout and to perf/results/<date>-profile-commit.txt.
# Env: SAFETY (full), CLIENTS (64), DUR (30), SAMPLE (10).
set -uo pipefail
cd "$(dirname "$0")/.."
SAFETY=${SAFETY:-full}
CLIENTS=${CLIENTS:-64}
DUR=${DUR:-30}
SAMPLE=${SAMPLE:-10}
OUT=perf/results/$(date +%F)-profile-commit.txt
W=$(mktemp -d -p "$PWD" .bench-profile.XXXXXX)
trap 'rm -rf "$W"' EXIT
cargo build --release --quiet || { echo "cargo build failed" >&2; exit 1; }
BIN=./target/release/mirrorlog
TICK=$(getconf CLK_TCK)

cpu_ticks() { # utime + stime of a pid and its threads
  awk '{print $14 + $15}' "/proc/$1/stat" 2>/dev/null || echo 0
}

{
  echo "# profile of bench commit --safety $SAFETY --clients $CLIENTS --duration $DUR, $(date -u +%FT%TZ), commit $(git rev-parse --short HEAD)"
  echo "# machine: $(uname -srm); $(nproc) cores; load average before: $(cut -d' ' -f1-3 /proc/loadavg)"
} | tee "$OUT"

"$BIN" bench commit --safety "$SAFETY" --clients "$CLIENTS" --duration "$DUR" --floor-ops 200 --json \
  --dir "$W" > "$W/rows.json" 2> "$W/bench.err" &
BENCH=$!
# Wait for the servers, then for the load to run a while.
for _ in $(seq 1 200); do
  PRINCIPAL=$(pgrep -f -- "serve .*--data $W/.*/principal" | head -1)
  MIRROR=$(pgrep -f -- "serve .*--data $W/.*/mirror" | head -1)
  [ -n "$PRINCIPAL" ] && { [ "$SAFETY" = none ] || [ -n "$MIRROR" ]; } && break
  sleep 0.1
done
sleep $(( DUR / 3 ))
declare -A before after
for who in PRINCIPAL MIRROR BENCH; do pid=${!who}; [ -n "$pid" ] && before[$who]=$(cpu_ticks "$pid"); done
if perf record -q -g -o "$W/principal.data" -p "$PRINCIPAL" -- sleep "$SAMPLE" > /dev/null 2>&1 & then
  PERF_P=$!
fi
if [ -n "${MIRROR:-}" ]; then
  perf record -q -g -o "$W/mirror.data" -p "$MIRROR" -- sleep "$SAMPLE" > /dev/null 2>&1 &
  PERF_M=$!
fi
sleep "$SAMPLE"
for who in PRINCIPAL MIRROR BENCH; do pid=${!who}; [ -n "$pid" ] && after[$who]=$(cpu_ticks "$pid"); done
wait ${PERF_P:-} ${PERF_M:-} 2>/dev/null
{
  echo
  echo "CPU over ${SAMPLE} s of load (the machine has $(( $(nproc) * SAMPLE )) core-seconds):"
  for who in PRINCIPAL MIRROR BENCH; do
    [ -n "${before[$who]:-}" ] || continue
    awk -v w="$who" -v t="$(( ${after[$who]} - ${before[$who]} ))" -v hz="$TICK" -v s="$SAMPLE" \
      'BEGIN { printf "  %-9s %6.2f core-seconds (%3.0f%% of one core)\n", tolower(w), t / hz, 100 * t / hz / s }'
  done
} | tee -a "$OUT"
wait "$BENCH"
{
  echo
  echo "benchmark row (bench commit --json):"
  grep '"clients"' "$W/rows.json" || cat "$W/bench.err"
  for side in principal mirror; do
    [ -s "$W/$side.data" ] || continue
    echo
    echo "perf: top symbols of the $side (self time, all threads)"
    perf report -i "$W/$side.data" --no-children --sort symbol --stdio 2>/dev/null \
      | grep -E '^ +[0-9]' | head -15
  done
} | tee -a "$OUT"
echo "written to $OUT"

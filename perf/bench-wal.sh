#!/usr/bin/env bash
# perf/bench-wal.sh [duration_s] -- group commit against the machine's floor, in one run.
# Runs `mirrorlog bench wal` at 1, 16 and 64 committers (the floor is measured by the same
# command, on the same directory, before and after each row) and writes the table and the JSON
# rows to perf/results/<date>-bench-wal.txt with a description of the machine.
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION=${1:-5}
cargo build --release --quiet
BIN=./target/release/mirrorlog
OUT=perf/results/$(date -u +%Y-%m-%d)-bench-wal.txt
{
  echo "# mirrorlog bench wal, $(date -u +%Y-%m-%dT%H:%M:%SZ), commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
  echo "# machine: $(uname -srm); $(nproc) cores; $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs); $(free -g | awk '/Mem:/{print $2" GiB"}')"
  echo "# file system of the bench directory: $(df -T . | awk 'NR==2{print $2" on "$1}')"
  echo
  $BIN bench wal --clients 1,16,64 --duration "$DURATION"
  echo
  echo "# JSON rows"
  $BIN bench wal --clients 1,16,64 --duration "$DURATION" --json
} | tee "$OUT"
echo "written to $OUT"

#!/usr/bin/env bash
# perf/redis-compare.sh -- mirrorlog against Redis with appendonly yes / appendfsync always, both on
# this machine, in one invocation: redis-benchmark -t set,get -d 100 at 1, 16 and 64 clients, and SET
# with a keyspace of 10^9 (every SET a new key).
# ROUNDS rounds (default 3), each on freshly started servers with empty data, alternating between
# the two servers client count by client count, so that both see the same stretch of a noisy
# machine. Prints the per-round figures, then a ratio table of medians (throughput, p50, p99), and
# writes it all to perf/results/<date>-<time>-redis-compare.txt with a description of the machine.
# Env: N (requests per run, default 100000), ROUNDS (3), PORT_ML (7391), PORT_REDIS (7392),
# ML_ARGS (extra `mirrorlog serve` flags).
set -euo pipefail
cd "$(dirname "$0")/.."
N=${N:-100000}
ROUNDS=${ROUNDS:-3}
PORT_ML=${PORT_ML:-7391}
PORT_REDIS=${PORT_REDIS:-7392}
ML_ARGS=${ML_ARGS:-}
if ! command -v redis-server >/dev/null || ! command -v redis-benchmark >/dev/null; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server redis-tools >/dev/null
fi
cargo build --release --quiet
W=$(mktemp -d -p "$PWD" .perf-redis.XXXXXX)
ML_PID=""; REDIS_PID=""
stop_servers() {
  [ -n "$ML_PID" ] && kill "$ML_PID" 2>/dev/null && wait "$ML_PID" 2>/dev/null
  [ -n "$REDIS_PID" ] && kill "$REDIS_PID" 2>/dev/null && wait "$REDIS_PID" 2>/dev/null
  ML_PID=""; REDIS_PID=""
  return 0
}
cleanup() { stop_servers; rm -rf "$W"; }
trap cleanup EXIT

start_servers() { # fresh, empty data for both
  rm -rf "$W/mirrorlog" "$W/redis"; mkdir -p "$W/redis"
  # shellcheck disable=SC2086 # ML_ARGS holds several flags
  ./target/release/mirrorlog serve --listen 127.0.0.1:$PORT_ML --data "$W/mirrorlog" --databases 1 $ML_ARGS >"$W/ml.log" 2>&1 &
  ML_PID=$!
  redis-server --port $PORT_REDIS --bind 127.0.0.1 --dir "$W/redis" --appendonly yes --appendfsync always --save "" --daemonize no >"$W/redis.log" 2>&1 &
  REDIS_PID=$!
  for port in $PORT_ML $PORT_REDIS; do
    for _ in $(seq 100); do redis-cli -p $port PING >/dev/null 2>&1 && break; sleep 0.1; done
  done
  sleep 3 # let mirrorlog's background segment preparation finish before measuring
}

run() { # port clients [tests keyspace label] -> CSV lines "SET,rps,p50,p99" and "GET,..."
  redis-benchmark -p "$1" -t "${3:-set,get}" -d 100 -c "$2" -n "$N" -r "${4:-100000}" --csv 2>/dev/null |
    awk -F, -v label="${5:-}" 'NR>1 { gsub(/"/,""); print (label != "" ? label : $1)","$2","$5","$7 }'
}
OUT=perf/results/$(date -u +%Y-%m-%d-%H%M)-redis-compare.txt
ALL="$W/all.csv" # round,server,clients,test,rps,p50,p99
{
  echo "# mirrorlog vs Redis (appendonly yes, appendfsync always), $(date -u +%Y-%m-%dT%H:%M:%SZ), commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
  echo "# machine: $(uname -srm); $(nproc) cores; $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs); $(df -T . | awk 'NR==2{print $2}') file system"
  echo "# $(redis-server --version | cut -d' ' -f1-3); redis-benchmark -t set,get -d 100 -n $N -r 100000; $ROUNDS rounds on fresh servers${ML_ARGS:+; mirrorlog flags: $ML_ARGS}"
  for r in $(seq "$ROUNDS"); do
    start_servers
    for c in 1 16 64; do
      { run $PORT_ML $c; run $PORT_ML $c set 1000000000 SETnew; } | sed "s/^/$r,mirrorlog,$c,/" >>"$ALL"
      { run $PORT_REDIS $c; run $PORT_REDIS $c set 1000000000 SETnew; } | sed "s/^/$r,redis,$c,/" >>"$ALL"
    done
    stop_servers
    echo "round $r (requests/s, p99 ms):"
    awk -F, -v r="$r" '$1==r { printf "  %-9s %3s %-6s %9.0f %8.3f\n", $2, $3, $4, $5, $7 }' "$ALL"
  done
  echo
  echo "medians over $ROUNDS rounds:"
  printf "%-7s %-6s | %12s %9s %9s | %12s %9s %9s | %9s %9s\n" clients test "mirrorlog/s" "p50 ms" "p99 ms" "redis/s" "p50 ms" "p99 ms" "tput x" "p99 x"
  python3 - "$ALL" <<'PY'
import csv, statistics, sys
rows = list(csv.reader(open(sys.argv[1])))
def med(server, c, test, col):
    return statistics.median(float(r[col]) for r in rows if r[1] == server and r[2] == c and r[3] == test)
for c in ("1", "16", "64"):
    for t in ("SET", "GET", "SETnew"):
        m = [med("mirrorlog", c, t, k) for k in (4, 5, 6)]
        d = [med("redis", c, t, k) for k in (4, 5, 6)]
        print("%-7s %-6s | %12.0f %9.3f %9.3f | %12.0f %9.3f %9.3f | %9.2f %9.2f"
              % (c, t, m[0], m[1], m[2], d[0], d[1], d[2], m[0] / d[0], m[2] / d[2] if d[2] else 0))
PY
  echo "(tput x = median mirrorlog throughput / median Redis throughput; p99 x = median mirrorlog p99 /"
  echo " median Redis p99: below 1 is better)"
  echo "(SET and GET: redis-benchmark's keyspace of 100000 keys, so later SETs overwrite keys with the same"
  echo " value; mirrorlog logs nothing for those and answers once the key's leaf is durable, Redis appends"
  echo " each to its AOF. SETnew: -r 1000000000, every SET inserts a new key.)"
} | tee "$OUT"
echo "written to $OUT"

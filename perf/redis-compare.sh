#!/usr/bin/env bash
# perf/redis-compare.sh -- mirrorlog against Redis with appendonly yes / appendfsync always, both on
# this machine, in one invocation: redis-benchmark -t set,get -d 100 at 1, 16 and 64 clients, and SET
# with a keyspace of 10^9 (every SET a new key).
# Prints a ratio table (throughput and p50/p99 latency) and writes it to
# perf/results/<date>-redis-compare.txt with a description of the machine.
# Env: N (requests per run, default 20000), PORT_ML (7391), PORT_REDIS (7392).
set -euo pipefail
cd "$(dirname "$0")/.."
N=${N:-20000}
PORT_ML=${PORT_ML:-7391}
PORT_REDIS=${PORT_REDIS:-7392}
if ! command -v redis-server >/dev/null || ! command -v redis-benchmark >/dev/null; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server redis-tools >/dev/null
fi
cargo build --release --quiet
W=$(mktemp -d -p "$PWD" .perf-redis.XXXXXX)
ML_PID=""; REDIS_PID=""
cleanup() { [ -n "$ML_PID" ] && kill "$ML_PID" 2>/dev/null; [ -n "$REDIS_PID" ] && kill "$REDIS_PID" 2>/dev/null; wait 2>/dev/null; rm -rf "$W"; }
trap cleanup EXIT

./target/release/mirrorlog serve --listen 127.0.0.1:$PORT_ML --data "$W/mirrorlog" --databases 1 >"$W/ml.log" 2>&1 &
ML_PID=$!
mkdir -p "$W/redis"
redis-server --port $PORT_REDIS --bind 127.0.0.1 --dir "$W/redis" --appendonly yes --appendfsync always --save "" --daemonize no >"$W/redis.log" 2>&1 &
REDIS_PID=$!
for port in $PORT_ML $PORT_REDIS; do
  for _ in $(seq 100); do redis-cli -p $port PING >/dev/null 2>&1 && break; sleep 0.1; done
done
sleep 3 # let mirrorlog's background segment preparation finish before measuring

run() { # port clients [tests keyspace label] -> CSV lines "SET,rps,p50,p99" and "GET,..."
  redis-benchmark -p "$1" -t "${3:-set,get}" -d 100 -c "$2" -n "$N" -r "${4:-100000}" --csv 2>/dev/null |
    awk -F, -v label="${5:-}" 'NR>1 { gsub(/"/,""); print (label != "" ? label : $1)","$2","$5","$7 }'
}
OUT=perf/results/$(date -u +%Y-%m-%d-%H%M)-redis-compare.txt
{
  echo "# mirrorlog vs Redis (appendonly yes, appendfsync always), $(date -u +%Y-%m-%dT%H:%M:%SZ), commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
  echo "# machine: $(uname -srm); $(nproc) cores; $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs); $(df -T . | awk 'NR==2{print $2}') file system"
  echo "# $(redis-server --version | cut -d' ' -f1-3); redis-benchmark -t set,get -d 100 -n $N -r 100000"
  printf "%-7s %-6s | %12s %9s %9s | %12s %9s %9s | %9s %9s\n" clients test "mirrorlog/s" "p50 ms" "p99 ms" "redis/s" "p50 ms" "p99 ms" "tput x" "p99 x"
  for c in 1 16 64; do
    ML=$(run $PORT_ML $c; run $PORT_ML $c set 1000000000 SETnew)
    RD=$(run $PORT_REDIS $c; run $PORT_REDIS $c set 1000000000 SETnew)
    for t in SET GET SETnew; do
      m=$(echo "$ML" | grep "^$t,"); r=$(echo "$RD" | grep "^$t,")
      IFS=, read -r _ mr mp50 mp99 <<<"$m"; IFS=, read -r _ rr rp50 rp99 <<<"$r"
      printf "%-7s %-6s | %12.0f %9.3f %9.3f | %12.0f %9.3f %9.3f | %9.2f %9.2f\n" $c $t "$mr" "$mp50" "$mp99" "$rr" "$rp50" "$rp99" \
        "$(python3 -c "print($mr/$rr)")" "$(python3 -c "print($mp99/$rp99 if $rp99 else 0)")"
    done
  done
  echo "(tput x = mirrorlog throughput / Redis throughput; p99 x = mirrorlog p99 / Redis p99: below 1 is better)"
  echo "(SET and GET: redis-benchmark's keyspace of 100000 keys, so later SETs overwrite keys with the same"
  echo " value; mirrorlog logs nothing for those and answers once the last commit is durable, Redis appends"
  echo " each to its AOF. SETnew: -r 1000000000, every SET inserts a new key.)"
} | tee "$OUT"
echo "written to $OUT"

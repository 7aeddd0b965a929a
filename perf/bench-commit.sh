#!/usr/bin/env bash
# perf/bench-commit.sh -- mirrored commits: mirrorlog SAFETY FULL against PostgreSQL synchronous
# replication (synchronous_commit=on), beside the machine's floors, in one invocation:
#   1. mirrorlog bench commit --safety full,off,none --clients 1,16,64 --duration $DUR --json
#      (SET of 100-byte values; local and pair floors measured by the same command)
#   2. ../shared/anchors/pg-sync-repl.sh (pgbench one-row INSERT, primary + sync standby)
#   3. ../shared/anchors/mirror-floor.sh (C principal/mirror pair, QD1: local and parallel lines)
# then a side-by-side table per client count: mirrorlog FULL tps/p50/p99 vs PostgreSQL on
# tps/p50/p99, the tps ratio and the p99 ratio, plus the floors. A part that fails or is missing
# shows as n/a. Everything (table and raw outputs) goes to perf/results/<date>-bench-commit.txt.
# Env: DUR (seconds per mirrorlog row and per pgbench run, 10), PG_REPS (1), PG_MODES ("local on";
#      the anchor's ratios need "local"), FLOOR_REPS (1), FLOOR_NOPS (3000), FIRST_CORE (unset: principal on core 0,
#      mirror on core 1; "none": unpinned), ANCHORS (../shared/anchors), SKIP_PG=1 / SKIP_FLOOR=1 to leave one out.
# The mirrorlog run gets the anchors' default noise treatment (nice -10) when allowed.
set -uo pipefail
cd "$(dirname "$0")/.."
DUR=${DUR:-10}
ANCHORS=${ANCHORS:-../shared/anchors}
OUT=perf/results/$(date +%F)-bench-commit.txt
W=$(mktemp -d -p "$PWD" .bench-commit-sh.XXXXXX)
trap 'rm -rf "$W"' EXIT
mkdir -p perf/results

NICE=()
nice -n -10 true 2>/dev/null && NICE=(nice -n -10)
if ! cargo build --release --quiet; then echo "cargo build failed" >&2; exit 1; fi
BIN=./target/release/mirrorlog
CORE_ARGS=()
[ -n "${FIRST_CORE:-}" ] && CORE_ARGS=(--first-core "$FIRST_CORE")

echo "== mirrorlog bench commit (${DUR}s per row) ==" >&2
"${NICE[@]}" $BIN bench commit --safety full,off,none --clients 1,16,64 --duration "$DUR" --json "${CORE_ARGS[@]}" \
  >"$W/ml.json" 2>"$W/ml.err"
ML_RC=$?
if [ "${SKIP_PG:-0}" = 1 ] || [ ! -x "$ANCHORS/pg-sync-repl.sh" ]; then
  echo "skipped (SKIP_PG=1 or $ANCHORS/pg-sync-repl.sh missing)" >"$W/pg.txt"; PG_RC=skipped
else
  echo "== PostgreSQL synchronous replication anchor ==" >&2
  REPS=${PG_REPS:-1} DUR=$DUR MODES=${PG_MODES:-"local on"} CLIENTS="1 16 64" \
    "$ANCHORS/pg-sync-repl.sh" >"$W/pg.txt" 2>&1
  PG_RC=$?
fi
if [ "${SKIP_FLOOR:-0}" = 1 ] || [ ! -x "$ANCHORS/mirror-floor.sh" ]; then
  echo "skipped (SKIP_FLOOR=1 or $ANCHORS/mirror-floor.sh missing)" >"$W/floor.txt"; FLOOR_RC=skipped
else
  echo "== mirror floor anchor ==" >&2
  REPS=${FLOOR_REPS:-1} NOPS=${FLOOR_NOPS:-3000} "$ANCHORS/mirror-floor.sh" >"$W/floor.txt" 2>&1
  FLOOR_RC=$?
fi

{
  echo "# mirrorlog SAFETY FULL vs PostgreSQL synchronous replication, $(date -u +%Y-%m-%dT%H:%M:%SZ), commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
  echo "# machine: $(uname -srm); $(nproc) cores; $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs); $(free -g | awk '/Mem:/{print $2" GiB"}'); $(df -T . | awk 'NR==2{print $2" on "$1}')"
  echo "# mirrorlog: bench commit, SET 100 B, ${DUR}s per row, exit $ML_RC; PostgreSQL: pg-sync-repl.sh reps=${PG_REPS:-1} dur=${DUR}s, exit $PG_RC; mirror-floor.sh reps=${FLOOR_REPS:-1}, exit $FLOOR_RC"
  echo "# load average before the report: $(cut -d' ' -f1-3 /proc/loadavg)"
  echo
  python3 - "$W/ml.json" "$W/pg.txt" "$W/floor.txt" <<'PY'
import json, sys
ml_rows, ml_errors = {}, {}
for line in open(sys.argv[1]):
    try:
        r = json.loads(line)
    except ValueError:
        continue
    if "error" in r:
        ml_errors[r["safety"]] = r["error"].splitlines()[0]
    else:
        ml_rows[(r["safety"], r["clients"])] = r
pg = {}
in_summary = False
for line in open(sys.argv[2]):
    if line.startswith("== summary"):
        in_summary = True
        continue
    f = line.split()
    if in_summary and len(f) >= 6 and f[1].isdigit():
        try:
            pg[(f[0], int(f[1]))] = dict(tps=float(f[2]), p50=float(f[4]) * 1000, p99=float(f[5]) * 1000)
        except ValueError:
            pass
floor = {}
for line in open(sys.argv[3]):
    f = line.split()
    if len(f) >= 9 and f[0] in ("free", "cross") and f[2] == "4096" and f[3] == "|":
        floor[(f[0], f[1])] = dict(p50=float(f[5]), p99=float(f[7]))

def num(v, fmt="{:.0f}"):
    return "n/a" if v is None else fmt.format(v)
def ratio(a, b):
    return None if a is None or not b else a / b

print("SAFETY FULL commits: mirrorlog (SET 100 B) vs PostgreSQL synchronous_commit=on (INSERT ~100 B)")
print(f"{'clients':>7} | {'ml tps':>8} {'ml p50 us':>9} {'ml p99 us':>9} | {'pg tps':>8} {'pg p50 us':>9} {'pg p99 us':>9} | {'tps ml/pg':>9} {'p99 ml/pg':>9}")
for c in (1, 16, 64):
    m = ml_rows.get(("full", c), {})
    p = pg.get(("on", c), {})
    mt, m50, m99 = m.get("tps"), m.get("p50_us"), m.get("p99_us")
    pt, p50, p99 = p.get("tps"), p.get("p50"), p.get("p99")
    print(f"{c:>7} | {num(mt):>8} {num(m50):>9} {num(m99):>9} | {num(pt):>8} {num(p50):>9} {num(p99):>9} | "
          f"{num(ratio(mt, pt), '{:.2f}'):>9} {num(ratio(m99, p99), '{:.2f}'):>9}")
print("(tps ml/pg above 1 and p99 ml/pg below 1 favour mirrorlog)")
for s in ("full", "off", "none"):
    if s in ml_errors:
        print(f"mirrorlog safety {s}: n/a ({ml_errors[s]})")
print()
print("all mirrorlog rows (p50/local, p50/pair: multiples of the floors measured around each mode; redo = the mirror's redo_queue_bytes after the row)")
print(f"{'safety':>6} {'clients':>7} {'tps':>8} {'p50 us':>7} {'p99 us':>7} {'p99.9 us':>8} {'p50/local':>9} {'p50/pair':>8} {'redo B':>8}")
for (s, c), r in sorted(ml_rows.items(), key=lambda kv: (("full", "off", "none").index(kv[0][0]), kv[0][1])):
    print(f"{s:>6} {c:>7} {r['tps']:>8.0f} {r['p50_us']:>7.0f} {r['p99_us']:>7.0f} {r['p999_us']:>8.0f} "
          f"{r['p50_us'] / r['floor_local_p50_us']:>9.2f} {r['p50_us'] / r['floor_pair_p50_us']:>8.2f} {('-' if s == 'none' else num(r.get('redo_queue_bytes'))):>8}")
for c in (1, 16, 64):
    p = pg.get(("local", c))
    if p:
        print(f"PostgreSQL synchronous_commit=local, {c} clients: {p['tps']:.0f} tps, p50 {p['p50']:.0f} us, p99 {p['p99']:.0f} us")
print()
print("floors (4 KiB, QD1, p50 / p99 us)")
any_ml = next(iter(ml_rows.values()), {})
print(f"  mirrorlog local floor (durable O_DIRECT write, faster method): {num(any_ml.get('floor_local_p50_us'))} / {num(any_ml.get('floor_local_p99_us'))}")
print(f"  mirrorlog pair floor (ship || local flush, mirror flush, ack):   {num(any_ml.get('floor_pair_p50_us'))} / {num(any_ml.get('floor_pair_p99_us'))}")
for place in ("free", "cross"):
    for mode in ("local", "parallel"):
        f = floor.get((place, mode), {})
        print(f"  mirror-floor.sh {place:<5} {mode:<8}: {num(f.get('p50'))} / {num(f.get('p99'))}")
PY
  [ $? -eq 0 ] || echo "(python3 failed: summary n/a; raw outputs below)"
  echo
  echo "# raw: mirrorlog bench commit --json (stderr follows)"
  cat "$W/ml.json"; sed 's/^/# stderr: /' "$W/ml.err"
  echo
  echo "# raw: pg-sync-repl.sh"
  cat "$W/pg.txt"
  echo
  echo "# raw: mirror-floor.sh"
  cat "$W/floor.txt"
} | tee "$OUT"
echo "written to $OUT" >&2

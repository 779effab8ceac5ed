#!/usr/bin/env bash
# The soak: nothing a server sends may hurt the reporter or lose the truth.
#
#   scripts/soak.sh                       # 3 minutes: every failure mode once (CI)
#   SOAK_MINUTES=60 scripts/soak.sh       # by hand: 30 s per mode, about six rounds
#
# An SDK worker (examples/rust_worker.rs) and a sidecar (heartbeat-sidecar run,
# wrapping a shell loop that prints a job line every 200 ms), both release
# builds with 1 s beats, report to the chaos server (tests/support/chaos.rs),
# which cycles: accept, refuse, accept, 500, accept, 503 PGRST002, accept, 401,
# accept, 429 + Retry-After, accept, hang, accept, slow, accept, reset, accept,
# flapping 201/500, accept, a 200 MiB error body, accept, ... Every few seconds
# it prints RSS and threads of both from /proc. Then the output check: random
# bytes and a 100 MiB line with no newline through the sidecar, checksums of
# what went in and out, and the sidecar's peak RSS against a 1 MiB run.
#
# It ends with a table to paste into docs/performance.md, and exits 1 when a
# goal is broken:
#   - RSS grows more than 1 MiB from the first steady minute to the end
#   - more than one warning line of one kind within any 5 minutes
#   - a recovery slower than two beats (from the switch back to accept, or
#     from the end of a Retry-After, to the first 201 for that worker)
#   - a request inside a Retry-After the worker was given, up to one beat
#     (docs/sdk.md: a 429 or 503 with Retry-After is left alone that long, up
#     to one interval); requests inside the whole Retry-After are shown too
#   - the worker's own thread kept more than SOAK_WAIT_MS by one job's bookkeeping
#   - output not passed through byte for byte, or the sidecar's peak RSS
#     growing more than 1 MiB with the output's size
#
# Settings (environment): SOAK_MINUTES (3), SOAK_CYCLE (seconds per mode;
# default 30, or less so every mode runs at least once), SOAK_INTERVAL (beat,
# 1 s), SOAK_SAMPLE (seconds between samples, 5), SOAK_WAIT_MS (5),
# SOAK_LINE_MIB (the newline-free line, 100), SOAK_HUGE_PAUSE (between 64 KiB
# chunks of the huge body, 0ms: as fast as the client reads), SOAK_BIN_DIR
# (use the heartbeat-sidecar, chaos-server and rust_worker found there instead
# of building: to soak another commit's build), SOAK_DIR (keep the logs there;
# default a temp dir, removed unless a goal is broken).
#
# It takes SOAK_MINUTES (whole phases, ending on accept) plus about 15 s for
# the output check, after the release builds. Needs bash 5, python3, coreutils.
set -euo pipefail
cd "$(dirname "$0")/.."

minutes=${SOAK_MINUTES:-3}
interval=${SOAK_INTERVAL:-1}
sample=${SOAK_SAMPLE:-5}
wait_ms=${SOAK_WAIT_MS:-5}
line_mib=${SOAK_LINE_MIB:-100}
for v in minutes interval sample wait_ms line_mib; do
  [[ ${!v} =~ ^[1-9][0-9]*$ ]] || { echo "soak: SOAK_${v^^}=${!v} is not a whole number above 0 (e.g. SOAK_MINUTES=3)" >&2; exit 2; }
done
huge_pause=${SOAK_HUGE_PAUSE:-0ms}
total=$((minutes * 60))
# accept, then each of 10 failure modes (refuse 500 503 401 429 hang slow
# reset flap huge) followed by accept: 21 phases a round.
phases_per_round=21
cycle=${SOAK_CYCLE:-$((total / phases_per_round < 30 ? total / phases_per_round : 30))}
[[ $cycle =~ ^[0-9]+$ && $cycle -ge 3 ]] || { echo "soak: SOAK_CYCLE=$cycle: each mode needs 3 s or more; use SOAK_MINUTES=2 or more, or SOAK_CYCLE=3" >&2; exit 2; }
# Run a whole number of phases that ends with an accept phase (an odd count).
phases=$((total / cycle))
((phases % 2 == 1)) || phases=$((phases - 1))
retry_after=$((cycle / 2 < 30 ? cycle / 2 : 30))

if [[ -n ${SOAK_BIN_DIR:-} ]]; then
  # Another build (e.g. an older commit's) to compare: its three binaries.
  bin_dir=$(cd "$SOAK_BIN_DIR" && pwd)
  sidecar=$bin_dir/heartbeat-sidecar server=$bin_dir/chaos-server worker=$bin_dir/rust_worker
else
  echo "==> cargo build --release (sidecar, chaos server, example worker)"
  cargo build -q --release -p heartbeat-sidecar -p hp-heartbeat-tests --bin heartbeat-sidecar --bin chaos-server
  cargo build -q --release -p heartbeat-sdk --example rust_worker
  sidecar=$PWD/target/release/heartbeat-sidecar
  server=$PWD/target/release/chaos-server
  worker=$PWD/target/release/examples/rust_worker
fi
for b in "$sidecar" "$server" "$worker"; do
  [[ -x $b ]] || { echo "soak: $b is missing: unset SOAK_BIN_DIR to build it, or copy heartbeat-sidecar, chaos-server and rust_worker there" >&2; exit 2; }
done

if [[ -n ${SOAK_DIR:-} ]]; then dir=$SOAK_DIR; mkdir -p "$dir"; keep=1; else dir=$(mktemp -d); keep=0; fi
pids=()
cleanup() {
  local p
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  if [[ $keep == 0 ]]; then rm -rf "$dir"; fi
}
trap cleanup EXIT
unset SUPABASE_URL SUPABASE_SECRET_KEY SUPABASE_SERVICE_ROLE_KEY SUPABASE_SERVICE_KEY HP_STORE HP_WORKER_NAME RUST_LOG HP_LOG

# Each stderr line with the time it arrived (the sidecar logs without time).
stamp() { while IFS= read -r line; do printf '%s %s\n' "$EPOCHREALTIME" "$line"; done; }
# Starts "$@" with stderr stamped into $1.err; sets $started to its pid.
start_stamped() {
  local name=$1; shift
  mkfifo "$dir/$name.fifo"
  stamp < "$dir/$name.fifo" > "$dir/$name.err" &
  pids+=($!)
  "$@" 2> "$dir/$name.fifo" &
  started=$!
  pids+=("$started")
}
status_field() { awk -v k="$2:" '$1 == k {print $2}' "/proc/$1/status" 2>/dev/null || true; }
alive() { kill -0 "$1" 2>/dev/null; }

echo "==> soak: $((phases * cycle)) s ($phases phases of $cycle s), beats every $interval s, Retry-After $retry_after s; logs in $dir"
"$server" --cycle "${cycle}s" --retry-after "$retry_after" --slow 3s --flap 2s \
  --huge 200MiB --huge-chunk 64KiB --huge-pause "$huge_pause" > "$dir/server.log" 2> "$dir/server.err" &
server_pid=$!
pids+=("$server_pid")
deadline=$((SECONDS + 10))
until grep -q ' listening ' "$dir/server.log" 2>/dev/null; do
  ((SECONDS < deadline)) || { echo "soak: the chaos server did not start: $(cat "$dir/server.err")" >&2; exit 1; }
  sleep 0.05
done
url=$(awk '$3 == "listening" {print $4; exit}' "$dir/server.log")
t0=$(awk '$3 == "listening" {print $1; exit}' "$dir/server.log")

export SUPABASE_URL=$url SUPABASE_SECRET_KEY=sb_secret_FAKE_soak HP_STORE=supabase HP_HEARTBEAT_INTERVAL_SECS=$interval
HP_WORKER_NAME=soak-sdk HP_EXAMPLE_TIMINGS=1 start_stamped sdk "$worker" > "$dir/sdk.out"
sdk_pid=$started
start_stamped sidecar "$sidecar" run --name soak-sidecar --job-pattern ' done' -- \
  sh -c 'i=0; while :; do i=$((i + 1)); echo "job $i done"; sleep 0.2; done' > /dev/null
sidecar_pid=$started

printf '%s\n' "t_s mode sdk_rss_kib sdk_threads sidecar_rss_kib sidecar_threads" > "$dir/samples.txt"
echo "   time  mode                          SDK worker            sidecar               warnings (sdk/sidecar)"
now_ms() { local t=${EPOCHREALTIME/./}; echo $((t / 1000)); }
t0_ms=${t0/./} # the server prints milliseconds
# Stop 1.5 s before the server leaves the last accept, so the final rows meet a working server.
stop_ms=$((t0_ms + phases * cycle * 1000 - 1500))
next_ms=$(now_ms)
while (($(now_ms) < stop_ms)); do
  for p in "$sdk_pid" "$sidecar_pid" "$server_pid"; do
    alive "$p" || { echo "soak: process $p ended early; logs in $dir" >&2; keep=1; exit 1; }
  done
  t=$((($(now_ms) - t0_ms) / 1000))
  mode=$(awk '$3 == "mode" {m = $4} END {print m}' "$dir/server.log")
  sr=$(status_field "$sdk_pid" VmRSS) st=$(status_field "$sdk_pid" Threads)
  cr=$(status_field "$sidecar_pid" VmRSS) ct=$(status_field "$sidecar_pid" Threads)
  echo "$t $mode $sr $st $cr $ct" >> "$dir/samples.txt"
  sw=$(grep -c 'WARN.*heartbeat:' "$dir/sdk.err" || true) cw=$(grep -c 'WARN.*heartbeat:' "$dir/sidecar.err" || true)
  printf '%6ss  %-28s  %6s KiB %2s thr     %6s KiB %2s thr     %s/%s\n' "+$t" "$mode" "$sr" "$st" "$cr" "$ct" "$sw" "$cw"
  next_ms=$((next_ms + sample * 1000))
  while (($(now_ms) < next_ms && $(now_ms) < stop_ms)); do sleep 0.2; done
done

echo "==> stopping both (SIGTERM)"
kill -TERM "$sdk_pid" "$sidecar_pid"
for p in "$sdk_pid" "$sidecar_pid"; do wait "$p" 2>/dev/null || true; done
sleep 0.3 # the server prints what it read every 100 ms
kill "$server_pid" 2>/dev/null || true
wait "$server_pid" 2>/dev/null || true

echo "==> output: random bytes and a $line_mib MiB line with no newline through the sidecar"
# The peak RSS (VmHWM) while `cat` runs and for a second after, in KiB.
peak_rss() {
  local pid=$1 hwm=0 v
  while alive "$pid"; do
    v=$(status_field "$pid" VmHWM)
    [[ -n $v ]] && hwm=$v
    sleep 0.05
  done
  echo "$hwm"
}
# Runs the sidecar over one input (cat to stdout, then to stderr), appending
# "name bytes peak_kib stdout_identical stderr_identical" to output.txt.
pass_through() {
  local name=$1 in=$2 p peak want out_ok err_ok
  env -u SUPABASE_URL -u SUPABASE_SECRET_KEY HP_LOG=off HP_STORE="$dir/output.db" HP_HEARTBEAT_INTERVAL_SECS=$interval \
    "$sidecar" run --name "soak-output-$name" --job-pattern ' done' --error-pattern ERROR -- \
    sh -c 'cat "$1"; cat "$1" >&2; sleep 1' sh "$in" > "$dir/$name.stdout" 2> "$dir/$name.stderr" &
  p=$!
  peak=$(peak_rss "$p")
  wait "$p" || true
  want=$(sha256sum < "$in")
  out_ok=no err_ok=no
  [[ $(sha256sum < "$dir/$name.stdout") == "$want" ]] && out_ok=yes
  [[ $(sha256sum < "$dir/$name.stderr") == "$want" ]] && err_ok=yes
  echo "$name $(stat -c %s "$in") $peak $out_ok $err_ok" >> "$dir/output.txt"
  # Kept for a look when they differ.
  if [[ $out_ok == yes && $err_ok == yes ]]; then rm -f "$dir/$name.stdout" "$dir/$name.stderr" "$in"; fi
}
: > "$dir/output.txt"
head -c 1048576 /dev/urandom > "$dir/small.in"
{ head -c 16777216 /dev/urandom; head -c $((line_mib * 1048576)) /dev/zero | tr '\0' x; printf ' done ERROR'; head -c 1048576 /dev/urandom; } > "$dir/big.in"
pass_through small "$dir/small.in"
pass_through big "$dir/big.in"

echo "==> summary"
set +e
python3 - "$dir" "$minutes" "$interval" "$cycle" "$retry_after" "$wait_ms" "$line_mib" "$huge_pause" <<'PY'
import collections, re, sys
d, huge_pause = sys.argv[1], sys.argv[-1]
minutes, interval, cycle, retry_after, wait_ms, line_mib = map(int, sys.argv[2:-1])
WORKERS = {"soak-sdk": "SDK worker", "soak-sidecar": "sidecar"}
broken = []

def kib(n): return f"{n:,} KiB"

# Memory and threads, from the samples.
rows = [l.split() for l in open(f"{d}/samples.txt").read().splitlines()[1:]]
rows = [r for r in rows if len(r) == 6 and r[2].isdigit() and r[4].isdigit()]
mem = {}
for name, col in (("SDK worker", 2), ("sidecar", 4)):
    series = [(int(r[0]), int(r[col]), int(r[col + 1])) for r in rows]
    steady_t = min(60, series[-1][0] // 3)
    start = next(s for s in series if s[0] >= steady_t)
    grew = series[-1][1] - start[1]
    mem[name] = (start, max(s[1] for s in series), series[-1][1], max(s[2] for s in series), grew)
    if grew > 1024:
        broken.append(f"{name}: RSS grew {grew:,} KiB from +{start[0]} s to the end (goal: at most 1,024)")

# Warning lines per kind, from the stamped stderr of each.
def kind(text):
    m = re.search(r"beat not stored: HTTP (\d+) ([A-Za-z0-9]*)", text)
    if m: return f"HTTP {m[1]} {m[2]}".strip()
    for pat, k in ((r"beat not stored: no answer within", "timeout"), (r"beat not stored: could not reach", "connect"),
                   (r"circuit breaker open", "breaker"), (r"final `\w+` row not stored", "final row")):
        if re.search(pat, text): return k
    m = re.search(r"heartbeat: (\S+ \S+ \S+)", text)
    return m[1] if m else "other"
warn = {}
for name, f in (("SDK worker", "sdk"), ("sidecar", "sidecar")):
    times = collections.defaultdict(list)
    for line in open(f"{d}/{f}.err", errors="replace"):
        if "WARN" in line and "heartbeat:" in line:
            times[kind(line)].append(float(line.split()[0]))
    per = {}
    for k, ts in times.items():
        ts.sort()
        most = max(sum(1 for u in ts if t <= u < t + 300) for t in ts)
        per[k] = (len(ts), most)
        if most > 1:
            broken.append(f"{name}: {most} `{k}` warning lines within 5 minutes (goal: at most 1)")
    warn[name] = per

# Recovery and Retry-After, from what the server saw.
events, final_stored = [], set()
for line in open(f"{d}/server.log"):
    p = line.split()
    if len(p) >= 4 and p[2] == "mode":
        events.append((float(p[0]), "mode", p[3], None))
    elif len(p) >= 4 and p[2] == "request":
        f = dict(x.split("=", 1) for x in p[3:] if "=" in x)
        events.append((float(p[0]), "request", f.get("answer"), f.get("worker")))
        if f.get("row") == "stopped" and f.get("answer") == "201":
            final_stored.add(f.get("worker"))
events.sort(key=lambda e: e[0])
recovery = collections.defaultdict(dict)     # failure mode -> worker -> seconds (None: none seen)
quiet = min(retry_after, interval)           # what the SDK promises to honour
inside_retry, inside_full = collections.Counter(), collections.Counter()
requests = collections.Counter()
last_429 = {}
mode, pending = "accept", {}
for t, what, value, worker in events:
    if what == "mode":
        for w, (failed, _) in pending.items():
            recovery[failed][w] = None
        pending = {}
        if value == "accept" and mode != "accept":
            pending = {w: (mode, t) for w in WORKERS}
        mode = value
        continue
    if worker not in WORKERS:
        continue
    requests[worker] += 1
    if worker in last_429 and last_429[worker] < t < last_429[worker] + quiet - 0.05:
        inside_retry[worker] += 1
    if worker in last_429 and last_429[worker] < t < last_429[worker] + retry_after - 0.05:
        inside_full[worker] += 1
    if value == "429":
        last_429[worker] = t
    if value == "201" and worker in pending:
        failed, since = pending.pop(worker)
        if failed.startswith("status-429"):
            since = max(since, last_429.get(worker, 0) + quiet)
        took_s = max(0.0, t - since)
        # The worst of every round: None (no 201 at all) beats any time.
        if recovery[failed].get(worker, 0.0) is not None:
            recovery[failed][worker] = max(took_s, recovery[failed].get(worker, 0.0))
for w, (failed, _) in pending.items():
    recovery[failed][w] = None
worst, rec_ok = {}, {name: True for name in WORKERS.values()}
for failed, by in recovery.items():
    for w, r in by.items():
        name = WORKERS[w]
        if r is None or r > 2 * interval:
            rec_ok[name] = False
            broken.append(f"{name}: after {failed}, " + ("no 201 before the next switch" if r is None else f"recovered in {r:.1f} s") + f" (goal: within two beats, {2 * interval} s)")
        if r is not None and (name not in worst or r > worst[name][0]):
            worst[name] = (r, failed)
for w, n in inside_retry.items():
    broken.append(f"{WORKERS[w]}: {n} request(s) inside a Retry-After of {retry_after} s capped at one beat, {quiet} s (goal: none)")
taken = [int(x.split("=")[1]) for l in open(f"{d}/server.log") if " huge-body " in l for x in l.split() if x.startswith("taken=")]

# The worker's own thread: how long each job's bookkeeping took.
took = [int(l.split()[3]) for l in open(f"{d}/sdk.out") if l.startswith("job ")]
slow_jobs = sum(1 for ns in took if ns > wait_ms * 1_000_000)
if slow_jobs:
    broken.append(f"SDK worker: {slow_jobs} job(s) of {len(took):,} kept the worker's thread over {wait_ms} ms (max {max(took) / 1e6:.1f} ms)")

# Output pass-through.
out = {p[0]: p[1:] for p in (l.split() for l in open(f"{d}/output.txt")) if len(p) == 5}
big_bytes, big_peak, big_out, big_err = int(out["big"][0]), int(out["big"][1]), out["big"][2], out["big"][3]
small_peak = int(out["small"][1])
if big_out != "yes" or big_err != "yes" or out["small"][2] != "yes" or out["small"][3] != "yes":
    broken.append(f"sidecar: output changed on the way through (stdout identical: {big_out}, stderr identical: {big_err})")
if big_peak - small_peak > 1024:
    broken.append(f"sidecar: peak RSS {kib(big_peak)} passing {big_bytes / 2**20:.0f} MiB against {kib(small_peak)} passing 1 MiB (goal: at most 1 MiB more)")

def ok(cond): return "met" if cond else "**broken**"
print(f"\n### Soak: {minutes} min, {interval} s beats, {cycle} s per mode\n")
print(f"    SOAK_MINUTES={minutes} scripts/soak.sh\n")
print("| | SDK worker (`rust_worker`) | sidecar (`run -- sh` loop) | goal |")
print("|---|---|---|---|")
m1, m2 = mem["SDK worker"], mem["sidecar"]
print(f"| RSS at +{m1[0][0]} s / max / end | {kib(m1[0][1])} / {kib(m1[1])} / {kib(m1[2])} | {kib(m2[0][1])} / {kib(m2[1])} / {kib(m2[2])} | end at most 1 MiB over the start |")
print(f"| RSS growth | {m1[4]:+,} KiB {ok(m1[4] <= 1024)} | {m2[4]:+,} KiB {ok(m2[4] <= 1024)} | |")
print(f"| threads, max | {m1[3]} | {m2[3]} | |")
def most(name):
    per = warn[name]
    if not per: return "none"
    top = max(per.values(), key=lambda v: v[1])[1]
    return f"{top} {ok(top <= 1)}"
print(f"| warning lines of one kind in any 5 min, max | {most('SDK worker')} | {most('sidecar')} | at most 1 |")
def rec(name):
    if name not in worst: return "none observed **broken**"
    r, f = worst[name]
    return f"{r:.2f} s after {f} {ok(rec_ok[name])}"
print(f"| worst recovery after a switch to accept | {rec('SDK worker')} | {rec('sidecar')} | within two beats ({2 * interval} s) |")
print(f"| requests inside a 429's Retry-After ({retry_after} s) capped at one beat ({quiet} s) | {inside_retry['soak-sdk']} {ok(not inside_retry['soak-sdk'])} | {inside_retry['soak-sidecar']} {ok(not inside_retry['soak-sidecar'])} | none |")
print(f"| requests inside the whole Retry-After ({retry_after} s) | {inside_full['soak-sdk']} | {inside_full['soak-sidecar']} | |")
print(f"| final `stopped` row stored at SIGTERM | {'yes' if 'soak-sdk' in final_stored else 'no'} | {'yes' if 'soak-sidecar' in final_stored else 'no'} | |")
print(f"| requests in all | {requests['soak-sdk']:,} | {requests['soak-sidecar']:,} | |")
if took:
    print(f"| worker's thread per job (increment + log), max | {max(took) / 1000:,.1f} µs {ok(not slow_jobs)} | — | under {wait_ms} ms |")
print(f"| of a 200 MiB 500 body (pause {huge_pause} per 64 KiB), most taken by one request | {max(taken, default=0) / 1024:,.0f} KiB (either) | | |")
print(f"| output: {big_bytes / 2**20:.0f} MiB (random, a {line_mib} MiB line with no newline) on stdout and on stderr | — | identical: {big_out}/{big_err} {ok(big_out == big_err == 'yes')} | byte for byte |")
print(f"| sidecar peak RSS passing it, against 1 MiB | — | {kib(big_peak)} against {kib(small_peak)} {ok(big_peak - small_peak <= 1024)} | at most 1 MiB more |")

print("\n| after | SDK worker recovered in (worst) | sidecar recovered in (worst) |")
print("|---|---|---|")
def fmt(r): return "no 201" if r is None else f"{r:.2f} s"
for failed, by in recovery.items():
    print(f"| {failed} | {fmt(by.get('soak-sdk'))} | {fmt(by.get('soak-sidecar'))} |")
print("\n| warning kind | SDK worker: lines, most in 5 min | sidecar: lines, most in 5 min |")
print("|---|---|---|")
for k in sorted(set(warn["SDK worker"]) | set(warn["sidecar"])):
    a, b = warn["SDK worker"].get(k, (0, 0)), warn["sidecar"].get(k, (0, 0))
    print(f"| {k} | {a[0]}, {a[1]} | {b[0]}, {b[1]} |")
if broken:
    print("\nGOALS BROKEN:")
    for b in broken: print(f"  - {b}")
    sys.exit(1)
print("\nevery goal met")
PY
rc=$?
set -e
if [[ $rc != 0 && $keep == 0 ]]; then keep=1; echo "logs kept in $dir"; fi
exit $rc

#!/usr/bin/env bash
# End-to-end check of camsim and sensorsim against a throwaway mosquitto on a
# random 127.0.0.1 port, plus the failure exit codes. Used while developing
# the examples; the Rust suite repeats the frame checks against moonwire.
#
#   host-sim/tools/run_local_test.sh        (after `make host-sim`)
#
# Needs mosquitto, mosquitto_sub, mosquitto_passwd and python3 on PATH.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
sim=$(dirname "$here")
# shared/ sits beside the repository checkout (here and in CI).
frames=${FRAMES:-$(cd "$sim/../.." && pwd)/tests/fixtures}
[ -f "$frames/qvga_astronaut.jpg" ] || { echo "no test frames in $frames (set FRAMES=dir)" >&2; exit 1; }
check="python3 $here/fchunk_check.py"
work=$(mktemp -d)
mosq_pid=""
sub_pid=""

cleanup() {
    [ -n "$sub_pid" ] && kill "$sub_pid" 2>/dev/null || true
    [ -n "$mosq_pid" ] && kill "$mosq_pid" 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

for tool in mosquitto mosquitto_sub mosquitto_passwd python3; do
    command -v "$tool" >/dev/null || { echo "missing $tool" >&2; exit 1; }
done
[ -x "$sim/camsim" ] && [ -x "$sim/sensorsim" ] || { echo "build host-sim first" >&2; exit 1; }

pass=0
fail=0
ok()  { echo "ok   - $*"; pass=$((pass + 1)); }
bad() { echo "FAIL - $*"; fail=$((fail + 1)); }
# run CMD...: runs CMD with stdout/stderr to $work/out.txt / err.txt, sets rc.
rc=0
run() {
    set +e
    "$@" >"$work/out.txt" 2>"$work/err.txt"
    rc=$?
    set -e
    return $rc
}

port=$((20000 + RANDOM % 20000))
# mosquitto started as root drops to its own user: it must be able to read.
chmod 755 "$work"
mosquitto_passwd -b -c "$work/passwd" alice secret >/dev/null
chmod 644 "$work/passwd"
cat > "$work/mosquitto.conf" <<CONF
listener $port 127.0.0.1
allow_anonymous true
password_file $work/passwd
CONF
# With a password file, anonymous clients still get in (allow_anonymous) but
# a wrong password for a known user is refused: that gives the CONNACK test.
mosquitto -c "$work/mosquitto.conf" >"$work/mosquitto.log" 2>&1 &
mosq_pid=$!
up=0
for _ in $(seq 50); do
    if (exec 3<>/dev/tcp/127.0.0.1/$port) 2>/dev/null; then up=1; break; fi
    sleep 0.1
done
if [ $up -ne 1 ]; then
    echo "mosquitto did not start:" >&2
    cat "$work/mosquitto.log" >&2
    exit 1
fi

# sub TOPIC: start recording TOPIC into $work/dump.txt
sub() {
    : >"$work/dump.txt"
    mosquitto_sub -p "$port" -F '%t %r %x' -t "$1" >"$work/dump.txt" 2>"$work/sub.err" &
    sub_pid=$!
    sleep 0.3
}
unsub() {
    sleep 0.3
    kill "$sub_pid" 2>/dev/null || true
    wait "$sub_pid" 2>/dev/null || true
    sub_pid=""
}

F1=$frames/qvga_astronaut.jpg
F2=$frames/vga_coffee.jpg
F3=$frames/uxga_coffee.jpg

# 1. fchunk, QoS 1, three sizes, user/password.
sub 'cameras/cam1/#'
if run "$sim/camsim" --host 127.0.0.1 --port "$port" --id cam1 --user alice --pass secret \
        --qos 1 "$F1" "$F2" "$F3"; then
    unsub
    if $check "$work/dump.txt" --expect "$F1" "$F2" "$F3" --availability online,offline >"$work/check.txt"; then
        ok "camsim fchunk QoS 1 (3 frames) reassembles byte-exact"
    else bad "camsim fchunk QoS 1"; cat "$work/check.txt"; fi
else unsub; bad "camsim fchunk QoS 1 exited $rc: $(cat "$work/err.txt")"; fi

# 2. fchunk, QoS 0, odd chunk size, --count cycling, frame_id wrap, --fps pacing.
sub 'cameras/cam2/#'
start=$(date +%s%N)
if run "$sim/camsim" --port "$port" --id cam2 --qos 0 --chunk 1000 --count 5 --frame-id 65534 \
        --fps 10 "$F1" "$F2"; then
    elapsed_ms=$(( ($(date +%s%N) - start) / 1000000 ))
    unsub
    if $check "$work/dump.txt" --expect "$F1" "$F2" --count 5 --first-frame-id 65534 \
            --availability online,offline >"$work/check.txt"; then
        ok "camsim QoS 0, chunk 1000, 5 frames, frame_id wraps 65534->2"
    else bad "camsim QoS 0 cycling"; cat "$work/check.txt"; fi
    # 5 frames at 10 fps: 4 periods of 100 ms at least.
    if [ "$elapsed_ms" -ge 400 ]; then ok "--fps 10 paces 5 frames over ${elapsed_ms} ms"
    else bad "--fps 10 took only ${elapsed_ms} ms"; fi
else unsub; bad "camsim QoS 0 exited $rc: $(cat "$work/err.txt")"; fi

# 3. Whole frame (--chunk 0), larger than the 4 KiB client buffer, QoS 0 and 1.
for q in 0 1; do
    sub "cameras/cam3q$q/#"
    if run "$sim/camsim" --port "$port" --id cam3q$q --qos $q --chunk 0 "$F3" "$F1"; then
        unsub
        if $check "$work/dump.txt" --expect "$F3" "$F1" --availability online,offline >"$work/check.txt"; then
            ok "camsim --chunk 0 QoS $q: whole 255 KB frame in one publish"
        else bad "camsim --chunk 0 QoS $q"; cat "$work/check.txt"; fi
    else unsub; bad "camsim --chunk 0 QoS $q exited $rc: $(cat "$work/err.txt")"; fi
done

# 4. Dying mid-frame: exit 3, partial frame, broker publishes the will.
sub 'cameras/cam4/#'
set +e
"$sim/camsim" --port "$port" --id cam4 --qos 1 --abort-after-chunks 7 "$F1" "$F3" \
    >/dev/null 2>"$work/err.txt"
rc=$?
set -e
sleep 0.5
unsub
if [ $rc -eq 3 ] && $check "$work/dump.txt" --expect "$F1" --incomplete 1 \
        --availability online,offline >"$work/check.txt"; then
    ok "--abort-after-chunks 7: exit 3, 1 whole + 1 partial frame, will 'offline' published"
else bad "--abort-after-chunks (rc=$rc)"; cat "$work/check.txt" "$work/err.txt"; fi

# 5. Retained availability survives for late subscribers.
got=$(mosquitto_sub -p "$port" -t 'cameras/cam4/availability' -C 1 -W 2 -F '%r %p' || true)
if [ "$got" = "1 offline" ]; then ok "availability is retained ('$got')"
else bad "retained availability: '$got'"; fi

# 6. sensorsim: readings and motion events with exact JSON.
sub 'home/hall/#'
if run "$sim/sensorsim" --port "$port" --id hall --qos 1 --count 2 --interval 0 --temperature 21.5 \
        --humidity 40.2 --motion 1 --ts 1700000000; then
    unsub
    python3 - "$work/dump.txt" <<'PY'
import sys, json
lines = [l.rstrip("\n").split(" ") for l in open(sys.argv[1]) if l.strip()]
msgs = [(t, bytes.fromhex(x).decode()) for t, r, x in lines]
want = [("home/hall/availability", "online"),
        ("home/hall/motion", '{"motion":true,"ts":1700000000}'),
        ("home/hall/sensors", '{"temperature":21.5,"humidity":40.2,"motion":true,"ts":1700000000}'),
        ("home/hall/motion", '{"motion":true,"ts":1700000000}'),
        ("home/hall/sensors", '{"temperature":21.5,"humidity":40.2,"motion":true,"ts":1700000000}'),
        ("home/hall/availability", "offline")]
assert msgs == want, msgs
for t, p in msgs:
    if t.endswith("/sensors"):
        d = json.loads(p)
        assert set(d) == {"temperature", "humidity", "motion", "ts"}
PY
    ok "sensorsim publishes exact sensor and motion JSON"
else unsub; bad "sensorsim exited $rc: $(cat "$work/err.txt")"; fi

# 7. Keepalive: idle for 2.5 s with a 1 s keepalive; the broker would drop us
#    after 1.5 s without PINGREQs.
if run "$sim/sensorsim" --port "$port" --id pinger --keepalive 1 --count 2 --interval 2.5; then
    ok "sensorsim keeps a 1 s keepalive session alive across 2.5 s idle (PINGREQ)"
else bad "keepalive idle exited $rc: $(cat "$work/err.txt")"; fi

# 8. Failure exit codes.
set +e
"$sim/camsim" --port "$port" --id cam5 --user alice --pass wrong "$F1" >/dev/null 2>"$work/err.txt"
rc=$?
set -e
if [ $rc -eq 5 ] && grep -q "CONNACK 5" "$work/err.txt"; then ok "bad password: exit 5 ($(cat "$work/err.txt"))"
else bad "bad password: rc=$rc $(cat "$work/err.txt")"; fi

kill "$mosq_pid"; wait "$mosq_pid" 2>/dev/null || true; mosq_pid=""
set +e
"$sim/camsim" --port "$port" --id cam5 "$F1" >/dev/null 2>"$work/err.txt"
rc=$?
set -e
if [ $rc -eq 4 ]; then ok "connection refused: exit 4 ($(cat "$work/err.txt"))"
else bad "connection refused: rc=$rc $(cat "$work/err.txt")"; fi

# silent BROKER_ARGS -- CAMSIM_ARGS: camsim against silent_broker.py; sets rc
# and leaves the broker's publish log in $work/silent.log.
silent() {
    local bargs=()
    while [ "$1" != "--" ]; do bargs+=("$1"); shift; done
    shift
    python3 "$here/silent_broker.py" --lifetime 10 "${bargs[@]}" >"$work/silent.log" &
    local bpid=$!
    for _ in $(seq 50); do [ -s "$work/silent.log" ] && break; sleep 0.1; done
    run "$sim/camsim" --port "$(head -1 "$work/silent.log")" "$@" || true
    wait $bpid 2>/dev/null || true
}

# Availability is acked, chunk 0 never is: 3 attempts (DUP on the resends), exit 6.
silent --ack-first 1 -- --id cam6 --qos 1 --timeout-ms 300 "$F1"
attempts=$(grep -c 'topic=cameras/cam6/frame' "$work/silent.log" || true)
dups=$(grep 'topic=cameras/cam6/frame' "$work/silent.log" | grep -c 'dup=1' || true)
if [ $rc -eq 6 ] && grep -q "no PUBACK" "$work/err.txt" && [ "$attempts" = 3 ] && [ "$dups" = 2 ]; then
    ok "PUBACK timeout: 3 attempts (2 with DUP), exit 6 ($(cat "$work/err.txt"))"
else bad "PUBACK timeout: rc=$rc attempts=$attempts dups=$dups $(cat "$work/err.txt")"; fi

# Every first copy is dropped, every DUP resend acked: the frame still gets through.
silent --ack-first 1 --ack-dup -- --id cam6 --qos 1 --timeout-ms 200 "$F1"
if [ $rc -eq 0 ] && [ "$(grep -c 'topic=cameras/cam6/frame.*' "$work/silent.log")" = 10 ]; then
    ok "QoS 1 resend recovers lost PUBACKs: 5 chunks sent twice, exit 0"
else bad "QoS 1 resend: rc=$rc $(cat "$work/err.txt")"; cat "$work/silent.log"; fi

set +e
"$sim/camsim" --port 1 --id cam7 /nonexistent.jpg >/dev/null 2>&1; rc1=$?
"$sim/camsim" --port 1 "$F1" >/dev/null 2>&1; rc2=$?
set -e
if [ $rc1 -eq 2 ] && [ $rc2 -eq 2 ]; then ok "missing file / missing --id: exit 2"
else bad "usage errors: $rc1 $rc2"; fi

echo "host-sim: $pass passed, $fail failed"
[ "$fail" -eq 0 ]

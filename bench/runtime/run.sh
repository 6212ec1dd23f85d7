#!/usr/bin/env bash
# Throughput / latency / memory benchmark for tsk8s-runtime (not a test; needs root, netns,
# wireguard-go, wg, iperf3, python3). Everything runs in network namespaces this script creates.
#
#   (a) wireguard-go client -> wireguard-go server                  (stock reference)
#   (b) wireguard-go client -> tsk8s-runtime proxy -> server
#   (c) onetun -> wireguard-go -> server                            (closest Rust peer)
#   (d) tsk8s-runtime egress -> wireguard-go -> server              (same job as c)
#   (e) tsk8s-runtime egress -> tsk8s-runtime proxy -> server
#   (g) wireguard-go client -> tsk8s-runtime gateway (the proxy of (b) and 2 more nodes
#       behind one port) -> server
#
#   (r) long fat pipes, only with ONLY containing r (e.g. ONLY=r): a delay relay
#       (runtime/examples/delay_relay.rs, in a namespace of its own) holds every WireGuard
#       datagram RTT/2 in each direction. Its own ceiling first (UDP blast through it at 0 ms),
#       then for RTT 0, 20, 50 ms (RTTS), 1 and 4 streams (iperf3 -P), both directions (-R):
#         W  wireguard-go -> relay -> wireguard-go                     (stock reference)
#         P  wireguard-go -> relay -> runtime proxy -> iperf3 on its loopback
#         E  iperf3 -> runtime egress -> relay -> wireguard-go
#       P and E run once per binary: this tree's, and BEFORE=/path/to/tsk8s-runtime if given
#       (same run, same machine). REPEAT=n repeats the matrix; medians are printed, with the
#       load average (uptime) before each repetition and UDP receive-buffer drops
#       (RcvbufErrors) of the wireguard-go namespaces.
#
# Env: SECONDS_PER_RUN (default 5), RUNTIME_MTU (default 1280), SKIP_ONETUN=1, ONETUN=/path,
#      ONLY=abde (subset of paths; default all but r), DEBUG=1 (dump runtime metrics),
#      RTTS="0 20 50", STREAMS="1 4", DIRS="up down", RPATHS=regex (of W, P-new, E-old, …),
#      REPEAT=1, BEFORE=/path/to/old/tsk8s-runtime, KEEP_LOGS=dir (copy each runtime's stderr
#      there at the end; e.g. with TSK8S_LOG=tsk8s_runtime=debug for per-connection cwnd/SRTT;
#      (r) also keeps each iperf3 run's JSON there, with its per-second intervals).
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
T=${SECONDS_PER_RUN:-5}
MTU=${RUNTIME_MTU:-1280}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$repo/target}
id=$$
work=$(mktemp -d /tmp/tsk8s-bench.XXXXXX)
chmod 755 "$work"
pids=()

# Namespaces are found by name (ns() runs in a command substitution, a subshell, so it cannot
# record them in an array), and every process still inside one (the iperf3 -D daemons too)
# is ended before the namespace is deleted: all of them were started by this script.
cleanup() {
  if [ -n "${KEEP_LOGS:-}" ]; then
    mkdir -p "$KEEP_LOGS"
    for l in "$work"/rt-*/log; do [ -f "$l" ] && cp "$l" "$KEEP_LOGS/$(basename "$(dirname "$l")").log"; done
  fi
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  sleep 0.2
  for n in $(ip netns list | awk '{print $1}' | grep -E "^tb${id}[a-z]"); do
    for p in $(ip netns pids "$n" 2>/dev/null); do kill "$p" 2>/dev/null || true; done
    ip netns del "$n" 2>/dev/null || true
  done
  rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 2' INT TERM

say() { printf '%s\n' "$*" >&2; }

[ "$(id -u)" = 0 ] || { say "needs root (network namespaces)"; exit 2; }
for t in wireguard-go wg iperf3 ip setpriv python3; do
  command -v "$t" >/dev/null || { say "missing tool: $t"; exit 2; }
done

say "building tsk8s-runtime (release)…"
(cd "$repo" && cargo build --release -q -p tsk8s-runtime --bin tsk8s-runtime --example delay_relay)
RELAY=$CARGO_TARGET_DIR/release/examples/delay_relay
BIN=$CARGO_TARGET_DIR/release/tsk8s-runtime
cp "$BIN" "$work/tsk8s-runtime"; chmod 755 "$work/tsk8s-runtime"; BIN=$work/tsk8s-runtime

ns() { local n="tb${id}$1"; ip netns add "$n"; ip -n "$n" link set lo up; echo "$n"; }
link() { # ns_a addr_a ns_b addr_b tag
  local va="ba${id}$5" vb="bb${id}$5"
  ip link add "${va:0:15}" netns "$1" type veth peer name "${vb:0:15}" netns "$3"
  ip -n "$1" addr add "$2" dev "${va:0:15}"; ip -n "$3" addr add "$4" dev "${vb:0:15}"
  ip -n "$1" link set "${va:0:15}" up; ip -n "$3" link set "${vb:0:15}" up
}
key() { wg genkey; }
pub() { echo "$1" | wg pubkey; }

wg_dev() { # ns ifname privkey addr listenport peerpub peerallowed [endpoint]
  local ns=$1 ifn=$2
  ip netns exec "$ns" env WG_PROCESS_FOREGROUND=1 wireguard-go "$ifn" >/dev/null 2>&1 &
  pids+=($!)
  for _ in $(seq 50); do ip -n "$ns" link show "$ifn" >/dev/null 2>&1 && break; sleep 0.1; done
  echo "$3" > "$work/$ifn.key"
  local ep=(); [ -n "${8:-}" ] && ep=(endpoint "$8")
  ip netns exec "$ns" wg set "$ifn" private-key "$work/$ifn.key" listen-port "$5" peer "$6" allowed-ips "$7" "${ep[@]}"
  ip -n "$ns" addr add "$4/32" dev "$ifn"
  ip -n "$ns" link set "$ifn" mtu 1420 up
  for r in ${7//,/ }; do ip -n "$ns" route replace "$r" dev "$ifn"; done
}

runtime() { # ns name privkey ipv4 listen_port mode_json peer_lines rule_lines admin_port
  local d="$work/rt-$2"; mkdir -p "$d"; chmod 755 "$d"
  local pk; pk=$(pub "$3")
  cat > "$d/node.json" <<J
{"name":"$2","public_key":"$pk","ipv4":"$4","ipv6":"fd7a:115c:a1e0::${4##*.}","listen_port":$5,"mtu":$MTU,
 "admin_listen":"127.0.0.1:$9","mode":$6}
J
  # The mesh as one JSON Lines shard (crates/policy/src/runtime_config.rs).
  { echo '{"mesh":"bench.example","shard":0,"shards":1}'; echo "$7"; if [ -n "$8" ]; then echo "$8"; fi; } > "$d/mesh-0.jsonl"
  echo "$3" > "$d/private-key"; chown 65532:65532 "$d/private-key"; chmod 400 "$d/private-key"
  chmod 644 "$d/node.json" "$d/mesh-0.jsonl"
  ip netns exec "$1" setpriv --reuid 65532 --regid 65532 --clear-groups -- \
    "${RT_BIN:-$BIN}" --node "$d/node.json" --mesh "$d/mesh-0.jsonl" --private-key-file "$d/private-key" \
    2>"$d/log" &
  pids+=($!)
  echo $! > "$d/pid"
  for _ in $(seq 50); do
    ip netns exec "$1" curl -fs "http://127.0.0.1:$9/healthz" >/dev/null 2>&1 && return 0; sleep 0.1
  done
  say "runtime $2 not healthy:"; cat "$d/log" >&2; return 1
}
rss_kb() { awk '/VmRSS/ {print $2}' "/proc/$1/status"; }

iperf() { # ns host port -> Gbit/s
  local out
  out=$(ip netns exec "$1" iperf3 -c "$2" -p "$3" -t "$T" -J 2>/dev/null) || { echo "0"; return; }
  python3 -c 'import json,sys; d=json.load(sys.stdin); print("%.3f" % (d["end"]["sum_received"]["bits_per_second"]/1e9))' <<<"$out"
}
iperf_server() { ip netns exec "$1" iperf3 -s -B "$2" -p "$3" -D --logfile "$work/iperf-$1-$3.log"; }

cat > "$work/echo.py" <<'PY'
import socket, sys, threading
host, port = sys.argv[1], int(sys.argv[2])
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); s.bind((host, port)); s.listen(2048)
def serve(c):
    c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    while True:
        b = c.recv(4096)
        if not b: break
        c.sendall(b)
while True:
    c, _ = s.accept(); threading.Thread(target=serve, args=(c,), daemon=True).start()
PY
cat > "$work/rtt.py" <<'PY'
import socket, sys, time, statistics
host, port, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
for attempt in range(50):
    try:
        c = socket.create_connection((host, port), timeout=5); break
    except OSError:
        time.sleep(0.2)
c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
for _ in range(20): c.sendall(b"x"); c.recv(1)
ts = []
for _ in range(n):
    t = time.perf_counter(); c.sendall(b"x"); c.recv(1); ts.append(time.perf_counter() - t)
print("%.1f" % (statistics.median(ts) * 1e6))
PY
cat > "$work/hold.py" <<'PY'
import socket, sys, time
host, port, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
cs = []
for i in range(n):
    cs.append(socket.create_connection((host, port), timeout=10))
    cs[-1].sendall(b"x"); cs[-1].recv(1)
print(len(cs), flush=True)
time.sleep(float(sys.argv[4]))
PY
echo_server() { ip netns exec "$1" python3 "$work/echo.py" "$2" "$3" & pids+=($!); sleep 0.3; }
rtt() { ip netns exec "$1" python3 "$work/rtt.py" "$2" "$3" 2000; }

KC=$(key); KS=$(key); KN=$(key); KE=$(key)
PC=$(pub "$KC"); PS=$(pub "$KS"); PN=$(pub "$KN"); PE=$(pub "$KE")

want() { if [ -z "${ONLY:-}" ]; then [ "$1" != r ]; else [[ "$ONLY" == *"$1"* ]]; fi; }
GA=n/a GB=n/a GC=n/a GD=n/a GE=n/a GG=n/a LA=0 LB=0 LD=0 LE=0 LG=0 IDLE_RSS=n/a RSS_AFTER_IPERF=n/a RSS_1000=n/a CONNS=0
# ---------- (a) wireguard-go <-> wireguard-go ----------
if want a; then
A1=$(ns a1); A2=$(ns a2)
link "$A1" 10.98.1.1/24 "$A2" 10.98.1.2/24 a
wg_dev "$A1" "wa${id}" "$KC" 100.64.0.2 51821 "$PS" 100.64.0.1/32 10.98.1.2:51822
wg_dev "$A2" "wb${id}" "$KS" 100.64.0.1 51822 "$PC" 100.64.0.2/32
iperf_server "$A2" 100.64.0.1 5201
echo_server "$A2" 100.64.0.1 7000
sleep 0.5
ip netns exec "$A1" ping -c1 -W2 100.64.0.1 >/dev/null || true
GA=$(iperf "$A1" 100.64.0.1 5201); LA=$(rtt "$A1" 100.64.0.1 7000)
say "(a) wireguard-go <-> wireguard-go: $GA Gbit/s, p50 rtt ${LA} us"

fi
# ---------- (b) wireguard-go -> runtime proxy -> server ----------
if want b; then
B1=$(ns b1); B2=$(ns b2); B3=$(ns b3)
link "$B1" 10.98.2.2/24 "$B2" 10.98.2.1/24 b
link "$B2" 10.98.3.1/24 "$B3" 10.98.3.2/24 c
iperf_server "$B3" 10.98.3.2 5201
echo_server "$B3" 10.98.3.2 7000
runtime "$B2" proxy "$KN" 100.64.0.1 51820 \
  '{"kind":"proxy","target_host":"10.98.3.2","ports":[{"protocol":"tcp","listen":5201,"target":5201},{"protocol":"tcp","listen":7000,"target":7000}]}' \
  "{\"peer\":\"dev\",\"key\":\"$PC\",\"ips\":[\"100.64.0.2\"]}" \
  '{"rule":{"SrcIPs":["100.64.0.2"],"DstPorts":[{"IP":"100.64.0.1","Ports":{"First":0,"Last":65535}}]}}' 9090
PIDB=$(cat "$work/rt-proxy/pid")
sleep 1
IDLE_RSS=$(rss_kb "$PIDB")
wg_dev "$B1" "wc${id}" "$KC" 100.64.0.2 51821 "$PN" 100.64.0.1/32 10.98.2.1:51820
GB=$(iperf "$B1" 100.64.0.1 5201); LB=$(rtt "$B1" 100.64.0.1 7000)
RSS_AFTER_IPERF=$(rss_kb "$PIDB")
say "(b) wireguard-go -> runtime proxy: $GB Gbit/s, p50 rtt ${LB} us"
# 1,000 open connections through the proxy.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
ip netns exec "$B1" python3 "$work/hold.py" 100.64.0.1 7000 1000 6 > "$work/hold.out" &
holdpid=$!; pids+=($holdpid)
for _ in $(seq 100); do [ -s "$work/hold.out" ] && break; sleep 0.2; done
RSS_1000=$(rss_kb "$PIDB")
CONNS=$(cat "$work/hold.out" 2>/dev/null || echo 0)
wait "$holdpid" 2>/dev/null || true

fi
# ---------- (c) onetun -> wireguard-go -> server ----------
if want c; then
C1=$(ns c1); C2=$(ns c2)
link "$C1" 10.98.4.1/24 "$C2" 10.98.4.2/24 d
wg_dev "$C2" "wd${id}" "$KS" 100.64.0.2 51822 "$PN" 100.64.0.1/32
iperf_server "$C2" 100.64.0.2 5201
ONETUN=${ONETUN:-$(command -v onetun || true)}
if [ -z "$ONETUN" ] && [ "${SKIP_ONETUN:-0}" != 1 ]; then
  say "installing onetun (cargo install, temp root)…"
  if cargo install -q onetun --root "$work/onetun" >/dev/null 2>&1; then ONETUN=$work/onetun/bin/onetun; fi
fi
if [ -n "$ONETUN" ] && [ -x "$ONETUN" ]; then
  ip netns exec "$C1" "$ONETUN" 127.0.0.1:5301:100.64.0.2:5201 --endpoint-addr 10.98.4.2:51822 \
    --endpoint-public-key "$PS" --private-key "$KN" --source-peer-ip 100.64.0.1 --keep-alive 10 \
    --log error >/dev/null 2>&1 &
  pids+=($!); sleep 1
  GC=$(iperf "$C1" 127.0.0.1 5301)
  say "(c) onetun -> wireguard-go: $GC Gbit/s"
else
  say "(c) onetun unavailable (cargo install failed or SKIP_ONETUN=1)"
fi

fi
# ---------- (d) runtime egress -> wireguard-go -> server ----------
if want d; then
D1=$(ns d1); D2=$(ns d2)
link "$D1" 10.98.5.1/24 "$D2" 10.98.5.2/24 e
wg_dev "$D2" "we${id}" "$KS" 100.64.0.2 51822 "$PE" 100.64.0.3/32
iperf_server "$D2" 100.64.0.2 5201
echo_server "$D2" 100.64.0.2 7000
runtime "$D1" egress "$KE" 100.64.0.3 51823 \
  '{"kind":"egress","target_ip":"100.64.0.2","ports":[{"protocol":"tcp","listen":5201,"target":5201},{"protocol":"tcp","listen":7000,"target":7000}]}' \
  "{\"peer\":\"srv\",\"key\":\"$PS\",\"ips\":[\"100.64.0.2\"],\"endpoint\":\"10.98.5.2:51822\"}" \
  '' 9091
GD=$(iperf "$D1" 127.0.0.1 5201); LD=$(rtt "$D1" 127.0.0.1 7000)
[ -n "${DEBUG:-}" ] && ip netns exec "$D1" curl -s http://127.0.0.1:9091/metrics | grep -v '^#' | grep -v ' 0$' >&2
[ -n "${DEBUG:-}" ] && ip netns exec "$D2" ss -tin >&2
[ -n "${DEBUG:-}" ] && { ip netns exec "$D2" grep -A1 '^Udp:' /proc/net/snmp; ip -n "$D2" -s link show "we${id}"; awk '{print "softnet dropped", $2}' /proc/net/softnet_stat; } >&2
say "(d) runtime egress -> wireguard-go: $GD Gbit/s, p50 rtt ${LD} us"

fi
# ---------- (e) runtime egress -> runtime proxy -> server ----------
if want e; then
E1=$(ns e1); E2=$(ns e2); E3=$(ns e3)
link "$E1" 10.98.6.1/24 "$E2" 10.98.6.2/24 f
link "$E2" 10.98.7.1/24 "$E3" 10.98.7.2/24 g
iperf_server "$E3" 10.98.7.2 5201
echo_server "$E3" 10.98.7.2 7000
runtime "$E2" proxy2 "$KN" 100.64.0.1 51820 \
  '{"kind":"proxy","target_host":"10.98.7.2","ports":[{"protocol":"tcp","listen":5201,"target":5201},{"protocol":"tcp","listen":7000,"target":7000}]}' \
  "{\"peer\":\"egress\",\"key\":\"$PE\",\"ips\":[\"100.64.0.3\"]}" \
  '{"rule":{"SrcIPs":["100.64.0.3"],"DstPorts":[{"IP":"100.64.0.1","Ports":{"First":0,"Last":65535}}]}}' 9092
runtime "$E1" egress2 "$KE" 100.64.0.3 51823 \
  '{"kind":"egress","target_ip":"100.64.0.1","ports":[{"protocol":"tcp","listen":5201,"target":5201},{"protocol":"tcp","listen":7000,"target":7000}]}' \
  "{\"peer\":\"proxy\",\"key\":\"$PN\",\"ips\":[\"100.64.0.1\"],\"endpoint\":\"10.98.6.2:51820\"}" \
  '' 9093
GE=$(iperf "$E1" 127.0.0.1 5201); LE=$(rtt "$E1" 127.0.0.1 7000)
say "(e) runtime egress -> runtime proxy: $GE Gbit/s, p50 rtt ${LE} us"

fi

# ---------- (g) wireguard-go -> runtime gateway (3 nodes, one port) -> server ----------
if want g; then
G1=$(ns g1); G2=$(ns g2); G3=$(ns g3)
link "$G1" 10.98.8.2/24 "$G2" 10.98.8.1/24 h
link "$G2" 10.98.9.1/24 "$G3" 10.98.9.2/24 i
iperf_server "$G3" 10.98.9.2 5201
echo_server "$G3" 10.98.9.2 7000
d="$work/gw"; mkdir -p "$d/keys"; chmod 755 "$d" "$d/keys"
K2=$(key); K3=$(key)
nodes=""
n=0
for k in "$K2" "$K3" "$KN"; do
  n=$((n+1)); name="node$n"; mkdir -p "$d/keys/$name"; chmod 755 "$d/keys/$name"
  echo "$k" > "$d/keys/$name/private-key"; chown 65532:65532 "$d/keys/$name/private-key"; chmod 400 "$d/keys/$name/private-key"
  [ -n "$nodes" ] && nodes="$nodes,"
  nodes="$nodes{\"name\":\"$name\",\"public_key\":\"$(pub "$k")\",\"ipv4\":\"100.64.1.$n\",\"ipv6\":\"fd7a:115c:a1e0::1:$n\",\"listen_port\":51820,\"mtu\":$MTU,\"admin_listen\":\"\",\"mode\":{\"kind\":\"proxy\",\"target_host\":\"10.98.9.2\",\"ports\":[{\"protocol\":\"tcp\",\"listen\":5201,\"target\":5201},{\"protocol\":\"tcp\",\"listen\":7000,\"target\":7000}]}}"
done
echo "{\"listen_port\":51820,\"admin_listen\":\"127.0.0.1:9094\",\"nodes\":[$nodes]}" > "$d/gateway.json"
cat > "$d/mesh-0.jsonl" <<J
{"mesh":"bench.example","shard":0,"shards":1}
{"peer":"dev","key":"$PC","ips":["100.64.0.2"]}
{"rule":{"SrcIPs":["100.64.0.2"],"DstPorts":[{"IP":"100.64.1.0/24","Ports":{"First":0,"Last":65535}}]}}
J
chmod 644 "$d/gateway.json" "$d/mesh-0.jsonl"
ip netns exec "$G2" setpriv --reuid 65532 --regid 65532 --clear-groups -- \
  "$BIN" gateway --config "$d/gateway.json" --mesh "$d/mesh-0.jsonl" --key-dir "$d/keys" 2>"$d/log" &
pids+=($!)
for _ in $(seq 50); do
  ip netns exec "$G2" curl -fs "http://127.0.0.1:9094/healthz" >/dev/null 2>&1 && break; sleep 0.1
done
wg_dev "$G1" "wg${id}" "$KC" 100.64.0.2 51821 "$PN" 100.64.1.3/32 10.98.8.1:51820
GG=$(iperf "$G1" 100.64.1.3 5201); LG=$(rtt "$G1" 100.64.1.3 7000)
[ -n "${DEBUG:-}" ] && ip netns exec "$G2" curl -s http://127.0.0.1:9094/metrics | grep -v '^#' | grep -v ' 0$' >&2
say "(g) wireguard-go -> runtime gateway: $GG Gbit/s, p50 rtt ${LG} us"

fi
# ---------- (r) long fat pipes: delay relay, RTT 0/20/50 ms ----------
if want r; then
RTTS=${RTTS:-0 20 50}; STREAMS=${STREAMS:-1 4}; REPEAT=${REPEAT:-1}
bins=("new:$BIN")
if [ -n "${BEFORE:-}" ]; then
  cp "$BEFORE" "$work/tsk8s-runtime-before"; chmod 755 "$work/tsk8s-runtime-before"
  bins=("old:$work/tsk8s-runtime-before" "${bins[@]}")
fi
relay_pids=()
relay() { # ns listen forward delay_ms
  ip netns exec "$1" "$RELAY" "$2" "$3" "$4" >/dev/null 2>&1 &
  relay_pids+=($!); pids+=($!)
}
stop_relays() { for p in "${relay_pids[@]}"; do kill "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done; relay_pids=(); }
mbps() { # ns host port extra-args... -> Mbit/s received
  local n=$1 h=$2 p=$3 out; shift 3
  out=$(ip netns exec "$n" timeout $((T + 20)) iperf3 -c "$h" -p "$p" -t "$T" -O 1 -J "$@" 2>/dev/null) || { echo 0; return; }
  if [ -n "${KEEP_LOGS:-}" ]; then
    # A counter in a file: mbps runs in a command substitution (a subshell).
    local k; k=$(($(cat "$work/iperf-runs" 2>/dev/null || echo 0) + 1)); echo "$k" > "$work/iperf-runs"
    mkdir -p "$KEEP_LOGS"
    local a="$*"; a=${a// /}
    printf '%s\n' "$out" > "$KEEP_LOGS/iperf-$(printf %03d "$k")-$n-$p${a:+-$a}.json"
  fi
  python3 -c 'import json,sys; d=json.load(sys.stdin); print("%.0f" % (d["end"]["sum_received"]["bits_per_second"]/1e6))' <<<"$out" 2>/dev/null || echo 0
}
rcvbuf_errors() { # comma-separated namespaces -> their UDP RcvbufErrors, summed
  local s=0 n
  for n in ${1//,/ }; do
    s=$((s + $(ip netns exec "$n" awk '/^Udp:/ {if (h) {print $6; exit} h=1}' /proc/net/snmp)))
  done
  echo "$s"
}
# Paths: "<name> <client ns> <iperf host> <port> <relay ns> <relay listen> <relay forward> <wg-go ns>"
paths=()
# W: wireguard-go <-> wireguard-go through the relay.
RW1=$(ns rw1); RW2=$(ns rw2); RW3=$(ns rw3)
link "$RW1" 10.98.20.1/24 "$RW2" 10.98.20.2/24 rwa
link "$RW2" 10.98.21.1/24 "$RW3" 10.98.21.2/24 rwb
wg_dev "$RW1" "rwc${id}" "$KC" 100.64.0.2 51821 "$PS" 100.64.0.1/32 10.98.20.2:40000
wg_dev "$RW3" "rws${id}" "$KS" 100.64.0.1 51822 "$PC" 100.64.0.2/32
iperf_server "$RW3" 100.64.0.1 5201
paths+=("W $RW1 100.64.0.1 5201 $RW2 10.98.20.2:40000 10.98.21.2:51822 $RW1,$RW3")
# The relay's own ceiling: 1,232-byte datagrams blasted through it (0 ms) into a sink.
relay "$RW2" 10.98.20.2:40001 10.98.21.2:9999 0
sleep 0.3
ip netns exec "$RW3" "$RELAY" sink 10.98.21.2:9999 "$T" > "$work/sink.out" &
sinkpid=$!; sleep 0.3
SENT=$(ip netns exec "$RW1" "$RELAY" blast 10.98.20.2:40001 "$T" | awk '{print $2}')
wait "$sinkpid" || true
RELAY_CEIL=$(cat "$work/sink.out" 2>/dev/null || echo n/a)
BLAST=$(python3 -c "print('%.0f' % (${SENT:-0}*1232*8/$T/1e6))")
stop_relays
say "(r) relay ceiling at 0 ms: $RELAY_CEIL Mbit/s delivered (blaster sent $BLAST Mbit/s)"
sub=30
for b in "${bins[@]}"; do
  tag=${b%%:*}; bin=${b#*:}
  # P: wireguard-go device -> relay -> runtime proxy -> iperf3 on the proxy's loopback.
  P1=$(ns "p${tag}1"); P2=$(ns "p${tag}2"); P3=$(ns "p${tag}3")
  link "$P1" "10.98.$sub.1/24" "$P2" "10.98.$sub.2/24" "p${tag}a"
  link "$P2" "10.98.$((sub + 1)).1/24" "$P3" "10.98.$((sub + 1)).2/24" "p${tag}b"
  iperf_server "$P3" 127.0.0.1 5201
  RT_BIN=$bin runtime "$P3" "proxy-$tag" "$KN" 100.64.0.1 51820 \
    '{"kind":"proxy","target_host":"127.0.0.1","ports":[{"protocol":"tcp","listen":5201,"target":5201}]}' \
    "{\"peer\":\"dev\",\"key\":\"$PC\",\"ips\":[\"100.64.0.2\"]}" \
    '{"rule":{"SrcIPs":["100.64.0.2"],"DstPorts":[{"IP":"100.64.0.1","Ports":{"First":0,"Last":65535}}]}}' 9190
  wg_dev "$P1" "rp${tag}${id}" "$KC" 100.64.0.2 51821 "$PN" 100.64.0.1/32 "10.98.$sub.2:40000"
  paths+=("P-$tag $P1 100.64.0.1 5201 $P2 10.98.$sub.2:40000 10.98.$((sub + 1)).2:51820 $P1")
  # E: iperf3 -> runtime egress -> relay -> wireguard-go device.
  E1=$(ns "e${tag}1"); E2=$(ns "e${tag}2"); E3=$(ns "e${tag}3")
  link "$E1" "10.98.$((sub + 2)).1/24" "$E2" "10.98.$((sub + 2)).2/24" "e${tag}a"
  link "$E2" "10.98.$((sub + 3)).1/24" "$E3" "10.98.$((sub + 3)).2/24" "e${tag}b"
  wg_dev "$E3" "re${tag}${id}" "$KS" 100.64.0.2 51822 "$PE" 100.64.0.3/32
  iperf_server "$E3" 100.64.0.2 5201
  RT_BIN=$bin runtime "$E1" "egress-$tag" "$KE" 100.64.0.3 51823 \
    '{"kind":"egress","target_ip":"100.64.0.2","ports":[{"protocol":"tcp","listen":5201,"target":5201}]}' \
    "{\"peer\":\"srv\",\"key\":\"$PS\",\"ips\":[\"100.64.0.2\"],\"endpoint\":\"10.98.$((sub + 2)).2:40000\"}" \
    '' 9191
  paths+=("E-$tag $E1 127.0.0.1 5201 $E2 10.98.$((sub + 2)).2:40000 10.98.$((sub + 3)).2:51822 $E3")
  sub=$((sub + 4))
done
sleep 1
for b in "${bins[@]}"; do
  tag=${b%%:*}
  say "(r) runtime $tag idle RSS: proxy $(rss_kb "$(cat "$work/rt-proxy-$tag/pid")") kB, egress $(rss_kb "$(cat "$work/rt-egress-$tag/pid")") kB"
done
: > "$work/r.tsv"
for rep_i in $(seq "$REPEAT"); do
  say "(r) repetition $rep_i: $(uptime)"
  for rtt_ms in $RTTS; do
    for p in "${paths[@]}"; do
      read -r _ _ _ _ rns listen fwd _ <<<"$p"
      relay "$rns" "$listen" "$fwd" $((rtt_ms / 2))
    done
    sleep 0.5
    for st in $STREAMS; do
      for dir in ${DIRS:-up down}; do
        for p in "${paths[@]}"; do
          read -r name cns host port _ _ _ wns <<<"$p"
          [[ "$name" =~ ${RPATHS:-.} ]] || continue
          extra=(-P "$st"); [ "$dir" = down ] && extra+=(-R)
          before_drops=$(rcvbuf_errors "$wns")
          v=$(mbps "$cns" "$host" "$port" "${extra[@]}")
          drops=$(( $(rcvbuf_errors "$wns") - before_drops ))
          printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$rep_i" "$rtt_ms" "$st" "$dir" "$name" "$v $drops" >> "$work/r.tsv"
          say "(r) rep $rep_i rtt ${rtt_ms}ms P$st $dir $name: $v Mbit/s, wireguard-go UDP drops $drops"
        done
      done
    done
    stop_relays
  done
done
say "(r) after: $(uptime)"
for b in "${bins[@]}"; do
  tag=${b%%:*}
  say "(r) runtime $tag RSS after: proxy $(rss_kb "$(cat "$work/rt-proxy-$tag/pid")") kB, egress $(rss_kb "$(cat "$work/rt-egress-$tag/pid")") kB"
  if [ -n "${DEBUG:-}" ]; then
    for pe in "p${tag}3 9190" "e${tag}1 9191"; do
      set -- $pe
      ip netns exec "tb${id}$1" curl -s "http://127.0.0.1:$2/metrics" | grep -E '^tsk8s_(tcp_buffer|tcp_timeouts|tcp_fast|tcp_sack|memory_charged|udp_tx|udp_gso|drops_total\{reason="send_error)' | sed "s/^/$1: /" >&2
    done
  fi
done
python3 - "$work/r.tsv" "$RELAY_CEIL" <<'PY'
import sys, statistics, collections
rows = [l.rstrip("\n").split("\t") for l in open(sys.argv[1]) if l.strip()]
vals = collections.defaultdict(list); drops = collections.defaultdict(list); names = []
for rep, rtt, st, d, name, v in rows:
    mb, dr = v.split()
    vals[(rtt, st, d, name)].append(float(mb)); drops[(rtt, st, d, name)].append(int(dr))
    if name not in names: names.append(name)
med = lambda k: statistics.median(vals[k]) if vals.get(k) else None
print("\n(r) delay relay: Mbit/s, median of %d (relay ceiling at 0 ms: %s Mbit/s)" % (max(int(r[0]) for r in rows), sys.argv[2]))
print("up = client -> server side (device/cluster client sends), down = -R")
hdr = ["RTT", "streams", "dir"] + names + ["%s/W" % n for n in names if n != "W"]
print("| " + " | ".join(hdr) + " |"); print("|" + " --- |" * len(hdr))
for (rtt, st, d) in sorted({k[:3] for k in vals}, key=lambda k: (int(k[0]), int(k[1]), k[2] != "up")):
    w = med((rtt, st, d, "W"))
    cells = [rtt + " ms", st, d]
    for n in names:
        m = med((rtt, st, d, n)); dr = statistics.median(drops[(rtt, st, d, n)])
        cells.append("%.0f" % m + (" (%d drops)" % dr if dr else ""))
    for n in names:
        if n == "W": continue
        m = med((rtt, st, d, n)); cells.append("%.2f" % (m / w) if w else "n/a")
    print("| " + " | ".join(cells) + " |")
PY
fi

ratio() { python3 -c "import sys; a,b=sys.argv[1],sys.argv[2]; print('n/a' if 'n/a' in (a,b) or float(b)==0 else '%.2f' % (float(a)/float(b)))" "$1" "$2"; }
diff_us() { python3 -c "import sys; a,b=sys.argv[1],sys.argv[2]; print('n/a' if 'n/a' in (a,b) else '%.1f' % (float(a)-float(b)))" "$1" "$2"; }

cat <<R

tsk8s-runtime benchmark (iperf3 single TCP stream, ${T}s each, runtime MTU $MTU, wireguard-go MTU 1420)
  (a) wireguard-go <-> wireguard-go          $GA Gbit/s
  (b) wireguard-go -> runtime proxy          $GB Gbit/s    b/a = $(ratio "$GB" "$GA")
  (c) onetun -> wireguard-go                 $GC Gbit/s
  (d) runtime egress -> wireguard-go         $GD Gbit/s    d/c = $(ratio "$GD" "$GC")   d/a = $(ratio "$GD" "$GA")
  (e) runtime egress -> runtime proxy        $GE Gbit/s    e/a = $(ratio "$GE" "$GA")
  (g) wireguard-go -> runtime gateway        $GG Gbit/s    g/b = $(ratio "$GG" "$GB")
  p50 TCP echo RTT: (a) ${LA} us  (b) ${LB} us [+$(diff_us "$LB" "$LA")]  (d) ${LD} us [+$(diff_us "$LD" "$LA")]  (e) ${LE} us [+$(diff_us "$LE" "$LA")]  (g) ${LG} us [+$(diff_us "$LG" "$LA")]
  runtime RSS: idle ${IDLE_RSS} kB, after iperf ${RSS_AFTER_IPERF} kB, with ${CONNS} open connections ${RSS_1000} kB
R

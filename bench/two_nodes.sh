#!/usr/bin/env bash
# A two-node Ray cluster on one machine, to check how a graph and an ingress setting behave
# across nodes before making them a cluster's default (BENCHMARKS.md, "Two nodes").
#
#   sudo bench/two_nodes.sh haproxy [graphs/ensemble.yaml]   # RAY_SERVE_ENABLE_HA_PROXY=1 RAY_SERVE_THROUGHPUT_OPTIMIZED=1
#   sudo bench/two_nodes.sh default [graphs/ensemble.yaml]   # Ray's Python proxy
#
# Each node runs in its own network namespace (its own loopback and port 8000), joined by a veth
# pair: the head (2 CPUs) at 10.77.0.1, a worker (1 CPU) at 10.77.0.2. The graph is deployed with
# `serve deploy` unchanged except for its state URL (a temporary SQLite file). Then: readiness and
# a prediction through each node's ingress, where Serve placed each replica, wrk at 64 connections
# through the head's ingress, and the worker node killed (every process in its namespace, as a
# crashed machine) while the head's ingress is probed every 50 ms for 60 s.
# Run after `make models`. Needs root, iproute2, curl and wrk. Both nodes share the machine's
# cores, so the throughput compares the two settings with each other only.
set -euo pipefail
MODE=${1:?usage: two_nodes.sh haproxy|default [graph.yaml]}
GRAPH=${2:-graphs/ensemble.yaml}
cd "$(dirname "$0")/.."
BIN=$PWD/.venv/bin
WORK=""
A=ens-node-a B=ens-node-b
case $MODE in
  haproxy) export RAY_SERVE_ENABLE_HA_PROXY=1 RAY_SERVE_THROUGHPUT_OPTIMIZED=1 ;;
  default) ;;
  *) echo "mode must be haproxy or default" >&2; exit 2 ;;
esac
# Nodes on one host share the user's Ray token file, if any; the cluster here is private.
export RAY_AUTH_MODE=disabled PATH=$BIN:$PATH

kill_node() {  # `ray stop` would stop every Ray process on the machine, both nodes
  local pids; pids=$(ip netns pids "$1" 2>/dev/null || true)
  [[ -z $pids ]] || kill -9 $pids 2>/dev/null || true
}
cleanup() {
  kill_node $B; kill_node $A
  ip netns del $A 2>/dev/null || true; ip netns del $B 2>/dev/null || true
  # `ray start --head` recorded this cluster as the machine's current one; it is gone now.
  if [[ $(cat /tmp/ray/ray_current_cluster 2>/dev/null) == 10.77.0.1:6379 ]]; then rm -f /tmp/ray/ray_current_cluster; fi
  rm -rf "$WORK"
}
trap cleanup EXIT
cleanup; WORK=$(mktemp -d)
ip netns add $A; ip netns add $B
ip link add veth-a netns $A type veth peer name veth-b netns $B
ip -n $A addr add 10.77.0.1/24 dev veth-a; ip -n $B addr add 10.77.0.2/24 dev veth-b
for ns in $A $B; do ip -n $ns link set lo up; done
ip -n $A link set veth-a up; ip -n $B link set veth-b up

"$BIN/python" - "$GRAPH" "$WORK" <<'EOF'
import sys, yaml
graph, work = sys.argv[1:]
config = yaml.safe_load(open(graph))
for app in config["applications"]:
    if "members" in app.get("args", {}):
        app["args"]["state"] = {"url": f"sqlite:///{work}/state.db"}
yaml.safe_dump(config, open(f"{work}/graph.yaml", "w"), sort_keys=False)
EOF

ip netns exec $A ray start --head --node-ip-address=10.77.0.1 --port=6379 --num-cpus=2 \
  --dashboard-host=127.0.0.1 --disable-usage-stats >"$WORK/head.log" 2>&1
ip netns exec $B ray start --address=10.77.0.1:6379 --node-ip-address=10.77.0.2 --num-cpus=1 \
  --disable-usage-stats >"$WORK/worker.log" 2>&1
ip netns exec $A serve deploy "$WORK/graph.yaml" -a http://127.0.0.1:8265 >/dev/null
echo "mode: $MODE, graph: $GRAPH"
ready=""
until (( SECONDS > 240 )); do  # from the script's start: Ray, both nodes, ten replicas
  a=$(ip netns exec $A curl -s -m 3 http://127.0.0.1:8000/readyz || true)
  b=$(ip netns exec $B curl -s -m 3 http://127.0.0.1:8000/readyz || true)
  if [[ $a == *'"ready"'* && $b == *'"ready"'* ]]; then ready=1; break; fi
  sleep 2
done
echo "readyz through node A: $a"; echo "readyz through node B: $b"
[[ -n $ready ]] || { echo "not ready through both nodes"; exit 1; }

# No request id: wrk repeats the body, and every prediction is then logged as its own row.
body=$("$BIN/python" -m models.sample_request | "$BIN/python" -c \
  'import json, sys; b = json.load(sys.stdin); del b["request_id"]; print(json.dumps(b))')
for ns in $A $B; do
  echo "predict through $ns: $(ip netns exec $ns curl -s -m 5 -X POST -H 'content-type: application/json' \
    -d "$body" http://127.0.0.1:8000/v1/predict | "$BIN/python" -c \
    'import json,sys; a=json.load(sys.stdin); print(len(a["members"]), "members, degraded", a["degraded"])')"
done
for ns in $A $B; do
  echo "replicas on $ns: $(for p in $(ip netns pids $ns); do tr '\0' ' ' </proc/$p/cmdline 2>/dev/null; echo; done \
    | grep -o 'ServeReplica:[^ :]*:[^ ]*' | cut -d: -f3 | sort | tr '\n' ' ')"
done

printf 'wrk.method = "POST"\nwrk.headers["Content-Type"] = "application/json"\nwrk.body = [==[%s]==]\n' "$body" >"$WORK/post.lua"
ip netns exec $A wrk -t2 -c64 -d10s --latency -s "$WORK/post.lua" http://127.0.0.1:8000/v1/predict \
  | grep -E 'Requests/sec|^ +(50|99)%|Non-2xx|Socket errors' | sed 's/^ */wrk 64 connections through node A: /'
# Whether the router reached each member over its direct channel, wherever the member runs.
ip netns exec $A curl -s -m 10 http://127.0.0.1:8000/v1/members | "$BIN/python" -c '
import json, sys
for model, spec in json.load(sys.stdin).items():
    for version, info in spec["versions"].items():
        channel, calls = info.get("channel"), info.get("channel_calls")
        print(f"member {model}-{version}: channel {channel}, calls answered over it {calls}")'

echo "killing node B (every process in its namespace) 5 s into a 60 s probe through node A"
(sleep 5; kill_node $B) &
ip netns exec $A "$BIN/python" - "$body" <<'EOF'
import collections, json, sys, time, urllib.error, urllib.request
body, start, rows = sys.argv[1].encode(), time.monotonic(), []
while time.monotonic() - start < 60:
    sent = time.monotonic()
    try:
        with urllib.request.urlopen(urllib.request.Request(
                "http://127.0.0.1:8000/v1/predict", body, {"content-type": "application/json"}), timeout=10) as reply:
            answer = json.loads(reply.read())
            rows.append((sent - start, time.monotonic() - sent, reply.status, len(answer["members"])))
    except urllib.error.HTTPError as exc:
        rows.append((sent - start, time.monotonic() - sent, exc.code, 0))
    except OSError as exc:
        rows.append((sent - start, time.monotonic() - sent, type(exc).__name__, 0))
    time.sleep(0.05)
full = max(r[3] for r in rows)
short = [r for r in rows if r[2] != 200 or r[3] < full]
print(f"{len(rows)} requests; by status {dict(collections.Counter(r[2] for r in rows))}; "
      f"by members answering {dict(sorted(collections.Counter(r[3] for r in rows).items()))}")
if short:
    print(f"answers short of {full} members from {short[0][0]:.1f} s to {short[-1][0]:.1f} s; "
          f"slowest answer {max(r[1] for r in rows) * 1000:.0f} ms")
print(f"last 10 s: {sum(r[3] == full and r[2] == 200 for r in rows if r[0] > 50)} of "
      f"{sum(r[0] > 50 for r in rows)} answered by all {full} members")
EOF
wait

#!/usr/bin/env bash
# A real two-node Ray cluster on this one machine: a head node and a worker node, both started
# with --node-ip-address 127.0.0.1, the dashboard on 127.0.0.1, token authentication on. For
# trying `phasemap submit` without a cloud.
#
#   cluster/local.sh start     # prints the Jobs API address and the token file
#   cluster/local.sh status
#   cluster/local.sh stop      # stops exactly the two nodes this script started (by pid)
#
# Settings (environment): PHASEMAP_CLUSTER_DIR (state: token, pids, logs; default
# ~/.phasemap/local-cluster), GCS_PORT (6379), DASHBOARD_PORT (8265), CLIENT_PORT (10001),
# AGENT_PORT (52365, the worker node uses AGENT_PORT+1), CPUS_PER_NODE (1).
set -euo pipefail

STATE=${PHASEMAP_CLUSTER_DIR:-$HOME/.phasemap/local-cluster}
GCS_PORT=${GCS_PORT:-6379}
DASHBOARD_PORT=${DASHBOARD_PORT:-8265}
CLIENT_PORT=${CLIENT_PORT:-10001}
AGENT_PORT=${AGENT_PORT:-52365}
CPUS=${CPUS_PER_NODE:-1}
TOKEN_FILE=$STATE/auth_token

export RAY_AUTH_MODE=token RAY_AUTH_TOKEN_PATH=$TOKEN_FILE
unset RAY_AUTH_TOKEN RAY_ADDRESS  # this cluster's token comes from its token file only

alive() { [[ -f $STATE/$1.pid ]] && kill -0 "$(cat "$STATE/$1.pid")" 2>/dev/null; }

wait_for() {  # wait_for SECONDS NODE COMMAND...: until COMMAND succeeds, while NODE's process lives
  local deadline=$((SECONDS + $1)) what=$2
  shift 2
  until "$@" >/dev/null 2>&1; do
    if ((SECONDS > deadline)) || ! alive "$what"; then
      echo "local cluster: the $what node did not come up; see $STATE/$what.log" >&2
      return 1
    fi
    sleep 1
  done
}

nodes_up() {  # the number of alive nodes is at least $1
  local n
  n=$(ray status --address "127.0.0.1:$GCS_PORT" 2>/dev/null | awk '/^Active:/{on=1; next} /^(Pending|Recent failures):/{on=0} on && /node_/{n++} END{print n+0}')
  ((n >= $1))
}

start() {
  if alive head || alive worker; then
    echo "local cluster: already running (state in $STATE); stop it first" >&2
    exit 1
  fi
  mkdir -p "$STATE"
  chmod 700 "$STATE"
  if [[ ! -s $TOKEN_FILE ]]; then
    (umask 077 && python3 -c 'import secrets; print(secrets.token_hex(32))' >"$TOKEN_FILE")
  fi
  # --block keeps each node's processes under one parent: stopping that pid stops the node.
  # Note: Ray (2.60) replaces a loopback --node-ip-address by this machine's own address for
  # its internal servers (GCS, raylet, agents), and refuses a second node when told not to
  # (RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0). Those ports need the token; the dashboard and Jobs
  # API, the exposed surface, stay on 127.0.0.1.
  setsid ray start --head --block --node-ip-address 127.0.0.1 --port "$GCS_PORT" \
    --dashboard-host 127.0.0.1 --dashboard-port "$DASHBOARD_PORT" \
    --ray-client-server-port "$CLIENT_PORT" --dashboard-agent-listen-port "$AGENT_PORT" \
    --num-cpus "$CPUS" --disable-usage-stats >"$STATE/head.log" 2>&1 &
  echo $! >"$STATE/head.pid"
  wait_for 90 head nodes_up 1
  setsid ray start --block --address "127.0.0.1:$GCS_PORT" --node-ip-address 127.0.0.1 \
    --dashboard-agent-listen-port "$((AGENT_PORT + 1))" \
    --num-cpus "$CPUS" --disable-usage-stats >"$STATE/worker.log" 2>&1 &
  echo $! >"$STATE/worker.pid"
  wait_for 90 worker nodes_up 2
  echo "local cluster up: 2 nodes, Jobs API http://127.0.0.1:$DASHBOARD_PORT"
  echo "token file: $TOKEN_FILE   (export RAY_AUTH_TOKEN_PATH=$TOKEN_FILE, or pass --token-file)"
}

stop_node() {
  local pid
  alive "$1" || { rm -f "$STATE/$1.pid"; return 0; }
  pid=$(cat "$STATE/$1.pid")
  kill -TERM "$pid"
  for _ in $(seq 60); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.5
  done
  # Whatever survived in the node's own session (setsid made it the session's group).
  kill -KILL -- "-$pid" 2>/dev/null || true
  rm -f "$STATE/$1.pid"
}

case ${1:-} in
  start) start ;;
  stop)
    stop_node worker
    stop_node head
    # Ray records the last cluster started on this machine; forget it if it is this one.
    current=/tmp/ray/ray_current_cluster
    if [[ -f $current ]] && grep -q ":$GCS_PORT\$" "$current"; then rm -f "$current"; fi
    echo "local cluster stopped"
    ;;
  status) ray status --address "127.0.0.1:$GCS_PORT" ;;
  *) echo "usage: $0 start|stop|status" >&2; exit 2 ;;
esac

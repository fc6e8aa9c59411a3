#!/usr/bin/env bash
# Stops a stack started by stack/start.sh (STACK_NAME, default `main`), by PID. Leaves nothing running.
set -uo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
NAME=${STACK_NAME:-main}
DIR=$ROOT/.stack/$NAME
for p in synapse oauth; do
  f=$DIR/$p.pid
  [ -f "$f" ] || continue
  pid=$(cat "$f")
  if kill -0 "$pid" 2>/dev/null; then
    kill -TERM "$pid" 2>/dev/null
    for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -0 "$pid" 2>/dev/null && kill -KILL "$pid" 2>/dev/null
  fi
  rm -f "$f"
done
# The proxy stack's nginx (stack/proxy.sh): a graceful stop, then the master by force.
if [ -f "$DIR/nginx.pid" ]; then
  pid=$(cat "$DIR/nginx.pid")
  kill -QUIT "$pid" 2>/dev/null
  for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  kill -0 "$pid" 2>/dev/null && kill -KILL "$pid" 2>/dev/null
  rm -f "$DIR/nginx.pid"
fi
rm -f "$DIR/stack.env"
echo "[stack:$NAME] stopped" >&2

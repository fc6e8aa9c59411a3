#!/usr/bin/env bash
# with-stack.sh COMMAND...: runs COMMAND with a stack up (STACK_NAME, default `main`). Starts one if
# none is running and stops it afterwards, whatever COMMAND does; reuses (and keeps) a running one.
set -uo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
NAME=${STACK_NAME:-main}
started=""
if [ -f "$ROOT/.stack/$NAME/stack.env" ] && curl -sfk --max-time 2 \
     "$(grep ^SYNAPSE_URL= "$ROOT/.stack/$NAME/stack.env" | cut -d= -f2)_matrix/client/versions" >/dev/null; then
  echo "[stack:$NAME] reusing the running stack" >&2
else
  "$ROOT/stack/stop.sh" 2>/dev/null
  "$ROOT/stack/start.sh" || exit 1
  started=1
fi
cleanup() { [ -n "$started" ] && "$ROOT/stack/stop.sh"; }
trap cleanup EXIT INT TERM
"$@"

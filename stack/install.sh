#!/usr/bin/env bash
# Installs the stack's pinned pieces if missing: Synapse in a venv (.stack/venv) and the npm
# packages of stack/node (from its package-lock.json). Idempotent and quiet when all is there.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
SYNAPSE_VERSION=1.163.2
VENV=$ROOT/.stack/venv
mkdir -p "$ROOT/.stack"
exec 9>"$ROOT/.stack/install.lock"
flock 9
if ! "$VENV/bin/python" -c "import synapse, sys; sys.exit(not synapse.__version__.startswith('$SYNAPSE_VERSION'))" 2>/dev/null; then
  echo "[stack] installing Synapse $SYNAPSE_VERSION into .stack/venv" >&2
  rm -rf "$VENV"
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q --disable-pip-version-check "matrix-synapse==$SYNAPSE_VERSION"
fi
if [ ! -x "$ROOT/stack/node/node_modules/.bin/node" ] || [ ! -d "$ROOT/stack/node/node_modules/matrix-js-sdk" ]; then
  echo "[stack] installing npm packages (npm ci)" >&2
  (cd "$ROOT/stack/node" && npm ci --no-audit --no-fund --loglevel=error)
fi

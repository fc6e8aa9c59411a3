#!/usr/bin/env bash
# Starts the local homeserver stack on 127.0.0.1 and waits until it is healthy:
#   Synapse (pinned, from PyPI, sqlite) with both rendezvous APIs, delegating auth to
#   the OAuth server (oidc-provider + MAS-compat shim, pinned npm packages).
# Installs what is missing first (a venv and node_modules under git-ignored folders).
#
#   stack/start.sh                 the `main` stack on ports 18008 (Synapse) and 18080 (OAuth)
#   STACK_NAME=x SYNAPSE_PORT=… OAUTH_PORT=… DEVICE_CODE_TTL=… stack/start.sh   another instance
#   SERVER_NAME=localhost SERVE_WELLKNOWN=false …   a server name with no `.well-known` (as many
#                                                   real ones): clients must find the homeserver
#                                                   some other way
#   PROXY_DOMAIN=example.test …   a production-shaped deployment (stack/proxy.sh): the server name
#                                 `example.test` with its `.well-known` on that host, Synapse at
#                                 https://matrix.example.test and the OAuth server at
#                                 https://auth.example.test, behind a real nginx with TLS from a CA
#                                 made here and `gzip on` as deployments have it. Needs root (it
#                                 binds 127.0.0.1:443 and names the hosts in /etc/hosts).
#
# Writes .stack/<name>/stack.env (URLs, ports) and PID files; stack/stop.sh stops it by PID.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
NAME=${STACK_NAME:-main}
SYNAPSE_PORT=${SYNAPSE_PORT:-18008}
OAUTH_PORT=${OAUTH_PORT:-18080}
SECRET=${MAS_SECRET:-test-shared-secret-between-synapse-and-mas}
SERVER_NAME=${SERVER_NAME:-127.0.0.1:$SYNAPSE_PORT}
SERVE_WELLKNOWN=${SERVE_WELLKNOWN:-true}
PROXY_DOMAIN=${PROXY_DOMAIN:-}
SYNAPSE_VERSION=1.163.2
DIR=$ROOT/.stack/$NAME
VENV=$ROOT/.stack/venv
NODE_DIR=$ROOT/stack/node
NODE=$NODE_DIR/node_modules/.bin/node
log() { echo "[stack:$NAME] $*" >&2; }

"$ROOT/stack/install.sh"

if [ -f "$DIR/synapse.pid" ] || [ -f "$DIR/oauth.pid" ]; then
  log "already started (run stack/stop.sh${STACK_NAME:+ with STACK_NAME=$NAME} first)"; exit 1
fi
# Both ports must be free now and stay free. A port in the kernel's ephemeral range is neither:
# any client connection may take it, and once closed holds it for a minute (TIME_WAIT), so the
# stack would start on one run and not the next. Such a port is refused; a taken one is named.
read -r EPH_LO EPH_HI 2>/dev/null </proc/sys/net/ipv4/ip_local_port_range || { EPH_LO=32768; EPH_HI=60999; }
for port in "$SYNAPSE_PORT" "$OAUTH_PORT"; do
  if [ "$port" -ge "$EPH_LO" ] && [ "$port" -le "$EPH_HI" ]; then
    log "port $port lies in the kernel's ephemeral range ($EPH_LO-$EPH_HI), where any closed connection may hold it for a minute: choose a port below $EPH_LO"
    exit 1
  fi
  if ! why=$("$VENV/bin/python" - "$port" 2>&1 <<'PY'
import socket, sys
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as Synapse and node bind
try:
    s.bind(("127.0.0.1", int(sys.argv[1])))
except OSError as e:
    sys.exit(e.strerror)
PY
  ); then
    log "port $port on 127.0.0.1 is taken ($why): stop what holds it or choose another port"
    exit 1
  fi
done

rm -rf "$DIR"; mkdir -p "$DIR/synapse"
D=$DIR/synapse
# What the servers call themselves: their own loopback address, or the proxy's https names.
PUBLIC_SYNAPSE=http://127.0.0.1:$SYNAPSE_PORT/
PUBLIC_OAUTH=http://127.0.0.1:$OAUTH_PORT/
X_FORWARDED=false
if [ -n "$PROXY_DOMAIN" ]; then
  SERVER_NAME=$PROXY_DOMAIN; SERVE_WELLKNOWN=true
  PUBLIC_SYNAPSE=https://matrix.$PROXY_DOMAIN/
  PUBLIC_OAUTH=https://auth.$PROXY_DOMAIN/
  X_FORWARDED=true
fi

cat > "$D/homeserver.yaml" <<YAML
server_name: "$SERVER_NAME"
serve_client_wellknown: $SERVE_WELLKNOWN
pid_file: $D/homeserver.pid
public_baseurl: "$PUBLIC_SYNAPSE"
listeners:
  - port: $SYNAPSE_PORT
    bind_addresses: ['127.0.0.1']
    type: http
    tls: false
    x_forwarded: $X_FORWARDED
    resources: [{names: [client], compress: false}]
database: {name: sqlite3, args: {database: $D/homeserver.db}}
media_store_path: $D/media_store
signing_key_path: $D/signing.key
log_config: $D/log.config
report_stats: false
trusted_key_servers: []
suppress_key_server_warning: true
macaroon_secret_key: "test-macaroon"
form_secret: "test-form"
password_config: {enabled: false}
rc_message: {per_second: 1000, burst_count: 1000}
rc_login: {address: {per_second: 1000, burst_count: 1000}, account: {per_second: 1000, burst_count: 1000}}
rc_key_requests: {per_second: 1000, burst_count: 1000}
matrix_authentication_service:
  enabled: true
  endpoint: "http://127.0.0.1:$OAUTH_PORT/"
  secret: "$SECRET"
experimental_features:
  msc4108_enabled: true
  msc4388_mode: open
YAML
cat > "$D/log.config" <<YAML
version: 1
formatters: {f: {format: '%(asctime)s %(levelname)s %(name)s %(message)s'}}
handlers: {file: {class: logging.FileHandler, filename: $D/homeserver.log, formatter: f}}
root: {level: INFO, handlers: [file]}
disable_existing_loggers: false
YAML

log "OAuth server on 127.0.0.1:$OAUTH_PORT"
OAUTH_PORT=$OAUTH_PORT OAUTH_ISSUER=$PUBLIC_OAUTH SYNAPSE_URL=http://127.0.0.1:$SYNAPSE_PORT MAS_SECRET=$SECRET \
  DEVICE_CODE_TTL=${DEVICE_CODE_TTL:-600} ACCESS_TOKEN_TTL=${ACCESS_TOKEN_TTL:-300} \
  setsid "$NODE" "$NODE_DIR/oauth-server.mjs" >"$DIR/oauth.log" 2>&1 </dev/null &
echo $! >"$DIR/oauth.pid"

log "Synapse $SYNAPSE_VERSION on 127.0.0.1:$SYNAPSE_PORT"
"$VENV/bin/python" -m synapse.app.homeserver -c "$D/homeserver.yaml" --generate-keys >/dev/null 2>&1
setsid "$VENV/bin/python" -m synapse.app.homeserver -c "$D/homeserver.yaml" >"$D/stdout.log" 2>&1 </dev/null &
echo $! >"$DIR/synapse.pid"

up() { curl -sf --max-time 2 "$1" >/dev/null; }
for _ in $(seq 300); do
  if up "http://127.0.0.1:$SYNAPSE_PORT/_matrix/client/versions" && up "http://127.0.0.1:$OAUTH_PORT/.well-known/openid-configuration" \
     && up "http://127.0.0.1:$SYNAPSE_PORT/_matrix/client/v1/auth_metadata"; then
    if [ -n "$PROXY_DOMAIN" ]; then
      PROXY_DOMAIN=$PROXY_DOMAIN DIR=$DIR SYNAPSE_PORT=$SYNAPSE_PORT OAUTH_PORT=$OAUTH_PORT "$ROOT/stack/proxy.sh" \
        || { "$ROOT/stack/stop.sh" || true; exit 1; }
    fi
    cat >"$DIR/stack.env" <<ENV
STACK_NAME=$NAME
SYNAPSE_URL=$PUBLIC_SYNAPSE
OAUTH_URL=$PUBLIC_OAUTH
PROXY_DOMAIN=$PROXY_DOMAIN
SYNAPSE_PORT=$SYNAPSE_PORT
OAUTH_PORT=$OAUTH_PORT
SERVER_NAME=$SERVER_NAME
SERVE_WELLKNOWN=$SERVE_WELLKNOWN
STACK_DIR=$DIR
ENV
    log "up"
    exit 0
  fi
  for p in synapse oauth; do
    if ! kill -0 "$(cat "$DIR/$p.pid")" 2>/dev/null; then
      log "$p died"; grep -v '^access ' "$DIR/oauth.log" | tail -n 20 >&2 2>/dev/null || true
      tail -n 20 "$D/stdout.log" "$D/homeserver.log" >&2 2>/dev/null || true
      "$ROOT/stack/stop.sh" || true; exit 1
    fi
  done
  sleep 0.1
done
log "did not come up in 30 s"; tail -20 "$D/homeserver.log" >&2 || true
grep -v '^access ' "$DIR/oauth.log" | tail -n 20 >&2 || true
"$ROOT/stack/stop.sh" || true
exit 1

#!/usr/bin/env bash
# The front of a production-shaped stack (called by stack/start.sh with PROXY_DOMAIN set): a real
# nginx (Debian's nginx-light) on 127.0.0.1:443 with TLS from a CA made here, in front of the
# stack's Synapse and OAuth server, with the proxy settings most deployments carry:
#   https://$PROXY_DOMAIN/.well-known/matrix/client  -> names https://matrix.$PROXY_DOMAIN/
#   https://matrix.$PROXY_DOMAIN                      -> Synapse     (127.0.0.1:$SYNAPSE_PORT)
#   https://auth.$PROXY_DOMAIN                        -> OAuth server (127.0.0.1:$OAUTH_PORT)
#   gzip on; gzip_proxied any; gzip_types application/json text/plain;   (and HTTP/2)
# The three names resolve to 127.0.0.1 through /etc/hosts (added once, marked). Writes
#   $DIR/tls/ca.crt       the CA (trust it: NODE_EXTRA_CA_CERTS)
#   $DIR/tls/bundle.crt   the system's roots and the CA (SSL_CERT_FILE, CURL_CA_BUNDLE)
# and $DIR/nginx.pid; stack/stop.sh stops it.
set -euo pipefail
: "${PROXY_DOMAIN:?}" "${DIR:?}" "${SYNAPSE_PORT:?}" "${OAUTH_PORT:?}"
log() { echo "[stack:proxy] $*" >&2; }
NGINX=$(command -v nginx || echo /usr/sbin/nginx)
[ -x "$NGINX" ] || { log "nginx is not installed (apt-get install nginx-light; make deps does)"; exit 1; }
[ "$(id -u)" -eq 0 ] || { log "the proxy stack binds 127.0.0.1:443 and names its hosts in /etc/hosts: run as root"; exit 1; }
HOSTS=("$PROXY_DOMAIN" "matrix.$PROXY_DOMAIN" "auth.$PROXY_DOMAIN")

# Names: one marked line in /etc/hosts, kept (the next run finds it).
if ! grep -q "# matrix-linkd test proxy$" /etc/hosts; then
  echo "127.0.0.1 ${HOSTS[*]} # matrix-linkd test proxy" >>/etc/hosts
fi
for h in "${HOSTS[@]}"; do
  getent hosts "$h" | grep -q '^127\.0\.0\.1' || { log "$h does not resolve to 127.0.0.1 (/etc/hosts)"; exit 1; }
done

# A CA of our own and a certificate for the three names.
T=$DIR/tls; mkdir -p "$T"
openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj "/CN=matrix-linkd test CA" \
  -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" \
  -keyout "$T/ca.key" -out "$T/ca.crt" 2>/dev/null
openssl req -newkey rsa:2048 -nodes -subj "/CN=$PROXY_DOMAIN" -keyout "$T/server.key" -out "$T/server.csr" 2>/dev/null
printf 'subjectAltName=DNS:%s,DNS:matrix.%s,DNS:auth.%s\nextendedKeyUsage=serverAuth\nbasicConstraints=CA:FALSE\n' \
  "$PROXY_DOMAIN" "$PROXY_DOMAIN" "$PROXY_DOMAIN" >"$T/server.ext"
openssl x509 -req -in "$T/server.csr" -CA "$T/ca.crt" -CAkey "$T/ca.key" -CAcreateserial -days 2 \
  -extfile "$T/server.ext" -out "$T/server.crt" 2>/dev/null
cat /etc/ssl/certs/ca-certificates.crt "$T/ca.crt" >"$T/bundle.crt" 2>/dev/null || cp "$T/ca.crt" "$T/bundle.crt"

mkdir -p "$DIR/nginx-tmp"
upstream() { # name port
  cat <<CONF
    server {
        listen 127.0.0.1:443 ssl http2;
        server_name $1;
        location / {
            proxy_pass http://127.0.0.1:$2;
            proxy_http_version 1.1;
            proxy_set_header Host \$host;
            proxy_set_header X-Forwarded-For \$remote_addr;
            proxy_set_header X-Forwarded-Proto https;
            client_max_body_size 50M;
        }
    }
CONF
}
cat >"$DIR/nginx.conf" <<CONF
daemon on;
pid $DIR/nginx.pid;
worker_processes 1;
error_log $DIR/nginx-error.log warn;
events { worker_connections 512; }
http {
    log_format rendezvous '\$request_method \$request_uri \$status etag=\$upstream_http_etag'
                          ' sent_etag=\$sent_http_etag if_match=\$http_if_match enc=\$http_accept_encoding'
                          ' ua="\$http_user_agent"';
    access_log $DIR/nginx-access.log rendezvous;
    client_body_temp_path $DIR/nginx-tmp/body;
    proxy_temp_path $DIR/nginx-tmp/proxy;
    fastcgi_temp_path $DIR/nginx-tmp/fastcgi;
    uwsgi_temp_path $DIR/nginx-tmp/uwsgi;
    scgi_temp_path $DIR/nginx-tmp/scgi;
    ssl_certificate $T/server.crt;
    ssl_certificate_key $T/server.key;
    # As most deployments have it. nginx then weakens the ETag of what it compresses (W/"T").
    gzip on;
    gzip_proxied any;
    gzip_types application/json text/plain;

    server {
        listen 127.0.0.1:443 ssl http2;
        server_name $PROXY_DOMAIN;
        location = /.well-known/matrix/client {
            default_type application/json;
            add_header Access-Control-Allow-Origin *;
            return 200 '{"m.homeserver": {"base_url": "https://matrix.$PROXY_DOMAIN/"}}';
        }
        location / { return 404; }
    }
$(upstream "matrix.$PROXY_DOMAIN" "$SYNAPSE_PORT")
$(upstream "auth.$PROXY_DOMAIN" "$OAUTH_PORT")
}
CONF
"$NGINX" -t -q -p "$DIR" -c "$DIR/nginx.conf" 2>&1 | grep -v "^$" >&2 || true
"$NGINX" -p "$DIR" -c "$DIR/nginx.conf" || { log "nginx did not start (see $DIR/nginx-error.log; is 127.0.0.1:443 taken?)"; exit 1; }
for _ in $(seq 100); do
  if curl -sf --max-time 2 --cacert "$T/ca.crt" "https://matrix.$PROXY_DOMAIN/_matrix/client/versions" >/dev/null \
     && curl -sf --max-time 2 --cacert "$T/ca.crt" "https://$PROXY_DOMAIN/.well-known/matrix/client" >/dev/null \
     && curl -sf --max-time 2 --cacert "$T/ca.crt" "https://auth.$PROXY_DOMAIN/.well-known/openid-configuration" >/dev/null; then
    log "nginx up: https://$PROXY_DOMAIN (.well-known), https://matrix.$PROXY_DOMAIN, https://auth.$PROXY_DOMAIN"
    exit 0
  fi
  sleep 0.1
done
log "nginx does not answer through TLS"; tail -5 "$DIR/nginx-error.log" >&2 || true
exit 1

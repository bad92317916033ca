#!/bin/sh
# The receiver: datagrams on 9527/udp, /metrics and /health on 9528, the feed on 9529.
# With RST_HTTP_TOKEN (16 characters or more) the same port also serves the API and the
# recording console (http://HOST:9528/console/, sign in with the token).
set -e
set -- --config /etc/rst/udp_server.toml --listen 0.0.0.0:9527 --record-dir /recordings \
  --http 0.0.0.0:9528 --feed 0.0.0.0:9529 "$@"
if [ -n "${RST_HTTP_TOKEN:-}" ]; then
  umask 077
  printf '%s' "$RST_HTTP_TOKEN" > /tmp/http.token
  set -- "$@" --http-token-file /tmp/http.token
fi
exec udp_server "$@"

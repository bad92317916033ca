#!/bin/sh
# Resolves the receiver (RST_RECEIVER, default "receiver"; tap_daemon takes an address),
# then captures on TAP_INTERFACE (eth0) everything but the traffic to and from the receiver
# itself (the module's datagrams and the tap's own feed).
set -e
host="${RST_RECEIVER:-receiver}"
ip="$(getent ahostsv4 "$host" | awk 'NR==1{print $1}')"
[ -n "$ip" ] || { echo "rst-tap: cannot resolve the receiver '$host'" >&2; exit 1; }
echo "rst-tap: capturing on ${TAP_INTERFACE:-eth0}, feeding $host ($ip:9527)"
exec tap_daemon --interface "${TAP_INTERFACE:-eth0}" --receiver "$ip:9527" \
  --filter "udp and not host $ip" "$@"

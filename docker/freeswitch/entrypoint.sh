#!/bin/sh
# Points mod_rst at the receiver (RST_RECEIVER, a name or an address), then runs FreeSWITCH
# in the foreground. mod_rst takes an IP address, so a service name is resolved here.
set -e
host="${RST_RECEIVER:-receiver}"
ip="$(getent ahostsv4 "$host" | awk 'NR==1{print $1}')"
[ -n "$ip" ] || { echo "rst-freeswitch: cannot resolve the receiver '$host'" >&2; exit 1; }
prefix="${FS_PREFIX:-/opt/freeswitch}"
sed -i "s|name=\"udp-server-ip\" value=\"[^\"]*\"|name=\"udp-server-ip\" value=\"$ip\"|" \
  "$prefix/conf/autoload_configs/rst.conf.xml"
echo "rst-freeswitch: mod_rst streams to $host ($ip)"
exec "$prefix/bin/freeswitch" -nf -nc -nonat "$@"

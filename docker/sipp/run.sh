#!/bin/sh
# rst-sipp uac TARGET [CALLS] [RATE]   places CALLS calls (20) at TARGET (host[:port]),
#                                      RATE a second (5), 9000 as the number called;
#                                      logs "CALL <caller> <Call-ID>" to /shared/calls.log
# rst-sipp uas                         answers calls on 5060 and plays audio back
# sipp plays captures through a raw socket: root or CAP_NET_RAW (docker's default set).
set -e
cd /sipp   # play_pcap_audio names pcap/..., a link to Debian's sip-tester captures
ip="$(hostname -i | awk '{print $1}')"
case "$1" in
  uac)
    target="$2"; calls="${3:-${CALLS:-20}}"; rate="${4:-${RATE:-5}}"
    host="${target%:*}"; port=5060; [ "$host" != "$target" ] && port="${target##*:}"
    addr="$(getent ahostsv4 "$host" | awk 'NR==1{print $1}')"
    [ -n "$addr" ] || { echo "rst-sipp: cannot resolve $host" >&2; exit 1; }
    mkdir -p /shared && : > /shared/calls.log
    echo "rst-sipp: $calls calls at $host ($addr:$port), $rate a second"
    sipp -sf /sipp/uac.xml "$addr:$port" -s 9000 -i "$ip" -mi "$ip" -p 5062 -mp 20000 \
      -r "$rate" -l "$calls" -m "$calls" -timeout 60s -nostdin -trace_err \
      -error_file /shared/sipp_errors.log -trace_logs -log_file /shared/calls.log \
      -trace_stat -stf /shared/sipp_stats.csv -aa >/dev/null 2>&1 || rc=$?
    ok="$(grep -c '^CALL ' /shared/calls.log || true)"
    echo "rst-sipp: sipp exit ${rc:-0}, $ok calls answered (errors: /shared/sipp_errors.log)"
    exit "${rc:-0}" ;;
  uas)
    echo "rst-sipp: answering on $ip:5060"
    exec sipp -sf /sipp/uas.xml -i "$ip" -mi "$ip" -p 5060 -mp 30000 -nostdin \
      -trace_err -error_file /tmp/uas_errors.log >/dev/null ;;
  *) exec sipp "$@" ;;
esac

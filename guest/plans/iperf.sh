# iperf: iperf3 client to vionet.host (a server must be listening there).
# vionet.iperf_secs (default 3), vionet.iperf_port (default 5201),
# vionet.iperf_reverse=1 for host->guest, vionet.iperf_udp=1 with
# vionet.iperf_bw (e.g. 100M) for UDP, vionet.iperf_len for -l.
# Results: iperf.mbps (as the receiver counted it), iperf.retr (TCP),
# iperf.lost_percent (UDP).  vionet.iperf_name (default iperf) replaces
# the "iperf" prefix, for a snippet that runs this plan more than once.
k=${VIONET_IPERF_NAME:-iperf}
set -- -c "$VIONET_HOST" -p "${VIONET_IPERF_PORT:-5201}" \
	-t "${VIONET_IPERF_SECS:-3}" -f m --connect-timeout 5000
[ "${VIONET_IPERF_REVERSE:-0}" = 1 ] && set -- "$@" -R
[ "${VIONET_IPERF_UDP:-0}" = 1 ] && set -- "$@" -u -b "${VIONET_IPERF_BW:-100M}"
[ -n "${VIONET_IPERF_LEN:-}" ] && set -- "$@" -l "$VIONET_IPERF_LEN"
out=$(iperf3 "$@" 2>&1)
rc=$?
echo "$out"
# The summary line the receiver reported: "... <n> Mbits/sec ... receiver".
line=$(echo "$out" | grep 'receiver$' | tail -n 1)
# field_after N: the field N places after "Mbits/sec" on stdin's line.
field_after() {
	awk -v n="$1" '{ for (i = 2; i <= NF; i++)
		if ($i == "Mbits/sec") print $(i + n) }'
}
mbps=$(echo "$line" | field_after -1)
result "$k.mbps" "${mbps:-0}"
if [ "${VIONET_IPERF_UDP:-0}" != 1 ]; then
	retr=$(echo "$out" | grep 'sender$' | tail -n 1 | field_after 1)
	[ -n "$retr" ] && result "$k.retr" "$retr"
fi
lost=$(echo "$line" | sed -n 's/.*(\([0-9.e+-]*\)%).*/\1/p')
[ -n "$lost" ] && result "$k.lost_percent" "$lost"
[ $rc -eq 0 ] && [ -n "$mbps" ]

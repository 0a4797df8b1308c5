# slaac: the IPv6 a router gives by its advertisements (SLAAC): wait for a
# global address and a default route, then ping the router over IPv6.
# vionet.slaac_wait (default 30) seconds at most for both; vionet.host6 is
# the address pinged (vionet.ping_count times, default 3).
# Results: slaac.addr (ADDRESS/LEN of scope global, "-" if none came),
# slaac.route (the default route), slaac.mtu (the interface's IPv6 MTU, as
# the advertisement's MTU option set it), slaac.hoplimit, ping6.sent,
# ping6.received.
i=0
while [ $i -lt $((${VIONET_SLAAC_WAIT:-30} * 10)) ]; do
	addr=$(ip -6 -o addr show dev "$IF" scope global | awk '$0 !~ /tentative/ { print $4 }' | head -n 1)
	route=$(ip -6 route show default | head -n 1)
	[ -n "$addr" ] && [ -n "$route" ] && break
	sleep 0.1
	i=$((i + 1))
done
result slaac.addr "${addr:--}"
result slaac.route "${route:--}"
result slaac.mtu "$(cat /proc/sys/net/ipv6/conf/$IF/mtu)"
result slaac.hoplimit "$(cat /proc/sys/net/ipv6/conf/$IF/hop_limit)"
out=$(ping6 -c "${VIONET_PING_COUNT:-3}" -W 2 "$VIONET_HOST6" 2>&1)
rc=$?
echo "$out"
result ping6.sent "$(echo "$out" | sed -n 's/^\([0-9]*\) packets transmitted.*/\1/p')"
result ping6.received "$(echo "$out" | sed -n 's/.* \([0-9]*\) packets received.*/\1/p')"
[ -n "$addr" ] && [ -n "$route" ] && exit $rc
exit 1

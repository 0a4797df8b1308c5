# dhcp: get an IPv4 lease with busybox udhcpc, apply it, report it.
# udhcpc -n -q: give up if no lease comes (exit 1), quit once bound.
# The script it runs applies the address (with the lease's mask) and the
# default route, then prints the lease.  vionet.dhcp_tries (default 5)
# discovers, vionet.dhcp_wait (default 3) seconds apart.
# Results: dhcp.ip, dhcp.mask (prefix length), dhcp.subnet (dotted), dhcp.router, dhcp.dns, dhcp.hostname,
# dhcp.lease, dhcp.serverid, dhcp.mtu (what the server sent; "-" when an
# option was missing), dhcp.rc (udhcpc's exit status), and dhcp.addr,
# dhcp.route: the interface's address and default route as the kernel
# now has them.
cat > /tmp/udhcpc.sh <<'EOF'
#!/bin/sh
# udhcpc calls this with the event as $1 and the lease in the environment.
. /lib/vionet.sh
case "$1" in
deconfig)
	ip -4 addr flush dev "$interface"
	;;
bound | renew)
	ip -4 addr flush dev "$interface"
	ip addr add "$ip/${mask:-32}" dev "$interface"
	for r in $router; do
		# a /31 or /32 lease: the router is reached on the link itself
		ip route add "$r" dev "$interface" 2>/dev/null
		ip route add default via "$r" dev "$interface"
		break
	done
	result dhcp.ip "$ip"
	result dhcp.mask "${mask:--}"
	result dhcp.subnet "${subnet:--}"
	result dhcp.router "${router:--}"
	result dhcp.dns "$(echo ${dns:--} | tr ' ' ',')"
	result dhcp.hostname "${hostname:--}"
	result dhcp.lease "${lease:--}"
	result dhcp.serverid "${serverid:--}"
	result dhcp.mtu "${mtu:--}"
	;;
esac
exit 0
EOF
chmod 755 /tmp/udhcpc.sh
udhcpc -i "$IF" -n -q -f -t "${VIONET_DHCP_TRIES:-5}" -T "${VIONET_DHCP_WAIT:-3}" \
	-s /tmp/udhcpc.sh
rc=$?
result dhcp.rc $rc
result dhcp.addr "$(ip -4 -o addr show dev "$IF" | awk '{ print $4 }' | head -n 1)"
result dhcp.route "$(ip route | grep '^default' | head -n 1)"
exit $rc

# dhcp6: a stateful DHCPv6 lease (IA_NA) and the name servers, with dhcpcd
# (Debian's busybox has no udhcpc6), one shot, DHCPv6 only: the kernel
# does the router solicitations and SLAAC itself. dhcpcd adds the address;
# its hook prints what the server gave. vionet.dhcp6_wait (default 30)
# seconds at most.
# Results: dhcp6.reason (BOUND6 when a lease came), dhcp6.addr, dhcp6.dns,
# dhcp6.t1, dhcp6.t2, dhcp6.pltime, dhcp6.vltime, dhcp6.serverid,
# dhcp6.rc (dhcpcd's exit status), dhcp6.kernel_addr: the address as the
# kernel now has it (ADDRESS/128, "-" if not).
cat > /tmp/dhcp6-hook.sh <<'HOOK'
#!/bin/sh
. /lib/vionet.sh
case "$reason" in
BOUND6 | REBOOT6 | RENEW6 | REBIND6)
	result dhcp6.reason "$reason"
	result dhcp6.addr "${new_dhcp6_ia_na1_ia_addr1:--}"
	result dhcp6.dns "$(echo ${new_dhcp6_name_servers:--} | tr ' ' ',')"
	result dhcp6.t1 "${new_dhcp6_ia_na1_t1:--}"
	result dhcp6.t2 "${new_dhcp6_ia_na1_t2:--}"
	result dhcp6.pltime "${new_dhcp6_ia_na1_ia_addr1_pltime:--}"
	result dhcp6.vltime "${new_dhcp6_ia_na1_ia_addr1_vltime:--}"
	result dhcp6.serverid "${new_dhcp6_server_id:--}"
	;;
esac
exit 0
HOOK
chmod 755 /tmp/dhcp6-hook.sh
printf 'ipv6only\nnoipv6rs\nia_na 1\noption dhcp6_name_servers\n' > /tmp/dhcpcd.conf
dhcpcd -f /tmp/dhcpcd.conf -c /tmp/dhcp6-hook.sh -6 -1 -B -t "${VIONET_DHCP6_WAIT:-30}" "$IF"
rc=$?
result dhcp6.rc $rc
result dhcp6.kernel_addr "$(ip -6 -o addr show dev "$IF" scope global | awk '$4 ~ /\/128$/ { print $4 }' | head -n 1)"
exit $rc

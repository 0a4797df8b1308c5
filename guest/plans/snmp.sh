# snmp: the guest's own count of what its IP, TCP and UDP layers received
# and refused, from /proc/net/snmp: a frame with a wrong checksum that the
# guest verified counts in InCsumErrors.  vionet.snmp_name (default snmp)
# replaces the prefix, for a snippet that runs this plan twice.
# Results: <prefix>.tcp_insegs, .tcp_inerrs, .tcp_incsumerrors,
# .udp_indatagrams, .udp_inerrors, .udp_incsumerrors, .ip_inhdrerrors.
awk -v p="${VIONET_SNMP_NAME:-snmp}" '
	# Each protocol has two lines: the names, then the values.
	{ proto = $1; sub(":", "", proto); proto = tolower(proto) }
	seen[proto]++ == 0 { for (i = 2; i <= NF; i++) name[proto, i] = tolower($i); next }
	{
		for (i = 2; i <= NF; i++) {
			k = proto "_" name[proto, i]
			if (k ~ /^(tcp_(insegs|inerrs|incsumerrors)|udp_(indatagrams|inerrors|incsumerrors)|ip_inhdrerrors)$/)
				print "VIONET-RESULT " p "." k "=" $i
		}
	}' /proc/net/snmp

# udpgso: UDP with UDP_SEGMENT (guest USO) to vionet.host:vionet.udp_port
# (default 5401), vionet.udp_bytes (default 4 MiB), segments of
# vionet.udp_seg (default 1400) bytes.  Results: udpgso.* from the tool
# (gso, sent_bytes, sent_datagrams, ...) and udpgso.rc.
out=$(udpgso_send send "$VIONET_HOST" "${VIONET_UDP_PORT:-5401}" \
	-b "${VIONET_UDP_BYTES:-4194304}" -s "${VIONET_UDP_SEG:-1400}" 2>&1)
rc=$?
echo "$out" | results_from udpgso
result udpgso.rc $rc
exit $rc

# ping: the guest pings vionet.host (count vionet.ping_count, default 3).
# Results: ping.received, ping.sent.
out=$(ping -c "${VIONET_PING_COUNT:-3}" -W 2 "$VIONET_HOST" 2>&1)
rc=$?
echo "$out"
sent=$(echo "$out" | sed -n 's/^\([0-9]*\) packets transmitted.*/\1/p')
recv=$(echo "$out" | sed -n 's/.* \([0-9]*\) packets received.*/\1/p')
result ping.sent "${sent:-0}"
result ping.received "${recv:-0}"
exit $rc

# vmpair: two guests on one switch talk TCP to each other, no host between.
# Both serve a file of vionet.xfer_bytes (default 4 MiB) random bytes over
# HTTP (busybox httpd, port 8080) and fetch the other's with wget; the
# guest with vionet.role=server also runs an iperf3 server, the one with
# vionet.role=client runs iperf3 to it both ways (-R).  vionet.peer is the
# other guest's address.  The peers may boot at different speeds: every
# first contact is retried for up to vionet.pair_wait (default 300) s.
# To end together, each writes /done once its own work is over and waits
# for the other's, then stays up vionet.pair_linger (default 20) s so the
# other sees its /done too.
# Results: pair.tx_bytes, pair.tx_sha256 (what this guest served),
# pair.rx_bytes, pair.rx_sha256 (what it fetched), pair.peer_done;
# client: iperf.* and iperf_rx.* (see iperf.sh).
n=${VIONET_XFER_BYTES:-4194304}
wait=${VIONET_PAIR_WAIT:-300}
peer=$VIONET_PEER
mkdir -p /tmp/www
dd if=/dev/urandom of=/tmp/www/file bs=4096 count=$((n / 4096)) 2>/dev/null
result pair.tx_bytes "$(wc -c < /tmp/www/file)"
result pair.tx_sha256 "$(sha256sum /tmp/www/file | cut -d' ' -f1)"
httpd -p 8080 -h /tmp/www || exit 1
[ "${VIONET_ROLE:-}" = server ] && { iperf3 -s -p 5201 -D || exit 1; }

# retry CMD...: run CMD once a second until it succeeds, for $wait s.
retry() {
	local end=$(($(cut -d. -f1 /proc/uptime) + wait))
	until "$@"; do
		[ "$(cut -d. -f1 /proc/uptime)" -ge "$end" ] && return 1
		sleep 1
	done
}

retry wget -q -T 20 -O /tmp/rx "http://$peer:8080/file"
rx=$?
result pair.rx_bytes "$(wc -c < /tmp/rx)"
result pair.rx_sha256 "$(sha256sum /tmp/rx | cut -d' ' -f1)"
rc=$rx
if [ "${VIONET_ROLE:-}" = client ]; then
	export VIONET_HOST=$peer
	# the server started iperf3 before its httpd answered us: it listens
	(. /plans/iperf.sh) || rc=1
	(VIONET_IPERF_REVERSE=1 VIONET_IPERF_NAME=iperf_rx . /plans/iperf.sh) || rc=1
fi
touch /tmp/www/done
retry wget -q -T 20 -O /dev/null "http://$peer:8080/done"
result pair.peer_done $?
sleep "${VIONET_PAIR_LINGER:-20}"
exit $rc

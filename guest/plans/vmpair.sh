# vmpair: two guests on one switch talk TCP to each other, no host between.
# Each sends the other a file of vionet.xfer_bytes (default 4 MiB) random
# bytes with nc (port 8080) and keeps the one it receives; the guest with
# vionet.role=server also runs an iperf3 server, the one with
# vionet.role=client runs iperf3 to it both ways (-R) and then tells the
# server it is done (port 8081), so the server stays up until then.
# vionet.peer is the other guest's address.  The peers boot at different
# speeds: every first contact is retried for up to vionet.pair_wait
# (default 300) s.  (busybox's static wget crashes on a lookup, so no HTTP.)
# Results: pair.tx_bytes, pair.tx_sha256 (what this guest sent),
# pair.rx_bytes, pair.rx_sha256 (what it received), pair.send_rc;
# client: iperf.* and iperf_rx.* (see iperf.sh); server: pair.peer_done.
n=${VIONET_XFER_BYTES:-4194304}
wait=${VIONET_PAIR_WAIT:-300}
peer=$VIONET_PEER
role=${VIONET_ROLE:-}

# now: seconds since boot.  retry CMD...: once a second until CMD
# succeeds, for $wait s at most.
now() { cut -d. -f1 /proc/uptime; }
retry() {
	local end=$(($(now) + wait))
	until "$@"; do
		[ "$(now)" -ge "$end" ] && return 1
		sleep 1
	done
}

# listen PORT FILE: receive one connection into FILE, in the background.
# busybox nc quits when its stdin ends, so stdin is a FIFO held open
# read-write: it never ends, and nc quits when the peer closes instead.
listen() {
	rm -f "/tmp/fifo.$1"
	mkfifo "/tmp/fifo.$1"
	sh -c "exec 3<>/tmp/fifo.$1; exec nc -l -p $1 <&3 > $2" &
	listener=$!
}

# finished PID: wait (bounded) until the background job PID has ended.
finished() {
	local end=$(($(now) + wait))
	while kill -0 "$1" 2>/dev/null; do
		[ "$(now)" -ge "$end" ] && { kill "$1"; return 1; }
		sleep 1
	done
}

dd if=/dev/urandom of=/tmp/pair.tx bs=4096 count=$((n / 4096)) 2>/dev/null
result pair.tx_bytes "$(wc -c < /tmp/pair.tx)"
result pair.tx_sha256 "$(sha256sum /tmp/pair.tx | cut -d' ' -f1)"
[ "$role" = server ] && { iperf3 -s -p 5201 -D || exit 1; }
listen 8080 /tmp/pair.rx
rx_job=$listener
[ "$role" = server ] && { listen 8081 /tmp/pair.done; done_job=$listener; }

retry nc "$peer" 8080 < /tmp/pair.tx
result pair.send_rc $?
finished "$rx_job"
result pair.rx_bytes "$(wc -c < /tmp/pair.rx)"
result pair.rx_sha256 "$(sha256sum /tmp/pair.rx | cut -d' ' -f1)"
rc=0
if [ "$role" = client ]; then
	export VIONET_HOST=$peer
	(. /plans/iperf.sh) || rc=1
	(VIONET_IPERF_REVERSE=1 VIONET_IPERF_NAME=iperf_rx . /plans/iperf.sh) || rc=1
	echo done > /tmp/pair.done
	retry nc "$peer" 8081 < /tmp/pair.done || rc=1
else
	finished "$done_job"
	result pair.peer_done "$(cat /tmp/pair.done)"
fi
[ "$(wc -c < /tmp/pair.rx)" -eq "$n" ] || rc=1
exit $rc

# migrate: TCP streams both ways at once, for the host to live-migrate the
# VM under (tests/test_migration.py), then wait for the host's word.
# Nothing is stored: each stream is hashed as it passes, so the guest's
# memory holds no file whatever the size.
#
# Guest to host: vionet.mig_bytes (default 64 MiB, a multiple of 64 KiB)
# of /dev/urandom data sent to vionet.host:vionet.mig_port (default 5501);
# the host reads until the guest closes.
# Host to guest: vionet.mig_streams (default 1) connections, stream I to
# port mig_port+1+I; the guest keeps everything until the host closes.
# Then the guest listens on mig_port+99 and finishes when the host has
# connected and closed there (the plan's timeout bounds the wait), so the
# host can look at the running VM after the transfers.
# Results: mig.tx_bytes, mig.tx_sha256, mig.tx_rc; for each stream I
# mig.rxI_bytes, mig.rxI_sha256, mig.rxI_rc; mig.done_rc (the host's word).
set -o pipefail
n=${VIONET_MIG_BYTES:-67108864}
port=${VIONET_MIG_PORT:-5501}
streams=${VIONET_MIG_STREAMS:-1}

# Upload: dd's data goes to nc and, through tee and a fifo, to sha256sum.
mkfifo /tmp/up.fifo
sha256sum < /tmp/up.fifo > /tmp/up.sha &
(
	dd if=/dev/urandom bs=65536 count=$((n / 65536)) 2>/dev/null |
	    tee /tmp/up.fifo | nc "$VIONET_HOST" "$port" > /dev/null
	echo $? > /tmp/up.rc
) &

# Downloads: what nc receives goes to sha256sum and, through a fifo, to wc.
i=0
while [ $i -lt "$streams" ]; do
	mkfifo /tmp/dn$i.fifo
	wc -c < /tmp/dn$i.fifo > /tmp/dn$i.n &
	(
		nc "$VIONET_HOST" $((port + 1 + i)) < /dev/null |
		    tee /tmp/dn$i.fifo | sha256sum > /tmp/dn$i.sha
		echo $? > /tmp/dn$i.rc
	) &
	i=$((i + 1))
done
wait

result mig.tx_bytes $((n / 65536 * 65536))
result mig.tx_sha256 "$(cut -d' ' -f1 /tmp/up.sha)"
result mig.tx_rc "$(cat /tmp/up.rc)"
failed=0
[ "$(cat /tmp/up.rc)" = 0 ] || failed=1
i=0
while [ $i -lt "$streams" ]; do
	result mig.rx${i}_bytes "$(cat /tmp/dn$i.n)"
	result mig.rx${i}_sha256 "$(cut -d' ' -f1 /tmp/dn$i.sha)"
	result mig.rx${i}_rc "$(cat /tmp/dn$i.rc)"
	[ "$(cat /tmp/dn$i.rc)" = 0 ] || failed=1
	i=$((i + 1))
done

# The host's word: one connection, closed by the host.
nc -l -p $((port + 99)) < /dev/null > /dev/null
result mig.done_rc $?
[ $failed -eq 0 ]

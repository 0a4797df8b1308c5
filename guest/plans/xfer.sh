# xfer: TCP file transfer both ways with sha256 at each end.
# Guest to host: vionet.xfer_bytes (default 4 MiB) of random data sent to
# vionet.host:vionet.xfer_port (default 5301); the host reads exactly that
# many bytes and closes.  Host to guest: the guest connects to port+1 and
# keeps everything until the host closes.
# Results: xfer.tx_bytes, xfer.tx_sha256, xfer.rx_bytes, xfer.rx_sha256.
n=${VIONET_XFER_BYTES:-4194304}
port=${VIONET_XFER_PORT:-5301}
dd if=/dev/urandom of=/tmp/xfer.tx bs=4096 count=$((n / 4096)) 2>/dev/null
result xfer.tx_bytes "$(wc -c < /tmp/xfer.tx)"
result xfer.tx_sha256 "$(sha256sum /tmp/xfer.tx | cut -d' ' -f1)"
nc -w 5 "$VIONET_HOST" "$port" < /tmp/xfer.tx > /dev/null
tx=$?
rm -f /tmp/xfer.tx
nc -w 5 "$VIONET_HOST" $((port + 1)) < /dev/null > /tmp/xfer.rx
rx=$?
result xfer.rx_bytes "$(wc -c < /tmp/xfer.rx)"
result xfer.rx_sha256 "$(sha256sum /tmp/xfer.rx | cut -d' ' -f1)"
rm -f /tmp/xfer.rx
result xfer.tx_rc $tx
result xfer.rx_rc $rx
[ $tx -eq 0 ] && [ $rx -eq 0 ]

"""guest_peer.py: the host side of the guest's "xfer" plan.

Run inside the test's network namespace (ip netns exec NS python3 ...):

    guest_peer.py xfer PORT NBYTES TIMEOUT

Port PORT takes one connection and reads exactly NBYTES (the guest's
upload), then closes so the guest's nc ends; port PORT+1 takes one
connection, sends NBYTES of fresh random data and closes.  Prints "ready"
once both listen, then one JSON object with the byte counts and sha256 of
both directions, as seen from the host.  Every socket operation is bounded
by TIMEOUT seconds; a failure is reported in the JSON, never hangs.
"""

import hashlib
import json
import os
import socket
import sys
import time


def listen(port):
    """Both families: the guest may come over IPv4 or IPv6."""
    s = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    s.bind(("::", port))
    s.listen(1)
    return s


def receive(ls, nbytes, deadline):
    """Accept one connection and read up to nbytes; return (count, sha)."""
    h, got = hashlib.sha256(), 0
    ls.settimeout(max(deadline - time.monotonic(), 0.1))
    c, _ = ls.accept()
    with c:
        while got < nbytes:
            c.settimeout(max(deadline - time.monotonic(), 0.1))
            b = c.recv(min(65536, nbytes - got))
            if not b:
                break
            h.update(b)
            got += len(b)
    return got, h.hexdigest()


def send(ls, nbytes, deadline):
    """Accept one connection and send nbytes of random data."""
    data = os.urandom(nbytes)
    ls.settimeout(max(deadline - time.monotonic(), 0.1))
    c, _ = ls.accept()
    with c:
        c.settimeout(max(deadline - time.monotonic(), 0.1))
        c.sendall(data)
        c.shutdown(socket.SHUT_WR)
    return nbytes, hashlib.sha256(data).hexdigest()


def xfer(port, nbytes, timeout):
    out = {}
    deadline = time.monotonic() + timeout
    up, down = listen(port), listen(port + 1)
    print("ready", flush=True)
    try:
        out["guest_tx_bytes"], out["guest_tx_sha256"] = \
            receive(up, nbytes, deadline)
        out["guest_rx_bytes"], out["guest_rx_sha256"] = \
            send(down, nbytes, deadline)
    except OSError as e:
        out["error"] = f"{type(e).__name__}: {e}"
    finally:
        up.close()
        down.close()
    print(json.dumps(out), flush=True)


def check_xfer(peer_output, res, nbytes):
    """Assert that the guest's xfer plan (its results res) and this peer
    (its printed output) moved nbytes each way with the same sha256."""
    host = json.loads(peer_output.strip().splitlines()[-1])
    assert "error" not in host, host
    assert host["guest_tx_bytes"] == int(res["xfer.tx_bytes"]) == nbytes
    assert host["guest_tx_sha256"] == res["xfer.tx_sha256"]
    assert int(res["xfer.rx_bytes"]) == nbytes
    assert host["guest_rx_sha256"] == res["xfer.rx_sha256"]


def main():
    if len(sys.argv) != 5 or sys.argv[1] != "xfer":
        sys.exit("usage: guest_peer.py xfer PORT NBYTES TIMEOUT")
    xfer(int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4]))


if __name__ == "__main__":
    main()

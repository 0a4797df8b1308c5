"""flood6.py: a hostile guest's IPv6 flood, for tests/test_isolation6.py.

    python3 -m tests.flood6 SOCKET SECONDS

Connects a TestVM to the vhost-user socket, posts 256 RX buffers and then,
for SECONDS, sends router solicitations and DHCPv6 Solicits (with Rapid
Commit, a fresh transaction id each) back to back, 64 chains a kick,
waiting for each batch's used entries. Prints "ready" once connected and
"sent=N" at the end. Bounded: by SECONDS, and by the TestVM's guest memory
(its allocator raises when it is used up: then it stops early).
"""
import sys
import time

from tests.test_dhcp6 import ia_na, message, opt
from tests.test_ra import GUEST_MAC, rs_frame
from tests.testvm import TestVM
from vionetd import dhcp6

BATCH = 64


def flood(sock, seconds):
    rs = rs_frame()
    duid = opt(1, bytes.fromhex("00030001") + GUEST_MAC)
    sent = 0
    with TestVM(sock, mem_size=256 << 20) as vm:
        vm.post_rx(256, 2048)
        print("ready", flush=True)
        end = time.monotonic() + seconds
        try:
            while time.monotonic() < end:
                for i in range(BATCH // 2):
                    vm.post_tx(rs, kick=False)
                    vm.post_tx(message(dhcp6.SOLICIT, duid + ia_na() + opt(14, b""),
                                       xid=(sent + i) & 0xFFFFFF), kick=False)
                vm.fe.kick_ring(1)
                vm.wait_used(1, BATCH, timeout=10)
                sent += BATCH
        except MemoryError:
            pass
    print("sent=%d" % sent, flush=True)


if __name__ == "__main__":
    flood(sys.argv[1], float(sys.argv[2]))

"""Negotiation through the real daemon: the feature set the VMM sees follows
the policy in the file, and the tap's offloads follow what the guest took."""
import pytest

from tests import netns as N
from tests.daemon import daemon
from tests.testvm import TestVM
from tests import vmm
from vionetd import features as F
from vionetd import vionetctl

pytestmark = pytest.mark.root

CONF = """socket "@CTL@"
vm "t1" {
    interface {
        socket "@DIR@/t1.sock"
%s
    }
}
"""
B = F.bit
# MTU: QEMU offers it to the guest only with host_mtu, and tells us the value;
# LOG_ALL: dirty logging for live migration, whatever the policy
ALWAYS = B(F.VERSION_1) | B(F.MRG_RXBUF) | B(F.RING_INDIRECT_DESC) | B(F.RING_EVENT_IDX) | \
    B(F.VHOST_USER_F_PROTOCOL_FEATURES) | B(F.MTU) | B(F.LOG_ALL)
TX_ALL = B(F.CSUM) | B(F.HOST_TSO4) | B(F.HOST_TSO6) | B(F.HOST_ECN) | B(F.HOST_USO)
RX_ALL = B(F.GUEST_CSUM) | B(F.GUEST_TSO4) | B(F.GUEST_TSO6) | B(F.GUEST_ECN) | \
    B(F.GUEST_USO4) | B(F.GUEST_USO6)

POLICIES = {
    "default": ("", ALWAYS | TX_ALL | RX_ALL),
    "all off": ("offload all off", ALWAYS),
    "tx off": ("offload tx all off", ALWAYS | RX_ALL),
    "no tso6": ("offload tso6 off", ALWAYS | (TX_ALL | RX_ALL) & ~(B(F.HOST_TSO6) | B(F.GUEST_TSO6))),
    "no uso, tx software": ("offload uso off\noffload tx csum software\noffload tx tso4 software",
                            ALWAYS | (TX_ALL | RX_ALL) & ~(B(F.HOST_USO) | B(F.GUEST_USO4) |
                                                           B(F.GUEST_USO6))),
    # complete checksums on receive: no receive GSO, whose frames carry partial ones
    "rx csum software": ("offload rx csum software", ALWAYS | TX_ALL | B(F.GUEST_CSUM)),
}


def offered(policy):
    with N.netns("vn") as ns, daemon(CONF % policy, ns) as d:
        d.wait_socket(d.dir + "/t1.sock")
        with vmm.Frontend.connect(d.dir + "/t1.sock") as fe:
            return fe.get_features()


@pytest.mark.parametrize("name", sorted(POLICIES))
def test_offer_follows_policy(name):
    policy, expect = POLICIES[name]
    got = offered(policy)
    assert got == expect, "offered %s, expected %s" % (F.names(got), F.names(expect))


def ethtool_k(ns, tap):
    out = N.ns_run(ns, "ethtool", "-k", tap).stdout
    return {l.split(":")[0].strip(): l.split(":")[1].split()[0]
            for l in out.splitlines()[1:] if ":" in l}


def test_tap_offloads_follow_guest_features():
    conf = CONF % "" + '\n'
    with N.netns("vn") as ns, daemon(conf, ns) as d:
        d.wait_socket(d.dir + "/t1.sock")
        tap = d.ctl("status").stdout.split()[len(vionetctl.STATUS_COLUMNS) + 3]
        full = TestVM(d.dir + "/t1.sock")
        k = ethtool_k(ns, tap)
        assert k["tcp-segmentation-offload"] == "on"
        assert k["tx-udp-segmentation"] == "on"
        full.close()
        want = ALWAYS | B(F.GUEST_CSUM) | B(F.GUEST_TSO4)
        with TestVM(d.dir + "/t1.sock", want=want):
            k = ethtool_k(ns, tap)
            assert k["tx-tcp-segmentation"] == "on"
            assert k["tx-tcp6-segmentation"] == "off"
            assert k["tx-udp-segmentation"] == "off"
        with TestVM(d.dir + "/t1.sock", want=ALWAYS):
            k = ethtool_k(ns, tap)
            assert k["tcp-segmentation-offload"] == "off"
            assert k["tx-checksumming"] == "off"


def test_missing_bridge_is_a_clear_error_not_a_standalone_tap():
    conf = """socket "@CTL@"
switch "sw" { interface "nosuchbr0" }
vm "t1" {
    interface "vtsw0" {
        socket "@DIR@/t1.sock"
        switch "sw"
    }
}
vm "t2" {
    interface "vtok0" {
        socket "@DIR@/t2.sock"
    }
}
"""
    with N.netns("vn") as ns, daemon(conf, ns) as d:
        d.wait_socket(d.dir + "/t2.sock")          # the other VM is served
        assert "t1/0: cannot start: vtsw0: bridge nosuchbr0 does not exist" in d.log()
        links = N.ns_run(ns, "ip", "-o", "link").stdout
        assert "vtok0" in links and "vtsw0" not in links
        import os
        assert not os.path.exists(d.dir + "/t1.sock")

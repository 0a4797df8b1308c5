"""Run by the parent (root): what a VMM's requests, relayed by its session, do to the tap.

Three vhost-user requests end at the tap of one interface, and only the
parent may touch it:
- SET_FEATURES: the tap's offloads follow what the VMM acked, and the
  session learns what its workers must do in software (features);
- NET_SET_MTU: the guest's MTU is recorded, never applied: the tap keeps
  the interface's MTU (the configured one, or its bridge's), since a Linux
  bridge follows its smallest port and below 1280 loses its IPv6
  addresses; one above the interface's MTU is refused (set_mtu). Each is
  logged once per session; the record is forgotten when the VMM goes
  (vmm_gone);
- SEND_RARP: a RARP from the guest's MAC is written into the tap, so that
  bridges learn the port of a guest that migrated here (announce).

Invariants: a request that breaks the interface's rules (an MTU above its
mtu, a MAC other than a locked lladdr, more than ANNOUNCE_BUDGET RARPs) is
refused and logged, never half done; no request changes the tap's MTU; the
session's checks of the message itself are session_channel.py's.
"""
import collections
import os

from vionetd import features, local6, tap
from vionetd import vionetd_pb2 as pb
from vionetd.backoff import take_slot
from vionetd.log import log

DEFAULT_MTU = 1500            # an interface without "mtu": a tap's default
ANNOUNCE_BUDGET = (8, 10.0)   # RARPs per 10 s (QEMU's defaults send 5 in about 1.5 s)


class TapRequests:
    def __init__(self, port):
        self.port = port
        self.vmm_mtu = 0            # accepted NET_SET_MTU, recorded only
        self.mtu_logged = (None, set())   # (session pid, what was logged for it)
        self.announces = collections.deque()   # times of recent RARPs
        self.announced = 0

    @property
    def mtu(self):
        """The tap's MTU: from vionetd.conf, else its bridge's (iface.py),
        else a tap's default."""
        return self.port.iface.mtu or self.port.tap_mtu or DEFAULT_MTU

    def features(self, value):
        """The VMM's SET_FEATURES: the tap's offloads follow; returns what
        the session's workers must do (pb.Features)."""
        port = self.port
        policy = port.iface.offload
        tap.set_offload(port.tap_fd, features.tap_offloads_for(value, policy, port.tap_caps))
        sw = features.software_mode(policy, value)
        software = pb.Software(tx_csum=sw.tx_csum, rx_csum=sw.rx_csum,
                               tx_tso4="tso4" in sw.tx_segment,
                               tx_tso6="tso6" in sw.tx_segment,
                               tx_uso="uso" in sw.tx_segment)
        return pb.Features(features=value, software=software, locked_lladdr=port.locked_mac,
                           local=bool(port.iface.local), mtu=self.mtu,
                           inet6=port.address6 is not None,
                           locked_ip6=local6.guest_sources(port.address6, port.locked_mac))

    def set_mtu(self, mtu):
        """NET_SET_MTU: the MTU the VMM gives the guest (QEMU's host_mtu,
        libvirt's <mtu size=.../>). Larger than the interface's MTU is
        refused; otherwise recorded, and the tap keeps its own. Returns the
        refusal, "" if none."""
        key = self.port.key
        if mtu > self.mtu:
            self._log_once(log.error, "%s: refusing MTU %d from the VMM: larger than this "
                           "interface's mtu %d", key, mtu, self.mtu)
            return "MTU %d larger than the interface's %d" % (mtu, self.mtu)
        self.vmm_mtu = mtu
        self._log_once(log.info, "%s: guest MTU %d recorded; tap %s keeps %d", key, mtu,
                       self.port.tap_name, self.mtu)
        return ""

    def _log_once(self, fn, *args):
        """One accepted and one refused MTU line per session: a VMM may
        repeat NET_SET_MTU at will."""
        session = self.port.children.session_pid
        if self.mtu_logged[0] != session:
            self.mtu_logged = (session, set())
        if fn not in self.mtu_logged[1]:
            self.mtu_logged[1].add(fn)
            fn(*args)

    def vmm_gone(self):
        """The session waits for a VMM again: the next one may not set an
        MTU."""
        self.vmm_mtu = 0

    def announce(self, mac):
        """SEND_RARP: the guest has moved here; a RARP from its MAC lets
        bridges and switches learn its new port (what QEMU broadcasts when
        it announces a guest itself). A locked interface announces only its
        own address; a session asking too often is told no, in the log."""
        port = self.port
        if port.locked_mac and mac != port.locked_mac:
            log.warning("%s: not announcing %s: the interface is locked to %s",
                        port.key, mac.hex(":"), port.iface.lladdr)
            return
        if port.tap_fd is None or take_slot(self.announces, ANNOUNCE_BUDGET):
            log.warning("%s: RARP for %s not sent (%s)", port.key, mac.hex(":"),
                        "no tap" if port.tap_fd is None else "too many")
            return
        try:
            os.write(port.tap_fd, bytes(tap.VNET_HDR_SZ) + rarp(mac))
        except OSError as e:
            log.warning("%s: RARP for %s: %s", port.key, mac.hex(":"), e)
            return
        self.announced += 1
        log.info("%s: announced %s (RARP) after a migration", port.key, mac.hex(":"))


def rarp(mac):
    """A RARP request (RFC 903) from mac for itself, broadcast and padded to
    Ethernet's 60 bytes: htype 1 (Ethernet), ptype 0x0800 (IPv4), op 3."""
    body = (b"\x00\x01\x08\x00\x06\x04\x00\x03" + mac + bytes(4) + mac + bytes(4))
    frame = b"\xff" * 6 + mac + b"\x80\x35" + body
    return frame + bytes(60 - len(frame))

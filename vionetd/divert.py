"""Run by the tx worker: a frame the C data path diverted, as the fields for the session.

The C core diverts, from the guest of a local interface, DHCP (IPv4 UDP 68
-> 67, TXF_DHCP_DIVERT), router solicitations and DHCPv6 client messages
(TXF_INET6). message(frame) parses it with dhcp.py, ra.py or dhcp6.py and
returns the FromWorker field and its fields, never the frame; a malformed
one is counted (dhcp_malformed, rs_malformed, dhcp6_malformed) and nothing
is sent. Solicitations and DHCPv6 messages are also limited per worker
(RATES: a backoff.Bucket each); the rest are counted (rs_limited,
dhcp6_limited) and dropped, so however fast a guest sends them, they reach
the session and the parent at that rate at most.
"""
import time

from vionetd import dhcp, dhcp6, frame6, ra
from vionetd.backoff import Bucket

# field -> (burst, messages a second after it)
RATES = {"router_solicit": (3, 1.0), "dhcp6": (10, 5.0)}
_PARSE = {"dhcp": (dhcp.fields, "dhcp_malformed"),
          "router_solicit": (ra.fields, "rs_malformed"),
          "dhcp6": (dhcp6.fields, "dhcp6_malformed")}
_LIMITED = {"router_solicit": "rs_limited", "dhcp6": "dhcp6_limited"}


class Diverter:
    """What a tx worker does with diverted frames; count(name) is the
    data path's Python counter."""

    def __init__(self, count, clock=time.monotonic):
        self.count = count
        self.buckets = {f: Bucket(*burst_rate, clock) for f, burst_rate in RATES.items()}

    def message(self, frame):
        """(FromWorker field, message) for frame, or None (counted)."""
        field = kind(frame)
        if field in self.buckets and not self.buckets[field].take():
            self.count(_LIMITED[field])
            return None
        parse, malformed = _PARSE[field]
        fields = parse(frame)
        if fields is None:
            self.count(malformed)
            return None
        return field, fields


def kind(frame):
    """Which parser a diverted frame is for: the FromWorker field's name."""
    try:
        pkt = frame6.packet(frame)
    except ValueError:
        return "dhcp"
    return "router_solicit" if pkt.next_header == frame6.ICMPV6 else "dhcp6"

"""Run by the parent (root): a local interface's IPv6, its /64, advertisements and DHCPv6.

One Inet6 per Interface (iface.py). configure(), when the tap is up: the
interface's /64 (local6.py) out of the local prefix6, the tap's addresses
fe80::1/64 (frame6.ROUTER, the source of advertisements and DHCPv6
replies) and PREFIX::1/64, both without duplicate address detection (they
are ours on a link the guest alone shares), the DHCPv6 lease from before a
restart (dhcp6.restore), and the pace of advertisements (ra.Advertiser).
Where the host has IPv6 disabled on the tap (the addresses are refused),
the interface goes on with IPv4 alone, logged.

What the session relays from the tx worker arrives here: solicited(rs) and
dhcp6(request), each checked again (the session is not trusted), answered
through the session to the rx worker of queue pair 0. Nothing is done for
an interface without IPv6 (inet6 off, or not local): port.address6 is None.
"""
import time

from vionetd import dhcp6, leases, links, local6, ra
from vionetd.log import log


class Inet6:
    def __init__(self, port):
        self.port = port
        self.advertiser = None

    def configure(self):
        port = self.port
        prefix = local6.prefix6(port.conf, leases.default())
        taken = {p.address6.net for p in port.parent.ports.values()
                 if p is not port and p.address6 is not None}
        a6 = local6.addresses6(prefix, port.key, taken)
        try:
            links.add_address(port.tap_name, "fe80::1", 64, nodad=True)
            links.add_address(port.tap_name, str(a6.host), 64, nodad=True)
        except links.LinkError as e:        # IPv6 disabled on the host: IPv4 only
            log.warning("%s: no IPv6: %s", port.key, e)
            return
        port.address6 = a6
        dhcp6.restore(port)
        self.advertiser = ra.Advertiser(port.parent.loop, self._send,
                                        lambda: ra.advert(port), time.monotonic)
        log.info("%s: IPv6 %s, host side %s", port.key, port.address6.net, port.address6.host)

    def running(self):
        """The guest's driver started its rings: advertise."""
        if self.advertiser is not None:
            self.advertiser.start()

    def solicited(self, rs):
        """A RouterSolicit from the tx worker (as ra.fields makes them)."""
        if self.advertiser is None:
            return None
        if len(rs.src_mac) != 6 or len(rs.src_ip) != 16 or len(rs.lladdr) not in (0, 6):
            return "bad router solicitation"
        self.advertiser.solicited(rs)
        return None

    def dhcp6(self, request):
        """A Dhcp6Request from the tx worker: the reply, if any, to the guest."""
        if self.port.address6 is None:
            return None
        reply = dhcp6.decide(self.port, request)
        if reply is not None:
            self._send_reply(reply)
        return None

    def stop(self):
        if self.advertiser is not None:
            self.advertiser.stop()

    def _send(self, advert):
        if self.port.channel is not None:
            self.port.channel.send(router_advert=advert)

    def _send_reply(self, reply):
        if self.port.channel is not None:
            self.port.channel.send(dhcp6_reply=reply)

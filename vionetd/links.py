"""Run by the parent: the link configuration of a VM's tap, over rtnetlink (pyroute2).

Each function takes the interface name and an optional IPRoute; without one it
opens and closes its own, in the network namespace of the calling thread.
Errors come out as LinkError naming the link and the step, never as a bare
netlink exception, so the parent can log them and go on with other VMs.
"""
import contextlib
import errno

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError


class LinkError(OSError):
    """A link operation failed; the message names the link and the step."""


@contextlib.contextmanager
def _ipr(ipr):
    if ipr is not None:
        yield ipr
        return
    own = IPRoute()
    try:
        yield own
    finally:
        own.close()


def _index(ipr, ifname: str) -> int:
    idx = ipr.link_lookup(ifname=ifname)
    if not idx:
        raise LinkError(errno.ENODEV, "no such link: %s" % ifname)
    return idx[0]


def _set(ifname: str, what: str, ipr, **attrs) -> None:
    with _ipr(ipr) as r:
        idx = _index(r, ifname)
        try:
            r.link("set", index=idx, **attrs)
        except NetlinkError as e:
            raise LinkError(e.code, "%s: %s: %s" % (ifname, what, e)) from e


def set_up(ifname: str, ipr=None) -> None:
    """Bring a link administratively up."""
    _set(ifname, "set up", ipr, state="up")


def set_down(ifname: str, ipr=None) -> None:
    """Bring a link administratively down."""
    _set(ifname, "set down", ipr, state="down")


def set_mtu(ifname: str, mtu: int, ipr=None) -> None:
    """Set a link's MTU (the kernel refuses values outside the device's range)."""
    _set(ifname, "set mtu %d" % mtu, ipr, mtu=mtu)


def set_mac(ifname: str, mac: str, ipr=None) -> None:
    """Set a link's hardware address, "aa:bb:cc:dd:ee:ff"."""
    _set(ifname, "set address %s" % mac, ipr, address=mac)


IFA_F_NODAD = 0x02


def add_address(ifname: str, address: str, prefixlen: int, ipr=None, nodad=False) -> None:
    """Add an IPv4 or IPv6 address with its prefix length (nodad: an IPv6
    address usable at once, without duplicate address detection). Adding
    one the link already has is not an error (a reload re-applies the
    configuration)."""
    with _ipr(ipr) as r:
        idx = _index(r, ifname)
        try:
            r.addr("add", index=idx, address=address, prefixlen=prefixlen,
                   flags=IFA_F_NODAD if nodad else 0)
        except NetlinkError as e:
            if e.code == errno.EEXIST:
                return
            raise LinkError(e.code, "%s: add address %s/%d: %s"
                            % (ifname, address, prefixlen, e)) from e


def attach_to_bridge(ifname: str, bridge: str, ipr=None) -> None:
    """Make a link a port of an existing bridge. A missing bridge, or a link
    by that name that is not a bridge, is an error: we never create one."""
    with _ipr(ipr) as r:
        bidx = r.link_lookup(ifname=bridge)
        if not bidx:
            raise LinkError(errno.ENODEV, "%s: bridge %s does not exist" % (ifname, bridge))
        kind = r.get_links(bidx[0])[0].get_nested("IFLA_LINKINFO", "IFLA_INFO_KIND")
        if kind != "bridge":
            raise LinkError(errno.EINVAL, "%s: %s is not a bridge (%s)" % (ifname, bridge, kind))
        _set(ifname, "attach to bridge %s" % bridge, r, master=bidx[0])


def master_of(ifname: str, ipr=None) -> str | None:
    """The name of the bridge a link is a port of, or None."""
    with _ipr(ipr) as r:
        link = r.get_links(_index(r, ifname))[0]
        master = link.get_attr("IFLA_MASTER")
        if not master:
            return None
        return r.get_links(master)[0].get_attr("IFLA_IFNAME")


def delete_link(ifname: str, ipr=None) -> None:
    """Delete a link; one that is already gone is not an error."""
    with _ipr(ipr) as r:
        idx = r.link_lookup(ifname=ifname)
        if not idx:
            return
        try:
            r.link("del", index=idx[0])
        except NetlinkError as e:
            if e.code == errno.ENODEV:
                return
            raise LinkError(e.code, "%s: delete: %s" % (ifname, e)) from e


def get_mac(ifname: str, ipr=None) -> bytes:
    """A link's hardware address, 6 bytes."""
    with _ipr(ipr) as r:
        link = r.get_links(_index(r, ifname))[0]
        mac = link.get_attr("IFLA_ADDRESS")
    if not mac:
        raise LinkError(errno.EINVAL, "%s: no hardware address" % ifname)
    return bytes.fromhex(mac.replace(":", ""))


def get_mtu(ifname: str, ipr=None) -> int:
    """A link's MTU."""
    with _ipr(ipr) as r:
        return int(r.get_links(_index(r, ifname))[0].get_attr("IFLA_MTU"))

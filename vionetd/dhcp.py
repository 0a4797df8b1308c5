"""Run by the parent and by the workers of local interfaces: DHCP (RFC 2131, 2132).

Three steps, each in the process that may do it:

- fields(frame), in the tx worker (sandboxed): the C data path recognised a
  frame from the guest to UDP port 67 and diverted it; this parses it with
  every length checked and returns only the fields (a DhcpRequest), never
  the frame, or None for a malformed one (the worker counts it);
- decide(port, request), in the parent: the lease. The guest of a local
  interface may have exactly one address, the guest half of its /31; an
  ACK and a RELEASE are written to the lease file (leases.py), which
  restore(port) reads back when a port starts;
- build(reply), in the rx worker: the reply frame, every checksum complete
  (old dhclient drops partially checksummed replies, KubeVirt #16131), put
  into the guest's RX ring by the data path.

Unlike vmd, which answers DISCOVER and REQUEST only, this answers DISCOVER
(OFFER), REQUEST in every state of RFC 2131 4.3.2 (ACK, or NAK for a wrong
address), INFORM (ACK without lease), and takes RELEASE and DECLINE.
"""
import ipaddress
import struct

from vionetd import leases
from vionetd.checksum import rfc1071 as _checksum
from vionetd import vionetd_pb2 as pb
from vionetd.log import log

BOOTREQUEST, BOOTREPLY = 1, 2
MAGIC = b"\x63\x82\x53\x63"
DISCOVER, OFFER, REQUEST, DECLINE, ACK, NAK, RELEASE, INFORM = 1, 2, 3, 4, 5, 6, 7, 8
OPT_PAD, OPT_MASK, OPT_ROUTER, OPT_DNS, OPT_HOSTNAME, OPT_MTU = 0, 1, 3, 6, 12, 26
OPT_REQUESTED, OPT_LEASE, OPT_TYPE, OPT_SERVER, OPT_PARAMS, OPT_MESSAGE = 50, 51, 53, 54, 55, 56
OPT_CLIENT_ID, OPT_END = 61, 255
BOOTP_LEN = 236                 # fixed part, before the magic cookie
LEASE_TIME = 86400
BROADCAST_FLAG = 0x8000
ETH_BROADCAST = b"\xff" * 6


# ---- tx worker: the guest's message, as fields -----------------------------

def fields(frame):
    """The DhcpRequest in an Ethernet frame, or None if it is malformed."""
    try:
        return _fields(frame)
    except (struct.error, ValueError, IndexError):
        return None


def _fields(frame):
    off = 14
    ethertype = struct.unpack_from("!H", frame, 12)[0]
    if ethertype == 0x8100:
        ethertype = struct.unpack_from("!H", frame, 16)[0]
        off = 18
    if ethertype != 0x0800:
        return None
    ihl = (frame[off] & 0x0F) * 4
    if frame[off] >> 4 != 4 or ihl < 20 or frame[off + 9] != 17:
        return None
    udp = off + ihl
    sport, dport, ulen = struct.unpack_from("!HHH", frame, udp)
    if sport != 68 or dport != 67 or ulen < 8 or udp + ulen > len(frame):
        return None
    msg = frame[udp + 8: udp + ulen]
    if len(msg) < BOOTP_LEN + 4 or msg[BOOTP_LEN:BOOTP_LEN + 4] != MAGIC:
        return None
    op, htype, hlen = msg[0], msg[1], msg[2]
    if op != BOOTREQUEST or htype != 1 or hlen != 6:
        return None
    xid, _secs, flags = struct.unpack_from("!IHH", msg, 4)
    req = pb.DhcpRequest(op=op, xid=xid, flags=flags, ciaddr=msg[12:16], chaddr=msg[28:34])
    for code, value in options(msg[BOOTP_LEN + 4:]):
        if code == OPT_TYPE and len(value) == 1:
            req.message_type = value[0]
        elif code == OPT_REQUESTED and len(value) == 4:
            req.requested_addr = value
        elif code == OPT_SERVER and len(value) == 4:
            req.server_id = value
        elif code == OPT_CLIENT_ID:
            req.client_id = value
        elif code == OPT_HOSTNAME:
            req.hostname = value.decode("ascii", "replace")
        elif code == OPT_PARAMS:
            req.param_request = value
    if not DISCOVER <= req.message_type <= INFORM:
        return None
    return req


def options(data):
    """(code, value) pairs; ValueError if an option runs past the end."""
    i = 0
    while i < len(data):
        code = data[i]
        if code == OPT_END:
            return
        if code == OPT_PAD:
            i += 1
            continue
        if i + 1 >= len(data) or i + 2 + data[i + 1] > len(data):
            raise ValueError("option %d runs past the end" % code)
        yield code, bytes(data[i + 2: i + 2 + data[i + 1]])
        i += 2 + data[i + 1]
    raise ValueError("no end option")


# ---- parent: the decision ----------------------------------------------------

def well_formed(req):
    """What fields() guarantees of a request, checked again by the parent,
    which gets it from the tx worker as protobuf, whose fields are wider than
    DHCP's: 16-bit flags, a 6-byte chaddr, 4-byte addresses, an 8-bit op and
    message type, options of at most 255 bytes."""
    return (req.flags <= 0xFFFF and len(req.chaddr) == 6 and len(req.ciaddr) == 4
            and len(req.requested_addr) in (0, 4) and len(req.server_id) in (0, 4)
            and req.op <= 0xFF and req.message_type <= 0xFF
            and max(len(req.client_id), len(req.hostname), len(req.param_request)) <= 255)


def decide(port, req):
    """The DhcpReply for req from port's guest, or None when there is none to give
    (also for a request fields() could not have made)."""
    addr = port.address
    if addr is None or req.op != BOOTREQUEST or not well_formed(req):
        return None
    guest = addr.guest.packed
    host = addr.host.packed
    t = req.message_type
    if t == DISCOVER:
        return _reply(port, req, OFFER, yiaddr=guest)
    if t == REQUEST:
        if req.server_id and req.server_id != host:
            return None                     # the client chose another server
        wanted = req.requested_addr or req.ciaddr
        if wanted != guest:
            log.info("%s: DHCP NAK for %s", port.key, _ip(wanted))
            return _reply(port, req, NAK, message="address not available")
        port.lease = "%s (%ds)" % (addr.guest, LEASE_TIME)
        log.info("%s: DHCP lease %s to %s", port.key, addr.guest, req.chaddr.hex(":"))
        leases.default().record(port.key, addr.guest, req.chaddr, LEASE_TIME)
        return _reply(port, req, ACK, yiaddr=guest)
    if t == INFORM:
        return _reply(port, req, ACK, lease=False)
    if t == RELEASE:
        if req.ciaddr == guest:
            port.lease = None
            log.info("%s: DHCP release of %s", port.key, addr.guest)
            leases.default().release(port.key)
        return None
    if t == DECLINE:
        log.warning("%s: guest declined %s", port.key, addr.guest)
        return None
    return None


def restore(port):
    """At a port's start: its lease from the lease file (leases.py), if
    one is live for the address it has now; sets port.lease (what
    vionetctl shows) and returns the lease dict, else None."""
    e = leases.default().get(port.key)
    if e is None or port.address is None or e["address"] != str(port.address.guest):
        return None
    port.lease = leases.default().describe(port.key)
    return e


def _ip(packed):
    return str(ipaddress.IPv4Address(packed)) if len(packed) == 4 else "nothing"


def _reply(port, req, mtype, yiaddr=b"", lease=True, message=""):
    addr = port.address
    r = pb.DhcpReply(message_type=mtype, xid=req.xid, flags=req.flags, chaddr=req.chaddr,
                     server=addr.host.packed, server_mac=port.tap_mac or b"\x00" * 6)
    if mtype == NAK:
        r.message = message
        return r
    r.yiaddr = yiaddr
    r.ciaddr = req.ciaddr if mtype == ACK and not lease else b""
    r.mask = ipaddress.IPv4Network("0.0.0.0/31").netmask.packed
    dns = port.conf.dns or [addr.host]
    r.dns.extend(ipaddress.IPv4Address(d).packed for d in dns)
    r.lease_time = LEASE_TIME if lease else 0
    r.mtu = port.iface.mtu or 0
    r.hostname = port.iface.hostname or ""
    return r


# ---- rx worker: the reply frame ----------------------------------------------

def build(r):
    """The Ethernet frame of DhcpReply r, with complete IPv4 and UDP checksums."""
    opts = bytearray([OPT_TYPE, 1, r.message_type, OPT_SERVER, 4]) + r.server
    if r.message_type != NAK:
        if r.lease_time:
            opts += bytes([OPT_LEASE, 4]) + struct.pack("!I", r.lease_time)
        opts += bytes([OPT_MASK, 4]) + r.mask + bytes([OPT_ROUTER, 4]) + r.server
        if r.dns:
            opts += bytes([OPT_DNS, 4 * len(r.dns)]) + b"".join(r.dns)
        if r.mtu:
            opts += bytes([OPT_MTU, 2]) + struct.pack("!H", r.mtu)
        if r.hostname:
            name = r.hostname.encode()[:255]
            opts += bytes([OPT_HOSTNAME, len(name)]) + name
    elif r.message:
        text = r.message.encode()[:255]
        opts += bytes([OPT_MESSAGE, len(text)]) + text
    opts += bytes([OPT_END])
    yiaddr = r.yiaddr or b"\x00" * 4
    ciaddr = r.ciaddr or b"\x00" * 4
    bootp = struct.pack("!BBBBIHH4s4s4s4s16s64s128s", BOOTREPLY, 1, 6, 0, r.xid, 0, r.flags,
                        ciaddr, yiaddr, b"\x00" * 4, b"\x00" * 4, r.chaddr, b"", b"")
    payload = bootp + MAGIC + bytes(opts)
    # RFC 2131 4.1: broadcast when the client asks for it or for a NAK;
    # otherwise unicast to the offered address and the client's MAC.
    if r.message_type == NAK or r.flags & BROADCAST_FLAG or yiaddr == b"\x00" * 4:
        dst_ip, dst_mac = b"\xff" * 4, ETH_BROADCAST
    else:
        dst_ip, dst_mac = yiaddr, r.chaddr
    if r.ciaddr and r.message_type == ACK and not r.lease_time:
        dst_ip, dst_mac = r.ciaddr, r.chaddr      # INFORM: to the client's address
    udp_len = 8 + len(payload)
    udp = struct.pack("!HHHH", 67, 68, udp_len, 0) + payload
    pseudo = r.server + dst_ip + struct.pack("!BBH", 0, 17, udp_len)
    csum = _checksum(pseudo + udp) or 0xFFFF
    udp = udp[:6] + struct.pack("!H", csum) + udp[8:]
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0x10, 20 + udp_len, 0, 0, 64, 17, 0, r.server, dst_ip)
    ip = ip[:10] + struct.pack("!H", _checksum(ip)) + ip[12:]
    return dst_mac + r.server_mac + b"\x08\x00" + ip + udp


"""Run by the parent and by the workers of local interfaces: DHCPv6 (RFC 8415).

Three steps, each in the process that may do it, as dhcp.py does for IPv4:

- fields(frame), in the tx worker (sandboxed): the C data path diverted a
  UDP 546 -> 547 frame from the guest; this parses it with every length
  checked and returns a Dhcp6Request of its fields, never the frame, or
  None for a malformed one (the worker counts it): options running past
  their message, fixed-size options of the wrong size (21.3-21.14), a DUID
  longer than 130 bytes (11.1), the options a message type must or must
  not carry (16.2-16.12). The UDP checksum is not checked: a guest that
  offloads it sends a partial one (virtio NEEDS_CSUM), and the frame never
  crossed a wire;
- decide(port, request), in the parent: stateful (IA_NA: the one address
  of the interface, local6 LEASE_ID, recorded in the lease file like the
  IPv4 lease) and stateless (Information-request: the name servers).
  Solicit gets an Advertise, or a Reply when it carries Rapid Commit
  (18.3.1); Request, Renew and Rebind a Reply with the lease; Confirm a
  Reply saying whether its addresses are on the link; Release and Decline
  a Reply with Success (18.3.7, 18.3.8); a message for another server
  (Server Identifier not ours) nothing;
- build(reply), in the rx worker: the frame, UDP checksum complete.

Lifetimes (21.4): T1 = PREFERRED / 2, T2 = PREFERRED * 4 / 5, as 21.4
recommends, PREFERRED <= VALID. The server's DUID is a DUID-UUID (11.5,
RFC 6355) made from the interface's key and /64, so it is the same after
a restart and a client's Renew still finds its server.
"""
import hashlib
import ipaddress
import struct

from vionetd import frame6, leases
from vionetd import vionetd_pb2 as pb
from vionetd.log import log

CLIENT_PORT, SERVER_PORT = 546, 547
(SOLICIT, ADVERTISE, REQUEST, CONFIRM, RENEW, REBIND, REPLY, RELEASE, DECLINE,
 RECONFIGURE, INFORMATION_REQUEST) = range(1, 12)
OPT_CLIENTID, OPT_SERVERID, OPT_IA_NA, OPT_IA_TA, OPT_IAADDR, OPT_ORO = 1, 2, 3, 4, 5, 6
OPT_ELAPSED, OPT_STATUS, OPT_RAPID_COMMIT, OPT_DNS, OPT_IA_PD = 8, 13, 14, 23, 25
SUCCESS, NO_ADDRS_AVAIL, NO_BINDING, NOT_ON_LINK = 0, 2, 3, 4
DUID_MAX = 130                       # 11.1: type (2) + at most 128 bytes
PREFERRED, VALID = 14400, 86400
T1, T2 = PREFERRED // 2, PREFERRED * 4 // 5
# What each client message must (True) or must not (False) carry, 16.2-16.12.
_SERVER_ID = {SOLICIT: False, REQUEST: True, CONFIRM: False, RENEW: True, REBIND: False,
              RELEASE: True, DECLINE: True, INFORMATION_REQUEST: None}
_FIXED = {OPT_ELAPSED: 2, OPT_RAPID_COMMIT: 0}


# ---- tx worker: the guest's message, as fields ---------------------------------

def fields(frame):
    """The Dhcp6Request in an Ethernet frame, or None if it is malformed."""
    try:
        return _fields(frame)
    except (ValueError, struct.error):
        return None


def _fields(frame):
    pkt = frame6.packet(frame)
    if pkt.next_header != frame6.UDP or len(pkt.payload) < 12:
        raise ValueError("not UDP")
    sport, dport, ulen = struct.unpack_from("!HHH", pkt.payload)
    if (sport, dport) != (CLIENT_PORT, SERVER_PORT) or ulen != len(pkt.payload):
        raise ValueError("not a DHCPv6 client message")
    msg = pkt.payload[8:]
    req = pb.Dhcp6Request(msg_type=msg[0], xid=int.from_bytes(msg[1:4], "big"),
                          src_mac=pkt.src_mac, src_ip=pkt.src)
    if req.msg_type not in _SERVER_ID:
        raise ValueError("not a client message")
    for code, value in options(msg[4:]):
        _option(req, code, value)
    _check_presence(req)
    return req


def _option(req, code, value):
    if code in _FIXED and len(value) != _FIXED[code]:
        raise ValueError("option %d of %d bytes" % (code, len(value)))
    if code in (OPT_CLIENTID, OPT_SERVERID) and not 2 < len(value) <= DUID_MAX:
        raise ValueError("DUID of %d bytes" % len(value))
    if code == OPT_CLIENTID:
        req.client_id = value
    elif code == OPT_SERVERID:
        req.server_id = value
    elif code == OPT_IA_NA and not req.ia_na:    # one IA_NA is all we lease
        _ia_na(req, value)
    elif code == OPT_RAPID_COMMIT:
        req.rapid_commit = True
    elif code == OPT_ORO:
        if len(value) % 2:
            raise ValueError("odd option request")
        req.oro.extend(struct.unpack("!%dH" % (len(value) // 2), value))


def _ia_na(req, value):
    """IA_NA (21.4): IAID, T1, T2, then options; T1 <= T2 unless T2 is 0."""
    if len(value) < 12:
        raise ValueError("short IA_NA")
    iaid, t1, t2 = struct.unpack_from("!III", value)
    if t2 and t1 > t2:
        raise ValueError("IA_NA with T1 > T2")
    req.ia_na, req.iaid = True, iaid
    for code, sub in options(value[12:]):
        if code == OPT_IAADDR:
            if len(sub) < 24:
                raise ValueError("short IAADDR")
            pref, valid = struct.unpack_from("!II", sub, 16)
            if pref > valid:
                raise ValueError("IAADDR preferred > valid")
            req.addresses.append(sub[:16])


def _check_presence(req):
    if not req.client_id and req.msg_type != INFORMATION_REQUEST:
        raise ValueError("no Client Identifier")
    must = _SERVER_ID[req.msg_type]
    if must is not None and bool(req.server_id) != must:
        raise ValueError("Server Identifier %s" % ("missing" if must else "not allowed"))
    if req.msg_type == INFORMATION_REQUEST and req.ia_na:
        raise ValueError("IA in an Information-request")


def options(data):
    """(code, value) pairs; ValueError if one runs past the end."""
    i = 0
    while i < len(data):
        if i + 4 > len(data):
            raise ValueError("option header past the end")
        code, length = struct.unpack_from("!HH", data, i)
        if i + 4 + length > len(data):
            raise ValueError("option %d runs past the end" % code)
        yield code, bytes(data[i + 4:i + 4 + length])
        i += 4 + length


# ---- parent: the decision --------------------------------------------------------

def server_duid(port):
    """Our DUID on port: DUID-UUID (type 4) from its key and /64."""
    seed = ("vionetd %s %s" % (port.key, port.address6.net)).encode()
    return b"\x00\x04" + hashlib.sha256(seed).digest()[:16]


def well_formed(req):
    """What fields() guarantees, checked again by the parent (protobuf's
    fields are wider than DHCPv6's)."""
    return (req.xid < 1 << 24 and len(req.src_mac) == 6 and len(req.src_ip) == 16
            and len(req.client_id) <= DUID_MAX and len(req.server_id) <= DUID_MAX
            and all(len(a) == 16 for a in req.addresses) and req.msg_type in _SERVER_ID)


def decide(port, req):
    """The Dhcp6Reply for req from port's guest, or None."""
    if port.address6 is None or not well_formed(req):
        return None
    ours = server_duid(port)
    if req.server_id and req.server_id != ours:
        return None                              # for another server
    t = req.msg_type
    if t == SOLICIT:
        if not req.ia_na:
            return _reply(port, req, ADVERTISE, status=NO_ADDRS_AVAIL)
        if req.rapid_commit:
            return _lease(port, req, rapid=True)
        return _reply(port, req, ADVERTISE, lease=True)
    if t in (REQUEST, RENEW, REBIND):
        return _lease(port, req) if req.ia_na else _reply(port, req, REPLY,
                                                          status=NO_ADDRS_AVAIL)
    if t == CONFIRM:
        net = port.address6.net
        on = all(ipaddress.IPv6Address(a) in net for a in req.addresses)
        return _reply(port, req, REPLY, status=SUCCESS if on else NOT_ON_LINK, top=True)
    if t in (RELEASE, DECLINE):
        _forget(port, req)
        return _reply(port, req, REPLY, status=SUCCESS, top=True)
    return _reply(port, req, REPLY)              # Information-request


def _lease(port, req, rapid=False):
    a6 = port.address6
    port.lease6 = "%s (%ds)" % (a6.lease, VALID)
    log.info("%s: DHCPv6 lease %s to %s", port.key, a6.lease, req.client_id.hex())
    leases.default().record6(port.key, a6.lease, req.client_id, req.iaid, VALID)
    return _reply(port, req, REPLY, lease=True, rapid=rapid)


def _forget(port, req):
    if req.ia_na and port.address6.lease.packed in req.addresses:
        if req.msg_type == DECLINE:
            log.warning("%s: guest declined %s", port.key, port.address6.lease)
        port.lease6 = None
        leases.default().release6(port.key)


def restore(port):
    """At a port's start: its DHCPv6 lease from the lease file, if one is
    live for the address it has now; sets port.lease6."""
    e = leases.default().get6(port.key)
    if e is None or port.address6 is None or e["address"] != str(port.address6.lease):
        return None
    port.lease6 = "%s (%ds)" % (e["address"], int(e["expires"] - leases.default().clock()))
    return e


def _reply(port, req, mtype, lease=False, status=None, rapid=False, top=False):
    a6 = port.address6
    r = pb.Dhcp6Reply(msg_type=mtype, xid=req.xid, dst_mac=req.src_mac, dst_ip=req.src_ip,
                      src_mac=port.tap_mac or bytes(6), src_ip=frame6.ROUTER,
                      client_id=req.client_id, server_id=server_duid(port),
                      rapid_commit=rapid)
    if lease:
        r.ia_na, r.iaid, r.t1, r.t2 = True, req.iaid, T1, T2
        r.address = a6.lease.packed
        r.preferred_lifetime, r.valid_lifetime = PREFERRED, VALID
    elif status is not None:
        r.has_status, r.status = True, status
        if req.ia_na and not top:
            r.ia_na, r.iaid = True, req.iaid
    r.dns.extend(d.packed for d in (port.conf.dns6 or [a6.host]))
    return r


# ---- rx worker: the reply frame -----------------------------------------------------

def _opt(code, value):
    return struct.pack("!HH", code, len(value)) + value


def build(r):
    """The Ethernet frame of Dhcp6Reply r, UDP checksum complete."""
    opts = _opt(OPT_CLIENTID, r.client_id) + _opt(OPT_SERVERID, r.server_id)
    status = _opt(OPT_STATUS, struct.pack("!H", r.status)) if r.has_status else b""
    if r.ia_na:
        ia = struct.pack("!III", r.iaid, r.t1, r.t2)
        if r.address:
            ia += _opt(OPT_IAADDR, r.address + struct.pack("!II", r.preferred_lifetime,
                                                           r.valid_lifetime))
        opts += _opt(OPT_IA_NA, ia + status)
    else:
        opts += status
    if r.rapid_commit:
        opts += _opt(OPT_RAPID_COMMIT, b"")
    if r.dns:
        opts += _opt(OPT_DNS, b"".join(r.dns))
    msg = bytes([r.msg_type]) + r.xid.to_bytes(3, "big") + opts
    udp = struct.pack("!HHHH", SERVER_PORT, CLIENT_PORT, 8 + len(msg), 0) + msg
    return frame6.frame(r.dst_mac, r.src_mac, r.src_ip, r.dst_ip, frame6.UDP, udp, 6,
                        hop_limit=255)

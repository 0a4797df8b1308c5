"""DHCPv6 for local interfaces (vionetd/dhcp6.py): dhcpcd 9.4.1's Solicit,
Request and Confirm parsed; RFC 8415's rules on hostile messages; the
decisions (Advertise, Reply, Rapid Commit, Confirm, Release,
Information-request, another server's messages); replies byte-compared,
option by option, against dnsmasq 2.90's with the same values, and read
back by scapy (an independent parser); T1/T2 and lifetimes against 21.4."""
import ipaddress
import struct

import pytest
from scapy.layers.dhcp6 import (DHCP6_Advertise, DHCP6_Reply, DHCP6OptDNSServers,
                                DHCP6OptIA_NA, DHCP6OptRapidCommit, DHCP6OptStatusCode)
from scapy.layers.l2 import Ether

from tests.data6 import load
from tests.test_ra import GUEST_MAC, fake_port
from vionetd import dhcp6, frame6, leases

CLIENT_DUID = bytes.fromhex("0001000132a95a69525400123456")
DNSMASQ_DUID = bytes.fromhex("0001000132a95a68fe0000000001")


@pytest.fixture(autouse=True)
def store(tmp_path):
    s = leases.Leases(str(tmp_path / "leases"))
    leases.set_default(s)
    yield s
    leases.set_default(None)


def message(mtype, opts, xid=0x123456):
    msg = bytes([mtype]) + xid.to_bytes(3, "big") + opts
    udp = struct.pack("!HHHH", 546, 547, 8 + len(msg), 0) + msg
    return frame6.frame(frame6.multicast_mac(frame6.ALL_DHCP), GUEST_MAC,
                        frame6.link_local(GUEST_MAC), frame6.ALL_DHCP, frame6.UDP, udp, 6, 1)


def opt(code, value):
    return struct.pack("!HH", code, len(value)) + value


def ia_na(iaid=1, t1=0, t2=0, addr=None):
    sub = opt(5, addr + struct.pack("!II", 0, 0)) if addr else b""
    return opt(3, struct.pack("!III", iaid, t1, t2) + sub)


def request(mtype, *opts, server=None):
    body = opt(1, CLIENT_DUID) + (opt(2, server) if server else b"") + b"".join(opts)
    return dhcp6.fields(message(mtype, body))


# ---- parsing ----------------------------------------------------------------------

def test_fields_of_dhcpcds_solicit():
    req = dhcp6.fields(load("dhcp6_solicit_dhcpcd.hex"))
    assert req.msg_type == dhcp6.SOLICIT and req.xid == 0xAEC0E7
    assert req.client_id == CLIENT_DUID and not req.server_id
    assert req.ia_na and req.iaid == 1 and list(req.oro) == [23, 82, 83]
    assert req.src_ip == ipaddress.IPv6Address("fe80::5054:ff:fe12:3456").packed


def test_fields_of_dhcpcds_request_and_confirm():
    req = dhcp6.fields(load("dhcp6_request_dhcpcd.hex"))
    assert req.msg_type == dhcp6.REQUEST and req.server_id == DNSMASQ_DUID
    assert list(req.addresses) == [ipaddress.IPv6Address("fd12:3456:789a:1::2").packed]
    conf = dhcp6.fields(load("dhcp6_confirm_dhcpcd.hex"))
    assert conf.msg_type == dhcp6.CONFIRM and conf.addresses == req.addresses


@pytest.mark.parametrize("mtype,body", [
    (dhcp6.SOLICIT, opt(1, CLIENT_DUID) + b"\x00\x03\x00\x20"),         # past the end
    (dhcp6.SOLICIT, opt(1, CLIENT_DUID) + b"\x00"),                      # header past the end
    (dhcp6.SOLICIT, opt(3, b"\x00" * 8) + opt(1, CLIENT_DUID)),          # short IA_NA
    (dhcp6.SOLICIT, opt(1, CLIENT_DUID) + ia_na(t1=10, t2=5)),           # T1 > T2
    (dhcp6.SOLICIT, opt(1, CLIENT_DUID) + opt(3, struct.pack("!III", 1, 0, 0)
                                               + opt(5, bytes(20)))),    # short IAADDR
    (dhcp6.SOLICIT, opt(1, CLIENT_DUID) + opt(2, DNSMASQ_DUID)),         # 16.2: no server id
    (dhcp6.SOLICIT, ia_na()),                                            # no client id
    (dhcp6.SOLICIT, opt(1, bytes(131))),                                 # DUID too long
    (dhcp6.SOLICIT, opt(1, b"\x00\x01")),                                # DUID too short
    (dhcp6.SOLICIT, opt(1, CLIENT_DUID) + opt(8, b"\x00")),              # elapsed time size
    (dhcp6.SOLICIT, opt(1, CLIENT_DUID) + opt(14, b"\x00")),             # rapid commit size
    (dhcp6.SOLICIT, opt(1, CLIENT_DUID) + opt(6, b"\x00\x17\x00")),      # odd ORO
    (dhcp6.REQUEST, opt(1, CLIENT_DUID) + ia_na()),                      # 16.4: needs server id
    (dhcp6.INFORMATION_REQUEST, opt(1, CLIENT_DUID) + ia_na()),          # 16.12: no IA
    (dhcp6.ADVERTISE, opt(1, CLIENT_DUID)),                              # a server's message
])
def test_malformed_messages_are_refused(mtype, body):
    assert dhcp6.fields(message(mtype, body)) is None


def test_truncated_and_foreign_frames_are_refused():
    f = load("dhcp6_solicit_dhcpcd.hex")
    for n in range(0, len(f), 7):
        assert dhcp6.fields(f[:n]) is None
    assert dhcp6.fields(load("rs_kernel.hex")) is None


# ---- deciding --------------------------------------------------------------------

def test_solicit_gets_an_advertise_with_the_lease_address(store):
    port = fake_port()
    r = dhcp6.decide(port, request(dhcp6.SOLICIT, ia_na(iaid=7)))
    assert r.msg_type == dhcp6.ADVERTISE and r.iaid == 7
    assert r.address == port.address6.lease.packed and not r.rapid_commit
    assert store.get6("vm1/0") is None                    # an Advertise leases nothing


def test_rapid_commit_solicit_gets_the_reply_and_the_lease(store):
    port = fake_port()
    r = dhcp6.decide(port, request(dhcp6.SOLICIT, ia_na(), opt(14, b"")))
    assert r.msg_type == dhcp6.REPLY and r.rapid_commit
    assert store.get6("vm1/0")["address"] == "fd12:3456:789a:1::2"
    assert port.lease6.startswith("fd12:3456:789a:1::2 (")
    pkt = Ether(dhcp6.build(r))
    assert DHCP6OptRapidCommit in pkt and pkt[DHCP6_Reply].trid == 0x123456


def test_request_renew_rebind_release(store):
    port = fake_port()
    ours = dhcp6.server_duid(port)
    for mtype, server in ((dhcp6.REQUEST, ours), (dhcp6.RENEW, ours), (dhcp6.REBIND, None)):
        r = dhcp6.decide(port, request(mtype, ia_na(), server=server))
        assert r.msg_type == dhcp6.REPLY and r.address == port.address6.lease.packed
    r = dhcp6.decide(port, request(dhcp6.RELEASE, ia_na(addr=port.address6.lease.packed),
                                   server=ours))
    assert r.has_status and r.status == dhcp6.SUCCESS and not r.ia_na
    assert store.get6("vm1/0") is None and port.lease6 is None


def test_another_servers_messages_are_not_answered():
    assert dhcp6.decide(fake_port(), request(dhcp6.REQUEST, ia_na(),
                                             server=DNSMASQ_DUID)) is None


def test_confirm_says_whether_the_addresses_are_on_link():
    port = fake_port()
    on = dhcp6.decide(port, dhcp6.fields(load("dhcp6_confirm_dhcpcd.hex")))
    assert on.status == dhcp6.SUCCESS
    off = dhcp6.decide(port, request(dhcp6.CONFIRM, ia_na(
        addr=ipaddress.IPv6Address("2001:db8::2").packed)))
    assert off.status == dhcp6.NOT_ON_LINK


def test_information_request_gets_the_name_servers_only():
    port = fake_port(dns6=["fd00::53"])
    r = dhcp6.decide(port, request(dhcp6.INFORMATION_REQUEST))
    pkt = Ether(dhcp6.build(r))
    assert DHCP6OptIA_NA not in pkt and pkt[DHCP6OptDNSServers].dnsservers == ["fd00::53"]


def test_solicit_without_ia_na_is_told_no_addresses():
    pkt = Ether(dhcp6.build(dhcp6.decide(fake_port(), request(dhcp6.SOLICIT))))
    assert pkt[DHCP6_Advertise] and pkt[DHCP6OptStatusCode].statuscode == dhcp6.NO_ADDRS_AVAIL


def test_a_request_the_worker_could_not_have_made_is_ignored():
    req = request(dhcp6.SOLICIT, ia_na())
    req.xid = 1 << 24
    assert dhcp6.decide(fake_port(), req) is None


def test_lease_is_restored_after_a_restart(store):
    port = fake_port()
    dhcp6.decide(port, request(dhcp6.SOLICIT, ia_na(), opt(14, b"")))
    again = leases.Leases(store.path)
    again.load()
    leases.set_default(again)
    fresh = fake_port()
    assert dhcp6.restore(fresh)["address"] == "fd12:3456:789a:1::2"
    assert fresh.lease6.startswith("fd12:3456:789a:1::2")


# ---- the reply frame --------------------------------------------------------------

def dnsmasq_options(name):
    pkt = frame6.packet(load(name))
    return pkt, dict(dhcp6.options(pkt.payload[12:]))


def test_reply_options_are_dnsmasqs_byte_for_byte():
    """dnsmasq 2.90's Reply (tests/data/dhcp6_reply_dnsmasq.hex): built
    from the same values, our client id, server id, IA_NA (with its IAADDR)
    and DNS servers options are its bytes; dnsmasq adds a status option."""
    pkt, theirs = dnsmasq_options("dhcp6_reply_dnsmasq.hex")
    req = dhcp6.fields(load("dhcp6_request_dhcpcd.hex"))
    port = fake_port()
    req.server_id = dhcp6.server_duid(port)           # it asked dnsmasq: ask us
    r = dhcp6.decide(port, req)
    r.server_id, r.t1, r.t2 = DNSMASQ_DUID, 43200, 75600
    r.preferred_lifetime = r.valid_lifetime = 86400
    ours_pkt = frame6.packet(dhcp6.build(r))
    ours = dict(dhcp6.options(ours_pkt.payload[12:]))
    for code in (dhcp6.OPT_CLIENTID, dhcp6.OPT_SERVERID, dhcp6.OPT_IA_NA, dhcp6.OPT_DNS):
        assert ours[code] == theirs[code], code
    assert ours_pkt.payload[8:12] == pkt.payload[8:12]          # type and xid
    assert (ours_pkt.src, ours_pkt.dst) == (pkt.src, pkt.dst)
    assert ours_pkt.payload[:4] == pkt.payload[:4]                # ports
    assert frame6.verify(ours_pkt)


def test_lifetimes_follow_rfc_8415():
    # 21.4: T1 <= T2; 7.6 / 21.4 recommend T1 = 0.5 and T2 = 0.8 of the
    # shortest preferred lifetime; 21.6: preferred <= valid
    assert 0 < dhcp6.T1 <= dhcp6.T2 <= dhcp6.PREFERRED <= dhcp6.VALID
    assert dhcp6.T1 == dhcp6.PREFERRED // 2 and dhcp6.T2 == dhcp6.PREFERRED * 4 // 5
    pkt = Ether(dhcp6.build(dhcp6.decide(fake_port(), request(dhcp6.SOLICIT, ia_na()))))
    ia = pkt[DHCP6OptIA_NA]
    assert ia.T1 == dhcp6.T1 and ia.T2 == dhcp6.T2
    assert ia.ianaopts[0].preflft == dhcp6.PREFERRED and ia.ianaopts[0].validlft == dhcp6.VALID

"""vionetd/features.py: the offer, its dependencies, the tap mask, software mode."""
from __future__ import annotations

import pytest
from hypothesis import given, settings, strategies as st

from vionetd import features as F
from vionetd.features import Policy, offer, tap_offloads_for, software_mode

ALL_TUN = F.TUN_F_ALL
NO_USO = F.TUN_F_CSUM | F.TUN_F_TSO4 | F.TUN_F_TSO6 | F.TUN_F_TSO_ECN | F.TUN_F_UFO

HOST = F.mask(F.CSUM, F.HOST_TSO4, F.HOST_TSO6, F.HOST_ECN, F.HOST_USO)
GUEST = F.mask(F.GUEST_CSUM, F.GUEST_TSO4, F.GUEST_TSO6, F.GUEST_ECN,
               F.GUEST_USO4, F.GUEST_USO6)
NEVER = F.mask(F.MQ, F.MAC, F.STATUS, F.CTRL_VQ, F.CTRL_RX,
               F.CTRL_MAC_ADDR, F.CTRL_GUEST_OFFLOADS, F.GUEST_ANNOUNCE,
               F.LOG_ALL, F.RING_PACKED, F.ACCESS_PLATFORM, F.GUEST_UFO,
               F.HOST_UFO)


def pol(tx=None, rx=None, **both):
    tx = dict(tx or {})
    rx = dict(rx or {})
    for k, v in both.items():
        tx.setdefault(k, v)
        rx.setdefault(k, v)
    return Policy(tx=tx, rx=rx)


def test_default_policy_full_tap():
    f = offer(Policy(), ALL_TUN)
    assert f == F.BASE | HOST | GUEST
    assert F.names(f) == [
        "CSUM", "GUEST_CSUM", "MTU", "GUEST_TSO4", "GUEST_TSO6", "GUEST_ECN",
        "HOST_TSO4", "HOST_TSO6", "HOST_ECN", "MRG_RXBUF",
        "RING_INDIRECT_DESC", "RING_EVENT_IDX", "PROTOCOL_FEATURES",
        "VERSION_1", "GUEST_USO4", "GUEST_USO6", "HOST_USO"]


def test_always_offered_and_never_offered():
    for p in (Policy(), pol(csum="off"), pol(csum="software", tso4="off")):
        for tun in (0, ALL_TUN, F.TUN_F_CSUM):
            f = offer(p, tun)
            assert f & F.BASE == F.BASE
            assert f & NEVER == 0


def test_tx_needs_nothing_from_the_tap():
    f = offer(Policy(), 0)
    assert f & HOST == HOST
    assert f & GUEST == 0


def test_rx_passthrough_follows_the_tap():
    f = offer(Policy(), NO_USO)
    assert not F.has(f, F.GUEST_USO4) and not F.has(f, F.GUEST_USO6)
    assert F.has(f, F.GUEST_TSO4) and F.has(f, F.HOST_USO)
    f = offer(Policy(), F.TUN_F_CSUM | F.TUN_F_TSO6)
    assert f & GUEST == F.mask(F.GUEST_CSUM, F.GUEST_TSO6)
    # USO4 without USO6 on the tap: neither
    f = offer(Policy(), F.TUN_F_CSUM | F.TUN_F_USO4)
    assert f & GUEST == F.bit(F.GUEST_CSUM)


def test_rx_csum_software_offers_guest_csum_without_tap_and_no_gso():
    f = offer(pol(rx={"csum": "software"}), 0)
    assert f & GUEST == F.bit(F.GUEST_CSUM)
    f = offer(pol(rx={"csum": "software"}), ALL_TUN)
    assert f & GUEST == F.bit(F.GUEST_CSUM)


def test_rx_segmentation_software_is_off():
    f = offer(pol(rx={"tso4": "software", "uso": "software"}), ALL_TUN)
    assert not F.has(f, F.GUEST_TSO4) and not F.has(f, F.GUEST_USO4)
    assert F.has(f, F.GUEST_TSO6)


def test_dependencies_on_the_offer():
    # tx csum off takes every HOST_ segmentation bit with it
    f = offer(pol(tx={"csum": "off"}), ALL_TUN)
    assert f & HOST == 0
    # ecn without any tso
    f = offer(pol(tso4="off", tso6="off"), ALL_TUN)
    assert not F.has(f, F.HOST_ECN) and not F.has(f, F.GUEST_ECN)
    assert F.has(f, F.HOST_USO) and F.has(f, F.GUEST_USO4)
    # rx csum off
    f = offer(pol(rx={"csum": "off"}), ALL_TUN)
    assert f & GUEST == 0
    # tap with TSO but no CSUM (the kernel would refuse it anyway)
    f = offer(Policy(), F.TUN_F_TSO4 | F.TUN_F_TSO6)
    assert f & GUEST == 0


def test_enforce_dependencies():
    assert F.enforce_dependencies(F.mask(F.HOST_TSO4, F.HOST_ECN)) == 0
    assert F.enforce_dependencies(F.mask(F.GUEST_CSUM, F.GUEST_ECN)) == \
        F.bit(F.GUEST_CSUM)
    assert F.enforce_dependencies(F.mask(F.GUEST_USO4, F.VERSION_1)) == \
        F.bit(F.VERSION_1)
    assert F.dependencies_ok(F.mask(F.CSUM, F.HOST_TSO6, F.HOST_ECN))
    assert not F.dependencies_ok(F.mask(F.HOST_USO))


def test_bad_policy():
    with pytest.raises(ValueError, match="maybe"):
        offer(pol(tx={"csum": "maybe"}), ALL_TUN)
    with pytest.raises(ValueError, match="ufo"):
        offer(pol(rx={"ufo": "off"}), ALL_TUN)


def test_tap_offloads_for():
    full = offer(Policy(), ALL_TUN)
    assert tap_offloads_for(full) == F.TUN_F_CSUM | F.TUN_F_TSO4 | \
        F.TUN_F_TSO6 | F.TUN_F_TSO_ECN | F.TUN_F_USO4 | F.TUN_F_USO6
    # the guest took only some
    g = F.mask(F.GUEST_CSUM, F.GUEST_TSO4)
    assert tap_offloads_for(g) == F.TUN_F_CSUM | F.TUN_F_TSO4
    # USO only together
    g = F.mask(F.GUEST_CSUM, F.GUEST_USO4)
    assert tap_offloads_for(g) == F.TUN_F_CSUM
    # no GUEST_CSUM: nothing (the kernel refuses TSO without CSUM)
    assert tap_offloads_for(F.mask(F.GUEST_TSO4, F.GUEST_TSO6)) == 0
    # ECN without TSO
    assert tap_offloads_for(F.mask(F.GUEST_CSUM, F.GUEST_ECN)) == F.TUN_F_CSUM
    # policy keeps some off
    p = pol(rx={"tso6": "off", "uso": "software"})
    assert tap_offloads_for(full, p) == F.TUN_F_CSUM | F.TUN_F_TSO4 | \
        F.TUN_F_TSO_ECN
    assert tap_offloads_for(full, pol(rx={"csum": "off"})) == 0
    # rx csum software still asks the tap for partial checksums
    assert tap_offloads_for(F.bit(F.GUEST_CSUM),
                            pol(rx={"csum": "software"})) == F.TUN_F_CSUM
    # limited by what the tap accepts
    assert tap_offloads_for(full, tap_offloads=NO_USO) == NO_USO & ~F.TUN_F_UFO
    # host features say nothing about the tap
    assert tap_offloads_for(HOST | F.BASE) == 0


def test_software_mode():
    full = offer(Policy(), ALL_TUN)
    m = software_mode(Policy(), full)
    assert not m.any
    p = pol(tx={"csum": "software", "tso6": "software", "uso": "software"},
            rx={"csum": "software"})
    f = offer(p, ALL_TUN)
    m = software_mode(p, f)
    assert m.tx_csum and m.rx_csum
    assert m.tx_segment == frozenset({"tso6", "uso"})
    # only what the guest took
    m = software_mode(p, F.BASE | F.mask(F.CSUM, F.HOST_TSO4))
    assert m.tx_csum and m.tx_segment == frozenset() and not m.rx_csum


def test_names():
    assert F.names(0) == []
    assert F.names(F.bit(63)) == ["bit63"]
    assert F.protocol_names(F.PROTOCOL_OFFER) == ["MQ", "LOG_SHMFD", "RARP",
                                                   "REPLY_ACK", "NET_MTU"]
    assert F.tun_names(F.TUN_F_CSUM | F.TUN_F_USO6) == ["CSUM", "USO6"]


MODES = st.sampled_from(F.POLICY_VALUES)
SIDE = st.fixed_dictionaries({k: MODES for k in F.POLICY_KEYS})


@settings(max_examples=200, deadline=None)
@given(tx=SIDE, rx=SIDE, tun=st.integers(0, F.TUN_F_ALL),
       guest_mask=st.integers(0, (1 << 64) - 1))
def test_invariants(tx, rx, tun, guest_mask):
    p = Policy(tx=tx, rx=rx)
    f = offer(p, tun)
    assert f & F.BASE == F.BASE and f & NEVER == 0
    assert f & ~F.OFFERABLE == 0
    assert F.dependencies_ok(f)
    # an off policy is never offered
    for key, b in (("csum", F.CSUM), ("tso4", F.HOST_TSO4),
                   ("tso6", F.HOST_TSO6), ("uso", F.HOST_USO)):
        if tx[key] == "off":
            assert not F.has(f, b)
    if rx["csum"] == "off":
        assert f & GUEST == 0
    # RX GSO only where the tap can deliver it
    if F.has(f, F.GUEST_TSO4):
        assert tun & F.TUN_F_TSO4 and rx["csum"] == "passthrough"
    if F.has(f, F.GUEST_USO4):
        assert tun & (F.TUN_F_USO4 | F.TUN_F_USO6) == F.TUN_F_USO4 | F.TUN_F_USO6
    # what the guest acks (any subset of the offer that respects the
    # dependencies) gives a tap mask the tap accepts and the kernel allows
    neg = F.enforce_dependencies(f & guest_mask)
    t = tap_offloads_for(neg, p, tun)
    assert t & ~tun == 0
    assert t == 0 or t & F.TUN_F_CSUM
    if t & F.TUN_F_TSO_ECN:
        assert t & (F.TUN_F_TSO4 | F.TUN_F_TSO6)
    # the kernel never hands the guest a GSO kind it did not take
    if t & F.TUN_F_TSO4:
        assert F.has(neg, F.GUEST_TSO4)
    if t & F.TUN_F_USO4:
        assert F.has(neg, F.GUEST_USO4) and F.has(neg, F.GUEST_USO6)
    m = software_mode(p, neg)
    assert m.tx_segment <= {"tso4", "tso6", "uso"}
    if m.rx_csum:
        assert F.has(neg, F.GUEST_CSUM)

"""Run by vionetctl and the metrics process: what each counter of a VM interface means.

The workers' counters reach vionetctl named "<direction>_<name>" (ctl.py:
rx_frames, tx_refused_hdr_len, ...). Here each gets its Prometheus family,
the label that tells its members apart, and its HELP text; the drops (a
frame refused or lost, with the reason) are told from the rest, for the
drops column of `vionetctl top`.

    family(name) -> (family name without "vionetd_", labels, help)

Invariants: every counter name maps to one family and one set of labels,
so that no two counters of one queue pair make the same series; a name
this module does not know still maps, to a family of its own name.
"""

# Frames dropped, by the counter's name without its direction: the reason label.
DROPS = {
    "disabled_drop": "ring_disabled", "locked_mac_drop": "locked_mac",
    "locked_arp_drop": "locked_arp", "no_hdr": "no_header", "tap_error": "tap_error",
    "divert_too_long": "dhcp_too_long", "sw_gso_fail": "segmentation_failed",
    "sw_csum_fail": "checksum_failed", "too_big": "too_big", "bad_hdr": "bad_header",
    "buf_small": "buffer_small", "abandoned": "abandoned", "inject_nobuf": "inject_no_buffer",
    "inject_dropped": "inject_no_ring", "dhcp_malformed": "dhcp_malformed",
    "v6_router_drop": "ipv6_router_message", "locked_ip6_drop": "locked_ipv6",
    "rs_malformed": "router_solicit_malformed", "dhcp6_malformed": "dhcp6_malformed",
    "rs_limited": "router_solicit_limited", "dhcp6_limited": "dhcp6_limited",
    "v6_unparsed_drop": "ipv6_unparsed", "csum_field_drop": "checksum_field",
}

# HELP of the families of single counters, by name without direction.
HELP = {
    "frames": "Frames moved (tx: taken from the guest, rx: delivered to it)",
    "bytes": "Bytes of the frames moved, without the virtio-net header",
    "passthrough": "Frames written to the tap with their offloads for the kernel",
    "sw_csum": "Checksums completed in software",
    "sw_segmented": "GSO frames cut in software",
    "segments_out": "Frames made by software segmentation",
    "notifications": "Interrupts signalled to the guest (call eventfd)",
    "kicks": "Kicks received from the guest",
    "batches": "Wake-ups that moved at least one frame",
    "tap_full": "Times the tap was full (frame kept and retried)",
    "gso_frames": "GSO frames from the guest",
    "partial_csum_frames": "Partially checksummed frames from the guest",
    "dhcp_diverted": "DHCP requests diverted to vionetd's server",
    "v6_diverted": "Router solicitations and DHCPv6 messages diverted to vionetd",
    "no_buffers": "Times the guest had no receive buffers (the tap waits)",
    "bounced": "Frames read through a private buffer (the guest was short of buffers)",
    "injected": "Frames vionetd put into the guest's ring (DHCP replies)",
    "linger_found": "Frames found without a notification while lingering",
    "notify_deferred": "Completions whose interrupt was deferred",
    "spilled": "Frames longer than expected, their end copied",
    "tap_submits": "io_uring submissions to the tap",
    "tap_uring_off": "Times io_uring was given up for the tap",
    "rate_held": "Times the rate limit held the next frame back",
    "log_marked": "Dirty-log bits set for migration",
    "log_outside": "Dirty-log writes outside the log",
    "base_behind_used": "Ring starts whose base was behind the used index",
}


def split(name):
    """("rx"|"tx"|"", the rest) of a counter name."""
    direction, _, inner = name.partition("_")
    if direction in ("rx", "tx"):
        return direction, inner
    return "", name


def family(name):
    """The Prometheus family of a counter (without "vionetd_" and "_total"),
    the labels that tell it from the family's other members, and its HELP."""
    direction, inner = split(name)
    prefix = direction + "_" if direction else ""
    if inner.startswith("refused_"):
        return (prefix + "refused_frames", {"reason": inner[len("refused_"):]},
                "Frames refused for their virtio-net header, by reason")
    if inner.startswith("ring_"):
        return (prefix + "ring_errors", {"reason": inner[len("ring_"):]},
                "Descriptor chains refused as malformed, by reason")
    if inner in DROPS:
        return (prefix + "dropped_frames", {"reason": DROPS[inner]},
                "Frames dropped by vionetd, by reason")
    return prefix + inner, {}, HELP.get(inner, "vionetd counter %s" % inner)


def is_drop(name):
    """A frame lost or refused (top's drops column)."""
    fam = family(name)[0]
    return fam.endswith(("refused_frames", "ring_errors", "dropped_frames"))

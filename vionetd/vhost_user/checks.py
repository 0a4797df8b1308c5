"""Run by a session (the unprivileged process that speaks vhost-user with one
VM interface's VMM): pure checks of what a frontend sends.

Each function looks only at its arguments (values already unpacked, and
file descriptors through fstat in fdkind.py) and either says yes or no, or
raises ProtocolError with a message that names the request. Nothing here
keeps state or knows the order of requests: the handlers (requests.py) do.
"""
from __future__ import annotations

from typing import Optional, Sequence

from vionetd import fdkind
from vionetd.vhost_user.backend import ProtocolError

U64_MAX = (1 << 64) - 1


def regions_ok(name: str, regions: Sequence) -> None:
    """regions_ok() - check a memory table's regions among themselves
    @name: the request, for messages
    @regions: MemRegion tuples

    Each region is non-empty and wraps none of the guest, user and mmap
    offset spaces; no two overlap in guest or in user address space.
    Raises ProtocolError otherwise.
    """
    for i, r in enumerate(regions):
        if r.size == 0:
            raise ProtocolError(f"{name}: region {i} is empty")
        for what, base in (("guest", r.guest_addr), ("user", r.user_addr),
                           ("mmap offset", r.mmap_offset)):
            if base + r.size - 1 > U64_MAX:
                raise ProtocolError(f"{name}: region {i} wraps the {what} "
                                    "address space")
    for key in ("guest_addr", "user_addr"):
        spans = sorted((getattr(r, key), getattr(r, key) + r.size)
                       for r in regions)
        for (_a0, a1), (b0, _b1) in zip(spans, spans[1:]):
            if b0 < a1:
                raise ProtocolError(f"{name}: regions overlap in "
                                    f"{key.split('_')[0]} address space")


def ring_aligned(desc: int, avail: int, used: int) -> bool:
    """Split ring alignment (virtio 1.2 2.7): descriptor table 16, avail
    ring 2, used ring 4."""
    return not (desc % 16 or avail % 2 or used % 4)


def fd_ok(check, fd: int, *args) -> None:
    """fd_ok() - run an fdkind check, its FdError as a ProtocolError
    @check: fdkind.memory or fdkind.notifier
    @fd: the descriptor
    @args: the check's other arguments (its last one names the fd)
    """
    try:
        check(fd, *args)
    except fdkind.FdError as e:
        raise ProtocolError(str(e))


def nfds(name: str, fds: list[int], want: int) -> None:
    """Raise ProtocolError unless exactly `want` fds came with the message."""
    if len(fds) != want:
        raise ProtocolError(f"{name}: {len(fds)} file descriptor(s), "
                            f"expected {want}")


def translate(regions: Sequence, addr: int,
              length: int) -> Optional[tuple[int, int]]:
    """translate() - find a user address range in a memory table
    @regions: MemRegion tuples
    @addr: first user (frontend virtual) address
    @length: bytes from addr

    Return: (region index, offset in the region) if [addr, addr+length)
    lies inside one region, else None.
    """
    for i, r in enumerate(regions):
        if r.user_addr <= addr and addr + length <= r.user_addr + r.size:
            return i, addr - r.user_addr
    return None


def ring_fits(regions: Sequence, ring) -> bool:
    """ring_fits() - whether a ring's three parts lie in the memory table
    @regions: MemRegion tuples
    @ring: a RingState

    Sizes are the split ring's with EVENT_IDX's extra u16 (virtio 1.2 2.7).
    Return: False also when the ring's size or addresses are not set.
    """
    if ring.num is None or ring.desc is None:
        return False
    return (translate(regions, ring.desc, 16 * ring.num) is not None and
            translate(regions, ring.avail, 6 + 2 * ring.num) is not None and
            translate(regions, ring.used, 6 + 8 * ring.num) is not None)

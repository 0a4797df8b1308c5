"""Run by a session (the unprivileged process that speaks vhost-user with one
VM interface's VMM): the request table, and a handler per request we do.

TABLE has one row per request number we know. A row says the request's
body type (wire.py: it checks the payload's size and what the payload
alone decides), its handler, whether it takes the message's fds, what the
frontend gets back (PAYLOAD: the handler's bytes; ACK: only the REPLY_ACK
answer, if asked for; EMPTY: an empty reply, which SET_LOG_BASE's frontend
waits for), and for a request we do not do, how it is refused:
  SOFT         a failure reply if one was asked for, else logged and ignored;
  UNLESS_REPLY the same with a failure reply, else fatal (ignoring it would
               leave the frontend believing something false);
  FATAL        always fatal: the frontend waits for a reply payload that we
               cannot give (none of them is legal without a feature we
               never offer).
A number without a row is refused SOFT. A refusal is logged once per
connection for each request we know, and once for all those we do not
(a VMM could send every number there is): once_per_connection().

A handler is handler(conn, body, fds): it checks what depends on the
connection's state, calls the Backend through backend.call() (so it is a
generator whenever it calls one: the call may wait), records the new state
and returns the reply payload (PAYLOAD rows) or None. It raises
ProtocolError (fatal), BackendError (from the Backend) or Refused.
Adding a request is a row here and its handler.
"""
from __future__ import annotations

import logging
from typing import Callable, NamedTuple, Optional

from vionetd import fdkind
from vionetd import features as F
from vionetd.control import close_fds
from vionetd.vhost_user import checks
from vionetd.vhost_user import wire as W
from vionetd.vhost_user.backend import BackendError, ProtocolError, call

log = logging.getLogger("vionetd.vhost_user")

ACK, PAYLOAD, EMPTY = "ack", "payload", "empty"               # reply kinds
SOFT, UNLESS_REPLY, FATAL = "soft", "unless-reply", "fatal"   # refusals


class Refused(Exception):
    """A request we refuse: fatal unless a failure reply is sent."""


class Ignored(Refused):
    """A request we refuse harmlessly: a failure reply if one is asked
    for, else logged and ignored."""


class Row(NamedTuple):
    req: int
    handler: Optional[Callable] = None
    body: type = W.Empty
    fds: bool = False               # the handler takes the message's fds
    reply: str = ACK
    refuse: Optional[str] = None    # for a request without a handler

    @property
    def name(self) -> str:
        return W.request_name(self.req)


# ---- shared by handlers ----

def give(fds: list[int], method, *args):
    """give() - call a Backend method that takes the message's fds
    @fds: the message's fds (the method's arguments name those it takes)
    @method, @args: as for backend.call()

    The fds leave the message's list when the method returns; if it raises
    (or waits and the connection closes), they stay, and the driver closes
    them.
    """
    yield from call(method, *args)
    fds.clear()


def owned(conn, name: str) -> None:
    """Raise ProtocolError unless SET_OWNER came."""
    if not conn.owner:
        raise ProtocolError(f"{name} before SET_OWNER")


def ring_of(conn, name: str, index: int) -> int:
    """The ring index of a per-ring request, checked; SET_OWNER must have come."""
    owned(conn, name)
    return conn.rings.index(name, index)


def _offer(conn):
    """Ask the backend for its features; record and return what the VMM
    may ack (features.vmm_may_ack())."""
    conn.offered = F.vmm_may_ack((yield from call(conn.backend.get_features)))
    return conn.offered


# ---- refusals ----

def unsupported(conn, row: Row, msg) -> None:
    """unsupported() - refuse a request we do not do, as its row says
    @conn: the Connection
    @row: the request's row (refuse: SOFT, UNLESS_REPLY or FATAL)
    @msg: the message (its fds are closed)
    """
    close_fds(msg.fds)
    if row.refuse == FATAL:
        raise ProtocolError(f"{row.name} needs a feature we never offered")
    if conn.ack(msg, False):
        how = "refused"
    elif row.refuse == UNLESS_REPLY:
        raise ProtocolError(f"{row.name} not supported and no failure "
                            "reply was asked for")
    else:
        how = "ignored"
    if once_per_connection(conn, row.req):
        log.warning("%s: %s %s (not supported%s)", conn.name, row.name, how,
                    "" if row.req in ROWS else "; further unknown requests are not logged")


def once_per_connection(conn, req: int) -> bool:
    """True the first time conn refuses req, or for a number without a row
    the first time it refuses any such number."""
    key = req if req in ROWS else None
    if key in conn.refusals_logged:
        return False
    conn.refusals_logged.add(key)
    return True


def failed(conn, row: Row, msg, e: Exception) -> None:
    """failed() - a handler refused (Refused) or the Backend did (BackendError)
    @conn: the Connection
    @row: the request's row
    @msg: the message (its fds are closed)
    @e: the refusal

    A failure ack where one can be sent (an ACK row, need_reply with
    REPLY_ACK); without one, Ignored is logged and the rest is fatal.
    """
    close_fds(msg.fds)
    if isinstance(e, BackendError):
        if row.reply != ACK or not conn.ack(msg, False):
            raise ProtocolError(f"{row.name}: backend refused: {e}")
        log.warning("%s: %s: backend refused: %s", conn.name, row.name, e)
    else:
        if not conn.ack(msg, False) and not isinstance(e, Ignored):
            raise ProtocolError(f"{row.name}: refused: {e}")
        log.warning("%s: %s refused: %s", conn.name, row.name, e)


# ---- handlers ----

def get_features(conn, body, fds):
    return W.U64.pack((yield from _offer(conn)))


def set_features(conn, body, fds):
    f = body.value
    offered = conn.offered if conn.offered is not None else (yield from _offer(conn))
    extra = f & ~offered
    if extra:
        raise ProtocolError("SET_FEATURES: features not offered: " +
                            ", ".join(F.names(extra)))
    if not F.has(f, F.VERSION_1):
        raise ProtocolError("SET_FEATURES without VERSION_1: legacy "
                            "(pre-virtio 1.0) devices are not supported")
    if conn.features is not None and (f ^ conn.features) & ~F.bit(F.LOG_ALL) \
            and conn.rings.any_started():
        raise ProtocolError("SET_FEATURES: features other than LOG_ALL "
                            "change while a ring is running")
    yield from call(conn.backend.set_features, f)
    conn.features = f


def set_owner(conn, body, fds):
    if conn.owner:
        log.info("%s: SET_OWNER again", conn.name)
    yield from call(conn.backend.set_owner)
    conn.owner = True


def reset(conn, body, fds):
    """RESET_OWNER, RESET_DEVICE: every ring stops (reported first), then
    the state is forgotten and the backend told."""
    for r in conn.rings:
        r.kicked = False
    yield from conn.report()
    conn.rings.forget()
    conn.features = None
    conn.regions = []
    yield from call(conn.backend.reset)


def set_mem_table(conn, body, fds):
    name, regions = "SET_MEM_TABLE", body.regions
    checks.nfds(name, fds, len(regions))
    owned(conn, name)
    for i, (r, fd) in enumerate(zip(regions, fds)):
        checks.fd_ok(fdkind.memory, fd, r.size, r.mmap_offset, f"{name}: region {i}")
    conn.rings.check_layout(regions)
    old, conn.regions = conn.regions, regions   # the backend may look at it
    try:
        yield from give(fds, conn.backend.set_mem_table, regions, list(fds))
    except BaseException:
        conn.regions = old
        raise


def set_log_base(conn, body, fds):
    name = "SET_LOG_BASE"
    if not F.has(conn.protocol_features, F.PROTOCOL_F_LOG_SHMFD):
        raise ProtocolError(f"{name} without the LOG_SHMFD protocol feature")
    checks.nfds(name, fds, 1)
    checks.fd_ok(fdkind.memory, fds[0], body.size, body.offset, name)
    yield from give(fds, conn.backend.set_log_base, body.size, body.offset, fds[0])


def set_log_fd(conn, body, fds):
    checks.nfds("SET_LOG_FD", fds, 1)
    checks.fd_ok(fdkind.notifier, fds[0], "SET_LOG_FD")
    yield from give(fds, conn.backend.set_log_fd, fds[0])


def set_vring_num(conn, body, fds):
    name, num = "SET_VRING_NUM", body.num
    i = ring_of(conn, name, body.index)
    if not (1 <= num <= W.MAX_RING_SIZE and num & (num - 1) == 0):
        raise ProtocolError(f"{name}: ring {i} size {num} is not "
                            f"a power of 2 in 1..{W.MAX_RING_SIZE}")
    conn.rings.stopped(name, i)
    yield from call(conn.backend.set_vring_num, i, num)
    conn.rings[i].num = num


def set_vring_addr(conn, a, fds):
    """A stopped ring may move; a running one only turns its log on or off."""
    name = "SET_VRING_ADDR"
    i = ring_of(conn, name, a.index)
    r = conn.rings[i]
    if (a.desc, a.used, a.avail) != (r.desc, r.used, r.avail):
        conn.rings.stopped(name, i)
    # Recorded first: a running ring restarts from it in the backend.
    old = r.desc, r.used, r.avail, r.log
    r.desc, r.used, r.avail, r.log = a.desc, a.used, a.avail, a.log
    try:
        yield from call(conn.backend.set_vring_addr, i, a.desc, a.used, a.avail, a.log)
    except BaseException:
        r.desc, r.used, r.avail, r.log = old
        raise


def set_vring_base(conn, body, fds):
    name, base = "SET_VRING_BASE", body.num
    i = ring_of(conn, name, body.index)
    if base > W.MAX_RING_INDEX:
        raise ProtocolError(f"{name}: ring {i} base {base} is not a 16-bit index")
    conn.rings.stopped(name, i)
    yield from call(conn.backend.set_vring_base, i, base)
    conn.rings[i].base = base


def get_vring_base(conn, body, fds):
    """Stops the ring: reported first, then its base asked for."""
    i = ring_of(conn, "GET_VRING_BASE", body.index)
    r = conn.rings[i]
    r.kicked = False            # a new SET_VRING_KICK starts it again
    yield from conn.report()
    base = yield from call(conn.backend.get_vring_base, i)
    if not 0 <= base <= W.MAX_RING_INDEX:
        raise BackendError(f"ring {i}: bad base {base}")
    r.base = base
    return W.STATE.pack(i, base)


def _vring_fd(conn, name: str, body, fds) -> int:
    """The ring of SET_VRING_KICK/CALL/ERR, with one eventfd or none (nofd)."""
    i = ring_of(conn, name, body.index)
    checks.nfds(name, fds, 0 if body.nofd else 1)
    if fds:
        checks.fd_ok(fdkind.notifier, fds[0], f"{name}: ring {i}")
    return i


def set_vring_kick(conn, body, fds):
    """Starts the ring."""
    i = _vring_fd(conn, "SET_VRING_KICK", body, fds)
    if body.nofd:
        raise Refused(f"ring {i}: polling mode (no kick fd) is not supported")
    yield from give(fds, conn.backend.set_vring_kick, i, fds[0])
    conn.rings[i].kicked = True
    conn.rings.check_layout(conn.regions)


def set_vring_call(conn, body, fds):
    i = _vring_fd(conn, "SET_VRING_CALL", body, fds)
    yield from give(fds, conn.backend.set_vring_call, i, fds[0] if fds else None)
    conn.rings[i].call = not body.nofd


def set_vring_err(conn, body, fds):
    i = _vring_fd(conn, "SET_VRING_ERR", body, fds)
    yield from give(fds, conn.backend.set_vring_err, i, fds[0] if fds else None)
    conn.rings[i].err = not body.nofd


def get_protocol_features(conn, body, fds):
    return W.U64.pack(F.PROTOCOL_OFFER)


def set_protocol_features(conn, body, fds):
    extra = body.value & ~F.PROTOCOL_OFFER
    if extra:
        raise ProtocolError("SET_PROTOCOL_FEATURES: not offered: " +
                            ", ".join(F.protocol_names(extra)))
    conn.protocol_features = body.value


def get_queue_num(conn, body, fds):
    conn.asked_queue_num = True
    return W.U64.pack(conn.queue_pairs)


def set_vring_enable(conn, body, fds):
    i = ring_of(conn, "SET_VRING_ENABLE", body.index)
    if body.num > 1:
        raise ProtocolError(f"SET_VRING_ENABLE: ring {i}: value {body.num}")
    yield from call(conn.backend.set_vring_enable, i, bool(body.num))
    conn.rings[i].enabled = bool(body.num)


def send_rarp(conn, body, fds):
    if not F.has(conn.protocol_features, F.PROTOCOL_F_RARP):
        raise Ignored("the RARP protocol feature was not negotiated")
    yield from call(conn.backend.send_rarp, body.mac)


def net_set_mtu(conn, body, fds):
    if not F.has(conn.protocol_features, F.PROTOCOL_F_NET_MTU):
        raise ProtocolError("NET_SET_MTU without the NET_MTU protocol feature")
    yield from call(conn.backend.set_mtu, body.mtu)
    conn.mtu = body.mtu


TABLE = (
    Row(W.GET_FEATURES, get_features, reply=PAYLOAD),
    Row(W.SET_FEATURES, set_features, W.U64Value),
    Row(W.SET_OWNER, set_owner),
    Row(W.RESET_OWNER, reset),
    Row(W.SET_MEM_TABLE, set_mem_table, W.MemTable, fds=True),
    Row(W.SET_LOG_BASE, set_log_base, W.LogArea, fds=True, reply=EMPTY),
    Row(W.SET_LOG_FD, set_log_fd, fds=True),
    Row(W.SET_VRING_NUM, set_vring_num, W.VringState),
    Row(W.SET_VRING_ADDR, set_vring_addr, W.VringAddr),
    Row(W.SET_VRING_BASE, set_vring_base, W.VringState),
    Row(W.GET_VRING_BASE, get_vring_base, W.VringState, reply=PAYLOAD),
    Row(W.SET_VRING_KICK, set_vring_kick, W.VringFile, fds=True),
    Row(W.SET_VRING_CALL, set_vring_call, W.VringFile, fds=True),
    Row(W.SET_VRING_ERR, set_vring_err, W.VringFile, fds=True),
    Row(W.GET_PROTOCOL_FEATURES, get_protocol_features, reply=PAYLOAD),
    Row(W.SET_PROTOCOL_FEATURES, set_protocol_features, W.U64Value),
    Row(W.GET_QUEUE_NUM, get_queue_num, reply=PAYLOAD),
    Row(W.SET_VRING_ENABLE, set_vring_enable, W.VringState),
    Row(W.SEND_RARP, send_rarp, W.Mac),
    Row(W.NET_SET_MTU, net_set_mtu, W.Mtu),
    Row(W.SET_BACKEND_REQ_FD, refuse=SOFT),
    Row(W.IOTLB_MSG, refuse=FATAL),
    Row(W.SET_VRING_ENDIAN, refuse=SOFT),
    Row(W.GET_CONFIG, refuse=FATAL),
    Row(W.SET_CONFIG, refuse=SOFT),
    Row(W.CREATE_CRYPTO_SESSION, refuse=FATAL),
    Row(W.CLOSE_CRYPTO_SESSION, refuse=SOFT),
    Row(W.POSTCOPY_ADVISE, refuse=FATAL),
    Row(W.POSTCOPY_LISTEN, refuse=SOFT),
    Row(W.POSTCOPY_END, refuse=FATAL),
    Row(W.GET_INFLIGHT_FD, refuse=FATAL),
    Row(W.SET_INFLIGHT_FD, refuse=SOFT),
    Row(W.GPU_SET_SOCKET, refuse=SOFT),
    Row(W.RESET_DEVICE, reset),     # harmless, so accepted unoffered
    Row(W.VRING_KICK, refuse=SOFT),
    Row(W.GET_MAX_MEM_SLOTS, refuse=FATAL),
    Row(W.ADD_MEM_REG, refuse=UNLESS_REPLY),
    Row(W.REM_MEM_REG, refuse=UNLESS_REPLY),
    Row(W.SET_STATUS, refuse=SOFT),
    Row(W.GET_STATUS, refuse=FATAL),
    Row(W.GET_SHARED_OBJECT, refuse=FATAL),
    Row(W.SET_DEVICE_STATE_FD, refuse=FATAL),
    Row(W.CHECK_DEVICE_STATE, refuse=FATAL),
)
ROWS = {row.req: row for row in TABLE}


def lookup(req: int) -> Row:
    """The row of a request number; one we do not know is refused SOFT."""
    return ROWS.get(req) or Row(req, refuse=SOFT)

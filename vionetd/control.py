"""Run by every process: the protobuf channels between them, and their dispatch.

Run by every process: the parent (to each session), a session (to the parent
and to each of its workers) and a worker (to its session).

Each channel is one AF_UNIX SOCK_SEQPACKET socketpair. One datagram carries
one protobuf message (proto/vionetd.proto: ToSession/FromSession between the
parent and a session, ToWorker/FromWorker between a session and a worker;
the parent writes a new worker's first two messages before it hands the
channel over) and, as SCM_RIGHTS, the file descriptors that message says it
carries. SEQPACKET keeps message boundaries and delivers the fds with their
message, so neither side ever has to reassemble or guess.

Each endpoint handles what it receives through one Table: a row per message
field, saying which function handles it and whether that function takes the
message's fds. Fds of a message whose handler does not take them are closed
here, before the handler runs.

Invariants:
- a datagram larger than MAX_MESSAGE is a protocol error, not a partial read;
- received fds are always either handed to the caller or closed here;
- a message that does not parse, or that its endpoint's table does not
  know, raises ChannelError; the caller decides (the parent kills and
  replaces a session, a session replaces a worker, a worker exits).
"""
import array
import os
import select
import socket

from vionetd import vionetd_pb2 as pb

MAX_MESSAGE = 64 * 1024   # an Inject frame (<= 64 KiB) plus its envelope
MAX_FDS = 8               # as vhost-user: at most 8 memory regions per table
SO_PASSRIGHTS = getattr(socket, "SO_PASSRIGHTS", 83)   # asm-generic/socket.h

# Ring 2i is queue pair i's RX ring (its rx worker), ring 2i+1 its TX ring.
ROLE_NAME = {pb.ROLE_RX: "rx", pb.ROLE_TX: "tx"}


class ChannelError(Exception):
    pass


def pair():
    """A new channel: (parent end, worker end), both close-on-exec."""
    return socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)


def refuse_fds(sock):
    """Make sock refuse fds (SO_PASSRIGHTS off, Linux 6.16): a peer's
    sendmsg() with SCM_RIGHTS then fails (EPERM), so no fd is ever in
    flight towards sock, and none is released in its reader's context (a
    socket lingering on close, a FUSE file). An older kernel has no such
    option; reading with fds=False (recv) still discards them."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, SO_PASSRIGHTS, 0)
    except OSError:
        pass


def send(sock, msg, fds=()):
    """Send one message with its fds. Blocks: messages are small."""
    data = msg.SerializeToString()
    if len(data) > MAX_MESSAGE:
        raise ChannelError("message of %d bytes exceeds %d" % (len(data), MAX_MESSAGE))
    if not fds:
        sock.send(data)     # sendto(2): workers are not allowed sendmsg(2)
        return
    sock.sendmsg([data], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))])


def fds_of(ancdata):
    """The fds of a recvmsg()'s SCM_RIGHTS control messages."""
    fds = []
    for level, kind, data in ancdata:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            arr = array.array("i")
            arr.frombytes(data[: len(data) - (len(data) % arr.itemsize)])
            fds.extend(arr)
    return fds


def recv(sock, msg_type, wait=True, fds=True):
    """Receive one message of msg_type (a protobuf class) and its fds.

    Returns (message, [fds]), or (None, []) when the peer has closed. With
    wait=False an empty channel raises BlockingIOError instead of blocking,
    whatever the socket's mode. With fds=False (what an untrusted peer
    sends: the parent reading a session, a session reading a worker) the
    datagram is read without a control buffer, so the kernel discards any
    fds it carried (no fd is ever installed here, so none is closed here:
    a FUSE file's close could block); it then raises ChannelError, as it
    does for a message that is not the canonical encoding of msg_type
    (unknown fields, a field twice: what our own senders never write).
    """
    flag = 0 if wait else socket.MSG_DONTWAIT
    if not fds:
        data, _, flags, _ = sock.recvmsg(MAX_MESSAGE + 1, 0, flag)
        if not data and not flags & socket.MSG_CTRUNC:
            return _empty(sock), []
        if flags & (socket.MSG_TRUNC | socket.MSG_CTRUNC) or len(data) > MAX_MESSAGE:
            raise ChannelError("message with fds, or truncated")
        msg = parse(msg_type, data)
        msg.DiscardUnknownFields()          # (serializing would keep them)
        if msg.SerializeToString() != data:
            raise ChannelError("message with unknown or repeated fields")
        return msg, []
    data, anc, flags, _ = sock.recvmsg(MAX_MESSAGE + 1, socket.CMSG_SPACE(MAX_FDS * 4), flag)
    got = fds_of(anc)
    try:
        if not data and not got:
            return _empty(sock), []
        if flags & (socket.MSG_TRUNC | socket.MSG_CTRUNC) or len(data) > MAX_MESSAGE:
            raise ChannelError("truncated message or fds")
        return parse(msg_type, data), got
    except ChannelError:
        close_fds(got)
        raise


def parse(msg_type, data):
    msg = msg_type()
    try:
        msg.ParseFromString(data)
    except Exception as e:  # protobuf raises its own DecodeError
        raise ChannelError("message does not parse: %s" % e)
    return msg


def _empty(sock):
    """A read of 0 bytes: None if the peer has closed (POLLHUP), else it
    sent an empty datagram, which no endpoint ever sends: ChannelError."""
    p = select.poll()
    p.register(sock.fileno(), select.POLLIN)
    if any(ev & select.POLLHUP for _, ev in p.poll(0)):
        return None
    raise ChannelError("empty datagram")


def receive(sock, msg_type, limit, fds=True):
    """The messages already waiting on sock, at most limit, without blocking:
    (message, fds) pairs as recv() returns them (fds: as recv()'s); (None,
    []) when the peer has closed, and nothing after it. Stops early if a
    handler closed sock meanwhile. Raises what recv() raises (OSError,
    ChannelError)."""
    for _ in range(limit):
        if sock.fileno() < 0:
            return
        try:
            msg, got = recv(sock, msg_type, wait=False, fds=fds)
        except BlockingIOError:
            return
        yield msg, got
        if msg is None:
            return


def close_fds(fds):
    """Close every fd of fds (a list is emptied), ignoring errors."""
    for fd in fds:
        try:
            os.close(fd)
        except OSError:
            pass
    if isinstance(fds, list):
        fds.clear()


class Row:
    """One message field's handler: fn(body) or, with takes_fds, fn(body,
    fds), which then owns the fds (closes what it does not keep)."""
    __slots__ = ("fn", "takes_fds")

    def __init__(self, fn, takes_fds=False):
        self.fn = fn
        self.takes_fds = takes_fds


def with_fds(fn):
    """A row whose handler takes the message's fds."""
    return Row(fn, takes_fds=True)


class Table:
    """One channel endpoint's dispatch: field name -> handler (a function of
    the message's body, or a Row)."""

    def __init__(self, rows):
        self.rows = {k: v if isinstance(v, Row) else Row(v) for k, v in rows.items()}

    def dispatch(self, msg, fds, *context):
        """Call the handler of msg's field, fn(*context, body[, fds]), and
        return what it returns. A field without a row closes the fds and
        raises ChannelError."""
        kind = msg.WhichOneof("msg")
        row = self.rows.get(kind)
        if row is None:
            close_fds(fds)
            raise ChannelError("unexpected message %r" % kind)
        body = getattr(msg, kind)
        if row.takes_fds:
            return row.fn(*context, body, fds)
        close_fds(fds)
        return row.fn(*context, body)

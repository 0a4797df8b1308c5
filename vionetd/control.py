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
import socket

from vionetd import vionetd_pb2 as pb

MAX_MESSAGE = 64 * 1024   # an Inject frame (<= 64 KiB) plus its envelope
MAX_FDS = 8               # as vhost-user: at most 8 memory regions per table

# Ring 2i is queue pair i's RX ring (its rx worker), ring 2i+1 its TX ring.
ROLE_NAME = {pb.ROLE_RX: "rx", pb.ROLE_TX: "tx"}


class ChannelError(Exception):
    pass


def pair():
    """A new channel: (parent end, worker end), both close-on-exec."""
    return socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)


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


def recv(sock, msg_type, wait=True):
    """Receive one message of msg_type (a protobuf class) and its fds.

    Returns (message, [fds]), or (None, []) when the peer has closed. With
    wait=False an empty channel raises BlockingIOError instead of blocking,
    whatever the socket's mode.
    """
    data, anc, flags, _ = sock.recvmsg(MAX_MESSAGE + 1, socket.CMSG_SPACE(MAX_FDS * 4),
                                       0 if wait else socket.MSG_DONTWAIT)
    fds = fds_of(anc)
    try:
        if not data and not fds:
            return None, []
        if flags & (socket.MSG_TRUNC | socket.MSG_CTRUNC) or len(data) > MAX_MESSAGE:
            raise ChannelError("truncated message or fds")
        msg = msg_type()
        try:
            msg.ParseFromString(data)
        except Exception as e:  # protobuf raises its own DecodeError
            raise ChannelError("message does not parse: %s" % e)
        return msg, fds
    except ChannelError:
        close_fds(fds)
        raise


def receive(sock, msg_type, limit):
    """The messages already waiting on sock, at most limit, without blocking:
    (message, fds) pairs as recv() returns them; (None, []) when the peer
    has closed, and nothing after it. Stops early if a handler closed sock
    meanwhile. Raises what recv() raises (OSError, ChannelError)."""
    for _ in range(limit):
        if sock.fileno() < 0:
            return
        try:
            msg, fds = recv(sock, msg_type, wait=False)
        except BlockingIOError:
            return
        yield msg, fds
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

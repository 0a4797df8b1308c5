"""The control channel: protobuf messages and file descriptors over a socketpair.

Between the parent and each worker there is one AF_UNIX SOCK_SEQPACKET
socketpair. One datagram carries one protobuf message (ToWorker or FromWorker,
proto/vionetd.proto) and, as SCM_RIGHTS, the file descriptors that message
says it carries. SEQPACKET keeps message boundaries and delivers the fds with
their message, so neither side ever has to reassemble or guess.

Invariants:
- a datagram larger than MAX_MESSAGE is a protocol error, not a partial read;
- received fds are always either handed to the caller or closed here;
- a message that does not parse raises ChannelError; the caller decides
  (the parent kills and replaces the worker; a worker exits).
"""
import array
import os
import socket

from vionetd import vionetd_pb2 as pb

MAX_MESSAGE = 64 * 1024   # an Inject frame (<= 64 KiB) plus its envelope
MAX_FDS = 8               # as vhost-user: at most 8 memory regions per table


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


def _take_fds(ancdata):
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
    fds = _take_fds(anc)
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


def close_fds(fds):
    for fd in fds:
        try:
            os.close(fd)
        except OSError:
            pass


def to_worker(**kw):
    """ToWorker(name=submessage) in one call: to_worker(ring_stop=pb.RingStop())."""
    return pb.ToWorker(**kw)


def from_worker(**kw):
    return pb.FromWorker(**kw)

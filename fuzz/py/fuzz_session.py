#!/usr/bin/env python3
"""atheris target: what the parent does with a message from a session
(vionetd/session_channel.py SessionChannel.handle, after control.recv).

A session is unprivileged and reads everything a VMM sends; a compromised
one can send the parent any FromSession. Input: byte 0 picks the interface
(bit 0: "a", two queue pairs, or "b", local), the rest is one datagram,
parsed as FromSession by control.recv over a SOCK_SEQPACKET pair, then
handed to that interface's SessionChannel, whose privileged actions are
recorded instead of done (tap ioctls, links, forks, connects).
Contract: handle returns None or the reason to kill the session; it never
raises; features outside what a VMM may ack (features.vmm_may_ack: the
offer, PROTOCOL_FEATURES and LOG_ALL) and unknown roles or queue pairs are
refused; nothing is done for a refused message; a state accepted is one of
session_channel.STATES.
"""
import socket
from types import SimpleNamespace

import atheris
import harness

with atheris.instrument_imports():
    from vionetd import config, control, features, iface, links, session_channel, tap
    from vionetd import vionetd_pb2 as pb

CONF = config.parse('vm "a" { interface { socket "/run/a.sock"\n queues 2 } }\n'
                    'vm "b" { local interface { socket "/run/b.sock" } }')
DONE = []


def interface(vm):
    p = iface.Interface(SimpleNamespace(loop=SimpleNamespace(call_later=lambda d, f: None),
                                        ports={}, watch=lambda *a: None,
                                        unwatch=lambda *a: None),
                        CONF.vms[vm].interfaces[0], CONF)
    p.offered = features.offer(p.iface.offload, 0x7f, p.queue_pairs)
    p.tap_fds, p.tap_name, p.tap_mac = [-1], "vtap", b"\xfe\0\0\0\0\1"
    p.channel = session_channel.SessionChannel(p, None)
    p.channel.send = lambda fds=(), **kw: DONE.append(("send", kw))
    p.channel.dial_vmm = lambda: DONE.append(("dial",))
    p.children.spawn_worker = lambda role, qp: DONE.append(("spawn", role, qp))
    return p


IFACES = (interface("a"), interface("b"))
tap.set_offload = lambda fd, mask: DONE.append(("offload", mask))
links.set_mtu = lambda name, mtu: DONE.append(("mtu", mtu))
PARENT, SESSION = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)


def test_one_input(data: bytes) -> None:
    if not data:
        return
    p = IFACES[data[0] & 1]
    SESSION.send(data[1:])
    try:
        msg, fds = control.recv(PARENT, pb.FromSession)
    except control.ChannelError:
        return
    if msg is None:
        return
    DONE.clear()
    why = p.channel.handle(msg, fds)
    assert why is None or isinstance(why, str), why
    kind = msg.WhichOneof("msg")
    allowed = features.vmm_may_ack(p.offered)
    if kind is None or (kind == "features" and msg.features & ~allowed):
        assert why and not DONE, (why, DONE)
    if kind == "spawn" and (msg.spawn.role not in control.ROLE_NAME or
                            msg.spawn.queue_pair >= p.queue_pairs):
        assert why and not DONE, (why, DONE)
    if kind == "state" and why is None:
        assert p.session.state in session_channel.STATES
        assert not p.session.vmm_features & ~allowed


if __name__ == "__main__":
    harness.run(test_one_input)

"""Run by a session: the unprivileged process that serves one VM interface's VMM.

The parent (children.py) forks one session per VM interface and hands it the
interface's listening socket (none in client mode) and a channel to itself.
The session confines itself (main.py) and from then on speaks vhost-user
with the VMM (vhost_user.Connection; device.py is its Backend), supervises
the interface's rx and tx workers (workers.py: the parent forks them when
asked and hands over their channels) and relays what the parent must know as
small protobuf (parent_link.py; proto/vionetd.proto, FromSession).

Nothing a VMM or a worker does can block it: the VMM's socket is
non-blocking and paced (vmm_link.py), its peer's identity checked first
(vmm_identity.py), an answer it waits for is a Reply
with a deadline, and every restart waits on a timer. What goes wrong here
costs this VM alone: the parent replaces a session that dies.
"""
from vionetd.session.main import SYSCALLS, main
from vionetd.session.session import Session

__all__ = ["SYSCALLS", "Session", "main"]

"""Run by a session (the unprivileged process that speaks vhost-user with one
VM interface's VMM): what a Connection asks of the integrator, and how it
may be made to wait.

The Backend is the narrow interface between the protocol (this package) and
the device (the session: its workers, its tap, its parent). A Connection
calls a Backend method only with a request that passed every check of its
own; the Backend decides what is not the protocol's to decide (which
features to offer, whether a ring can start, whether an MTU suits the tap).

File descriptors. A method that takes fds owns them once it returns
normally; if it raises, the Connection closes them. A fd-taking method that
waits (below) does all its waiting BEFORE it takes the fds: until its final
return they are the Connection's, which closes them if the method raises or
the connection is closed while the method is suspended.

Refusing. A method raises BackendError to refuse: the frontend gets a
failure reply if it asked for one (need_reply with REPLY_ACK); otherwise the
refusal is fatal (the Connection raises ProtocolError), since the frontend
would go on believing it worked. A request answered by a reply of its own
(GET_FEATURES, GET_VRING_BASE, SET_LOG_BASE's empty one) cannot be answered
"failed": there a BackendError is always fatal.

Waiting. Any method may be a generator function. It yields
vionetd.eventloop.Reply objects; each yield gives back the Reply's value
(None when no answer will come: the method decides what that means, e.g.
raises BackendError). Its final `return` value is the method's result; a
plain method's result is used as it is. A Reply already done when yielded
gives its value back at once. One that is not suspends the whole message:
the Connection sets `waiting` and reads nothing more (the caller stops
watching its socket); when the Reply is set, the message goes on right
there, inside whatever set it: the rest of the handler, the reply or ack,
the readiness report. Then `waiting` is cleared and the Connection's
resumed(error) is called: error None, or the ProtocolError that ended the
message (the caller drops the connection). The caller watches the socket
again; the Connection does not read on by itself.
ring_ready_changed(i, False) may wait too (a worker stopping its ring);
close() calls it for each running ring but does not wait for its Reply.
call() is how the Connection calls every Backend method, call_nowait() is
how close() calls ring_ready_changed(), and Steps drives a message's
handling.
"""
from __future__ import annotations

import inspect
import os
from typing import TYPE_CHECKING, Callable, Optional

from vionetd.eventloop import Reply

if TYPE_CHECKING:
    from vionetd.vhost_user.wire import MemRegion


class ProtocolError(Exception):
    """The frontend broke the protocol: close this connection."""


class BackendError(Exception):
    """The Backend refuses a request (reply failure, or close if it cannot)."""


def call(method, *args):
    """call() - call a Backend method that may wait (a generator to `yield from`)
    @method: the bound Backend method
    @args: its arguments

    Return: the method's result: what a plain method returns, or the final
    return value of a generator method, whose yielded Replies pass through
    to the Connection's driver (which sends their values back).
    """
    result = method(*args)
    if inspect.isgenerator(result):
        result = yield from result
    return result


def call_nowait(method, *args) -> None:
    """call_nowait() - call a Backend method, not waiting for what it waits for
    @method: the bound Backend method
    @args: its arguments

    A generator method runs until it yields a Reply that is not done (or
    ends); it is then closed (GeneratorExit at that yield). Its result is
    dropped. BackendError escapes to the caller.
    """
    gen = method(*args)
    if not inspect.isgenerator(gen):
        return
    value = None
    try:
        while True:
            reply = gen.send(value)
            if not reply.done:
                return
            value = reply.value
    except StopIteration:
        return
    finally:
        gen.close()


class Steps:
    """Runs one message's handling at a time: a generator that yields the
    Replies its Backend calls wait for (see the module documentation)."""

    def __init__(self, finished: Callable[[Optional[Exception]], None]):
        self._finished = finished   # (error or None) when one that waited ends
        self._pending = None        # the suspended handling
        self.waiting = False        # from its suspension until it ends
        self.busy = False           # inside run()

    def run(self, gen, value=None) -> bool:
        """run() - drive a handling until it ends or must wait
        @gen: the handling, a generator
        @value: what to send into it (the value of the Reply it waited for)

        Return: True if it ended; False if it yielded a Reply not yet done:
        then `waiting` is set and the Reply's then() resumes it. What gen
        raises escapes.
        """
        self.busy = True
        try:
            while True:
                reply = gen.send(value)
                if not isinstance(reply, Reply):
                    gen.close()
                    raise TypeError(f"a Backend method yielded {reply!r}, not a Reply")
                if not reply.done:
                    break
                value = reply.value
        except StopIteration:
            return True
        finally:
            self.busy = False
        self._pending, self.waiting = gen, True
        reply.then(lambda v: self._resume(gen, v))
        return False

    def _resume(self, gen, value) -> None:
        """The Reply gen waits for is set: run it on, tell `finished`."""
        if self._pending is not gen:
            return                  # abandoned meanwhile
        self._pending = None
        try:
            if not self.run(gen, value):
                return              # waits again
            error = None
        except Exception as e:
            error = e
        self.waiting = False
        self._finished(error)

    def abandon(self) -> None:
        """Close a suspended handling: GeneratorExit where it waits."""
        gen, self._pending, self.waiting = self._pending, None, False
        if gen is not None:
            gen.close()


class Backend:
    """What a Connection calls; the integrator implements it.

    Every method may be a generator that yields Replies (see the module
    documentation). Defaults: the optional hooks do nothing (and
    set_log_fd and set_vring_err close the fd they are given).
    """

    def get_features(self) -> int:
        """The virtio feature bits to offer (features.offer())."""
        raise NotImplementedError

    def set_features(self, features: int) -> None:
        """The features the guest acked (inside features.vmm_may_ack() of
        the offer, checked)."""
        raise NotImplementedError

    def set_owner(self) -> None:
        pass

    def reset(self) -> None:
        """RESET_OWNER / RESET_DEVICE: rings were reported not ready already;
        forget features, memory table and ring fds."""

    def set_mem_table(self, regions: list[MemRegion], fds: list[int]) -> None:
        """A new memory table (validated), one fd per region, same order.
        May come while rings are ready (memory hotplug)."""
        raise NotImplementedError

    def set_vring_num(self, index: int, num: int) -> None:
        pass

    def set_vring_addr(self, index: int, desc: int, used: int, avail: int,
                       log: Optional[int]) -> None:
        """User (frontend virtual) addresses; Connection.user_to_guest()
        translates. log: the used ring's guest-physical address when its
        stores are to be logged (VHOST_VRING_F_LOG), else None. May come
        for a running ring with only log changed (migration); the
        Connection's ring already holds the new addresses."""

    def set_log_base(self, size: int, offset: int, fd: int) -> None:
        """The dirty log: size bytes of fd from offset (checked to exist)."""
        raise BackendError("dirty logging is not supported")

    def set_log_fd(self, fd: int) -> None:
        """An eventfd to signal when pages were marked in the log."""
        os.close(fd)

    def send_rarp(self, mac: bytes) -> None:
        """SEND_RARP: announce mac on the network (the guest moved here)."""

    def set_vring_base(self, index: int, base: int) -> None:
        pass

    def get_vring_base(self, index: int) -> int:
        """The ring is stopped (ring_ready_changed(index, False) came first if
        it was running): return the next avail index to resume from."""
        raise NotImplementedError

    def set_vring_kick(self, index: int, fd: int) -> None:
        """The kick eventfd (never None: polling mode is refused). Replaces
        any previous one, which the backend closes."""
        raise NotImplementedError

    def set_vring_call(self, index: int, fd: Optional[int]) -> None:
        """The call eventfd, or None: do not notify. May change at any time,
        also while the ring runs. Replaces any previous one."""
        raise NotImplementedError

    def set_vring_err(self, index: int, fd: Optional[int]) -> None:
        if fd is not None:
            os.close(fd)

    def set_vring_enable(self, index: int, enabled: bool) -> None:
        pass

    def ring_ready_changed(self, index: int, ready: bool) -> None:
        """Start (ready) or stop (not ready) moving frames on this ring.
        Connection.running(index) already says `ready` when this is
        called. A stop may wait; one that raises, or is still waiting when
        the connection closes, is not waited for by close()."""

    def set_mtu(self, mtu: int) -> None:
        """NET_SET_MTU: the MTU the VMM put in the guest's config space
        (QEMU's host_mtu). Accept it, or raise BackendError to refuse."""
        raise BackendError("setting the MTU is not supported")

    def disconnected(self) -> None:
        """The connection is closed (rings were reported not ready first)."""

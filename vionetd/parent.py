"""Run by the parent (root): configuration, interfaces, signals and the event loop.

The parent runs as root and keeps only what needs privilege or the whole
picture: the configuration and its reloads, each VM interface's tap, links,
bridge, address and listening socket (iface.py), which sessions and
workers to fork (children.py; its zygote forks them, zygote_link.py),
vionetctl (ctl.py) and DHCP leases. It never reads a
byte a VMM or a guest wrote: the vhost-user protocol is spoken by each
interface's unprivileged session (session/), which sends the parent small
protobuf (session_channel.py).

    parent (root)
      zygote          exec'd at start (root, four capabilities, seccomp)
        vhost VM/N    one session per VM interface (unprivileged, seccomp)
        rx VM/N       its workers, forked on the session's request, their
        tx VM/N       channels handed to the session

One thread, one event loop (eventloop.py), nothing in it that waits for a
child or a peer: messages from sessions are read non-blocking; a vionetctl
answer that needs counters, or a reload's restarts, comes when they are
there (ctl.py); a killed process is forgotten when the zygote says it has
exited, and an interface restarted under the tap name it held starts then
(exiting.py). With no timer due, the loop sleeps until an fd or a signal
wakes it. Stopping, with every interface stopped, the loop runs on until
the killed processes are reaped (EXIT_WAIT at most), so that no tap
outlives vionetd.

Signals arrive through a self-pipe (signal.set_wakeup_fd) and are handled in
the loop, never inside a signal handler: SIGHUP reloads, SIGTERM/SIGINT stop,
SIGCHLD reaps the zygote if it died (zygote_link.py starts a new one).
"""
import dataclasses
import errno
import os
import signal
import socket
import time

import setproctitle

from vionetd import config, metrics_link, vmmsocket
from vionetd.eventloop import Loop, Reply
from vionetd.exiting import EXIT_WAIT, Exiting
from vionetd.iface import Interface
from vionetd.log import log
from vionetd.uids import Identities
from vionetd.zygote_link import Zygote

REAP_PER_TURN = 256       # children reaped per SIGCHLD turn: signals stay served


class Parent:
    def __init__(self, path, conf, pidfile=None):
        self.path = path
        self.conf = conf
        self.pidfile = pidfile
        self.loop = Loop()
        self.ports = {}          # config.Interface.key -> iface.Interface
        self.exiting = Exiting(self.loop)   # what stopped ports killed, not reaped yet
        self.ids = Identities()  # the uid and gid of each VM's processes
        self.running = True
        self.ctl = None
        self.watch, self.unwatch = self.loop.watch, self.loop.unwatch
        self.zygote = Zygote(self)          # forks sessions and workers (zygote.py)
        self.metrics = None      # metrics_link.MetricsLink with "metrics listen"

    # ---- the loop -------------------------------------------------------

    def run(self):
        setproctitle.setproctitle("vionetd: parent")
        try:
            self._signals()
            self.zygote.start()
            if self.pidfile:
                with open(self.pidfile, "w") as f:
                    f.write("%d\n" % os.getpid())
            from vionetd.ctl import CtlServer
            try:
                self.ctl = CtlServer(self, self.conf.socket)
            except OSError as e:
                log.error("control socket %s: %s", self.conf.socket, e.strerror)
                return 1
            self.watch(self.ctl.sock, self.ctl.accept)
            err, self.metrics = metrics_link.follow(self, None, self.conf)
            if err:
                log.error("%s", err)
                return 1
            self.apply(self.conf)
            log.info("started, %d interface(s)", len(self.ports))
            while self.running:
                self.loop.run_once()
        finally:
            self.shutdown()
        return 0

    def _signals(self):
        self._sig_r, self._sig_w = socket.socketpair()
        self._sig_r.setblocking(False)
        self._sig_w.setblocking(False)
        signal.set_wakeup_fd(self._sig_w.fileno(), warn_on_full_buffer=False)
        for sig in (signal.SIGHUP, signal.SIGTERM, signal.SIGINT, signal.SIGCHLD):
            signal.signal(sig, lambda *_: None)
        signal.signal(signal.SIGPIPE, signal.SIG_IGN)
        self.watch(self._sig_r, self._on_signal)

    def _on_signal(self):
        try:
            data = self._sig_r.recv(64)
        except BlockingIOError:
            return
        for signum in data:
            if signum == signal.SIGHUP and self.running:   # (not while stopping)
                self.reload()
            elif signum in (signal.SIGTERM, signal.SIGINT):
                log.info("terminating on signal %d", signum)
                self.running = False
            elif signum == signal.SIGCHLD:
                self.reap()

    def reap(self):
        """Reap the parent's children (the zygote: zygote_link.py; the metrics
        process), at most REAP_PER_TURN a turn: SIGTERM is never starved."""
        for _ in range(REAP_PER_TURN):
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            if pid == self.zygote.pid:
                self.zygote.died(status)
            else:
                self.child_exited(pid, status)
        os.write(self._sig_w.fileno(), bytes([signal.SIGCHLD]))   # more next turn

    def child_exited(self, pid, status):
        """pid exited (a session or worker: the zygote says so; metrics: reap):
        a session is replaced on a timer, a start for its tap name goes on."""
        if self.exiting.reaped(pid) or (self.metrics and self.metrics.child_died(pid)):
            return
        for port in list(self.ports.values()):
            if port.children.child_died(pid, status):
                return

    # ---- configuration --------------------------------------------------

    def apply(self, conf):
        """Make the running ports match conf: start new and changed ones,
        stop removed and changed ones, leave unchanged ones alone (their
        session, workers, tap and VMM connection stay: the guest sees nothing).
        Returns a Reply of the errors of the ports that could not start ([]
        if none), set once each port started here has started or failed: a
        changed one may wait for its old processes to exit (exiting.py)."""
        wanted = wanted_interfaces(conf)
        for key in list(self.ports):
            self._keep_or_stop(self.ports[key], wanted.get(key), conf)
        self.ids.keep(conf, {iface.vm for iface in wanted.values()})
        self.conf = conf                    # workers forked from now on see it
        return all_errors([self._start(Interface(self, iface, conf))
                           for key, iface in wanted.items() if key not in self.ports])

    def _keep_or_stop(self, port, iface, conf):
        """Keep port if its block under conf (iface; None: it is gone) is the
        same but for what changes in place (in_place_changes()); else stop it."""
        changes = None if iface is None else in_place_changes(port, iface, conf)
        if changes is None:
            log.info("%s: stopping (%s)", port.key, "removed" if iface is None else "changed")
            port.stop()
            del self.ports[port.key]
            return
        port.change_in_place(iface, conf, changes)

    def _start(self, port):
        """Start port, now or once its tap name is free; a Reply of its
        error, None once it has started. One that cannot start is dropped
        (the next reload tries it again)."""
        self.ports[port.key] = port

        def failed(err):
            if err and self.ports.get(port.key) is port:
                del self.ports[port.key]
        port.started.then(failed)
        port.start()
        return port.started

    def reload(self):
        """SIGHUP or vionetctl reload. A file with an error changes nothing.
        Returns a Reply for vionetctl: None, or the error; set once the ports
        the reload starts have started or failed."""
        done = Reply()
        try:
            conf = config.load(self.path)
        except (config.ConfigError, OSError) as e:
            log.error("reload refused, configuration unchanged: %s", e)
            done.set(str(e))
            return done
        err = self._control_socket(conf)
        if not err:     # the metrics process as conf says; an error refuses the reload
            err, self.metrics = metrics_link.follow(self, self.metrics, conf)
        if err:
            log.error("reload refused, configuration unchanged: %s", err)
            done.set(err)
            return done
        log.info("reloading %s", self.path)
        self.apply(conf).then(lambda errors: done.set(
            "configuration applied, but " + "; ".join(errors) if errors else None))
        return done

    def _control_socket(self, conf):
        """Move the control socket to conf's path and group, before anything
        else changes: a path that cannot be bound refuses the reload."""
        if self.ctl is None:
            return None
        from vionetd.ctl import CtlServer
        try:
            if conf.socket != self.ctl.path:
                new = CtlServer(self, conf.socket, conf.user)
                self.ctl.close()    # the request being answered keeps its connection
                self.ctl = new
                self.watch(new.sock, new.accept)
            elif conf.user != self.conf.user:
                self.ctl.set_group(conf.user)
        except OSError as e:
            return "control socket %s: %s" % (conf.socket, e.strerror or e)
        return None

    def shutdown(self):
        """Stop every port and the metrics process, remove the control
        socket and the pid file. The processes killed are reaped as SIGCHLD
        reports them, for EXIT_WAIT at most: once vionetd has exited, their
        taps are gone."""
        self.running = False
        for port in list(self.ports.values()):
            port.stop()
        self.ports.clear()
        if self.metrics is not None:
            self.metrics.stop()
        if self.ctl:
            self.ctl.close()
        deadline = time.monotonic() + EXIT_WAIT
        while self.exiting.holders and time.monotonic() < deadline:
            self.loop.run_once(deadline - time.monotonic())
        self.zygote.close()
        if self.pidfile:
            try:
                os.unlink(self.pidfile)
            except OSError as e:
                if e.errno != errno.ENOENT:
                    raise
        log.info("stopped")


def wanted_interfaces(conf):
    """The interfaces conf runs, {key: config.Interface}: disabled VMs left out."""
    return {iface.key: iface for vm in conf.vms.values() if not vm.disabled
            for iface in vm.interfaces}


def all_errors(replies):
    """A Reply of the errors (the values that are not None) of replies, set
    once every one of them is."""
    done, errors, left = Reply(), [], [len(replies)]

    def one(err):
        if err:
            errors.append(err)
        left[0] -= 1
        if not left[0]:
            done.set(errors)
    if not replies:
        done.set(errors)
    for r in replies:
        r.then(one)
    return done


def unchanged(port, iface, conf):
    """True if port would be the same under conf: its own block, the
    sessions' and workers' uid, gid and chroot, who its VMM must be, its
    switch's bridge, and for a local interface the prefix its address comes
    from. Other VMs, other switches, dns and line numbers do not count."""
    old = port.conf
    if iface != port.iface or conf.chroot != old.chroot:
        return False
    if not same_identity(port, conf):
        return False
    if iface.switch and conf.switches.get(iface.switch) != old.switches.get(iface.switch):
        return False
    if iface.local and conf.local_prefix != old.local_prefix:
        return False
    if iface.local and iface.inet6 and conf.local_prefix6 != old.local_prefix6:
        return False
    return True


def same_identity(port, conf):
    """True if port's processes would run as the same uid and gid under
    conf (a VM of the range keeps its uid while the range holds it), and
    its VMM be checked against the same user and group."""
    vm, old = conf.vms[port.iface.vm], port.conf.vms[port.iface.vm]
    if (vm.vmm_user, vm.vmm_group) != (old.vmm_user, old.vmm_group):
        return False
    try:
        return port.ident is not None and port.parent.ids.of(conf, vm.name) == port.ident
    except LookupError:
        return False


def only_socket_ownership(port, iface, conf):
    """True if all that changed is the listening socket's owner, group or
    mode: applied to the socket, the VM keeps its session."""
    if port.client_mode or not vmmsocket.same_but_ownership(port.iface, iface):
        return False
    return unchanged(port, dataclasses.replace(
        iface, socket_owner=port.iface.socket_owner, socket_group=port.iface.socket_group,
        socket_mode=port.iface.socket_mode), conf)


def in_place_changes(port, iface, conf):
    """None if port must restart under conf (iface: its new block); else
    what a reload changes in place, a subset of {"ownership", "rates"}."""
    old_rates = dataclasses.replace(iface, rate_tx=port.iface.rate_tx,
                                    rate_rx=port.iface.rate_rx)
    changes = set() if old_rates == iface else {"rates"}
    if unchanged(port, old_rates, conf):
        return changes
    if only_socket_ownership(port, old_rates, conf):
        return changes | {"ownership"}
    return None

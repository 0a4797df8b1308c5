"""The parent process: configuration, interfaces, signals, the event loop.

The parent runs as root and keeps only what needs privilege or the whole
picture: the configuration and its reloads, each VM interface's tap, links,
bridge and address, each listening socket, forking sessions and workers
(iface.py), vionetctl (ctl.py) and DHCP leases. It never reads a byte a VMM
or a guest wrote: the vhost-user protocol is spoken by each interface's
unprivileged session (session.py), which sends the parent small protobuf.

    parent (root)
      vhost VM/N      one session per VM interface (unprivileged, seccomp)
        rx VM/N       its workers, forked by the parent on the session's
        tx VM/N       request, their channels handed to the session

One thread, one event loop (eventloop.py), nothing that waits on a child or
a peer: messages from sessions are read non-blocking; vionetctl answers that
need counters wait for the sessions' replies on a timer (ctl.py).

Signals arrive through a self-pipe (signal.set_wakeup_fd) and are handled in
the loop, never inside a signal handler: SIGHUP reloads, SIGTERM/SIGINT stop,
SIGCHLD reaps (a session that died is replaced on a timer).
"""
import dataclasses
import errno
import os
import signal
import socket

import setproctitle

from vionetd import config, vmmsocket
from vionetd.eventloop import Loop
from vionetd.iface import Interface
from vionetd.log import log

REAP_PER_TURN = 256       # children reaped per SIGCHLD turn: signals stay served


class Parent:
    def __init__(self, path, conf, pidfile=None):
        self.path = path
        self.conf = conf
        self.pidfile = pidfile
        self.loop = Loop()
        self.ports = {}          # config.Interface.key -> iface.Interface
        self.running = True
        self.ctl = None

    # ---- the loop -------------------------------------------------------

    def run(self):
        setproctitle.setproctitle("vionetd: parent")
        try:
            self._signals()
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
            self.apply(self.conf)
            log.info("started, %d interface(s)", len(self.ports))
            while self.running:
                self.loop.run_once()
        finally:
            self.shutdown()
        return 0

    def watch(self, fileobj, callback):
        self.loop.watch(fileobj, callback)

    def unwatch(self, fileobj):
        self.loop.unwatch(fileobj)

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
            if signum == signal.SIGHUP:
                self.reload()
            elif signum in (signal.SIGTERM, signal.SIGINT):
                log.info("terminating on signal %d", signum)
                self.running = False
            elif signum == signal.SIGCHLD:
                self.reap()

    def reap(self):
        """Reap what has exited, at most REAP_PER_TURN (the rest wait for the
        next turn: SIGTERM is never starved); a session that died is replaced
        on a timer, never here."""
        for _ in range(REAP_PER_TURN):
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            for port in list(self.ports.values()):
                if port.child_died(pid, status):
                    break
        os.write(self._sig_w.fileno(), bytes([signal.SIGCHLD]))   # more next turn

    # ---- configuration --------------------------------------------------

    def apply(self, conf):
        """Make the running ports match conf: start new and changed ones,
        stop removed and changed ones, leave unchanged ones alone (their
        session, workers, tap and VMM connection stay: the guest sees nothing).
        Returns the errors of ports that could not start, [] if none."""
        wanted = {}
        for vm in conf.vms.values():
            if vm.disabled:
                continue
            for iface in vm.interfaces:
                wanted[iface.key] = iface
        for key in list(self.ports):
            port = self.ports[key]
            if key in wanted and self.unchanged(port, wanted[key], conf):
                port.conf = conf            # e.g. dns: the next DHCP answer has it
                continue
            if key in wanted and self.only_socket_ownership(port, wanted[key], conf):
                new = wanted[key]
                vmmsocket.apply_ownership(new.socket, new.socket_owner, new.socket_group,
                                          new.socket_mode)
                port.iface, port.conf = new, conf
                log.info("%s: socket owner, group or mode changed", key)
                continue
            log.info("%s: stopping (%s)", key, "removed" if key not in wanted else "changed")
            port.stop()
            del self.ports[key]
        self.conf = conf                    # workers forked from now on see it
        errors = []
        for key, iface in wanted.items():
            if key in self.ports:
                continue
            port = Interface(self, iface, conf)
            try:
                port.start()
            except Exception as e:          # one VM's trouble does not stop the others
                why = e.strerror if isinstance(e, OSError) and e.strerror else e
                log.error("%s: cannot start: %s", key, why)
                errors.append("%s: cannot start: %s" % (key, why))
                port.stop()
                continue
            self.ports[key] = port
        return errors

    @staticmethod
    def unchanged(port, iface, conf):
        """True if port would be the same under conf: its own block, the
        sessions' and workers' user and chroot, its switch's bridge, and for a local
        interface the prefix its address comes from. Other VMs, other
        switches, dns and line numbers do not count."""
        old = port.conf
        if iface != port.iface or (conf.user, conf.chroot) != (old.user, old.chroot):
            return False
        if conf.vms[iface.vm].user != old.vms[iface.vm].user:
            return False
        if iface.switch and conf.switches.get(iface.switch) != old.switches.get(iface.switch):
            return False
        if iface.local and conf.local_prefix != old.local_prefix:
            return False
        return True

    def only_socket_ownership(self, port, iface, conf):
        """True if all that changed is the listening socket's owner, group
        or mode: applied to the socket, the VM keeps its session."""
        if port.client_mode or not vmmsocket.same_but_ownership(port.iface, iface):
            return False
        return self.unchanged(port, dataclasses.replace(
            iface, socket_owner=port.iface.socket_owner, socket_group=port.iface.socket_group,
            socket_mode=port.iface.socket_mode), conf)

    def reload(self):
        """SIGHUP or vionetctl reload. A file with an error changes nothing.
        Returns None, or the error for vionetctl."""
        try:
            conf = config.load(self.path)
        except (config.ConfigError, OSError) as e:
            log.error("reload refused, configuration unchanged: %s", e)
            return str(e)
        err = self._control_socket(conf)
        if err:
            log.error("reload refused, configuration unchanged: %s", err)
            return err
        log.info("reloading %s", self.path)
        errors = self.apply(conf)
        if errors:
            return "configuration applied, but " + "; ".join(errors)
        return None

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
        for port in list(self.ports.values()):
            port.stop()
        self.ports.clear()
        if self.ctl:
            self.ctl.close()
        if self.pidfile:
            try:
                os.unlink(self.pidfile)
            except OSError as e:
                if e.errno != errno.ENOENT:
                    raise
        log.info("stopped")

"""The parent process: configuration, ports, signals, the event loop.

The parent runs as root. It never maps guest memory and never parses a guest
frame: it opens taps, speaks vhost-user with the VMM (port.py), forks the
workers and hands them file descriptors (worker.py, control.py), answers
vionetctl (ctl.py) and, for local interfaces, decides DHCP leases.

One thread, one selector. Everything that can block is bounded: a worker's
synchronous answer (ring stop, counters) is waited for at most
port.WORKER_TIMEOUT seconds, then the worker is presumed dead and replaced.

Signals arrive through a self-pipe (signal.set_wakeup_fd) and are handled in
the loop, never inside a signal handler: SIGHUP reloads, SIGTERM/SIGINT stop,
SIGCHLD reaps and replaces workers.
"""
import errno
import os
import selectors
import signal
import socket

import setproctitle

from vionetd import config
from vionetd.log import log
from vionetd.port import Port


class Parent:
    def __init__(self, path, conf, pidfile=None):
        self.path = path
        self.conf = conf
        self.pidfile = pidfile
        self.sel = selectors.DefaultSelector()
        self.ports = {}          # Interface.key -> Port
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
                for key, _ in self.sel.select(timeout=1.0):
                    # an earlier event of this turn (a reload) may have
                    # closed this one's port: skip what is no longer watched
                    if self.sel.get_map().get(key.fileobj) is key:
                        self._dispatch(key.data)
        finally:
            self.shutdown()
        return 0

    @staticmethod
    def _dispatch(callback):
        """One event. A bug met while handling it is logged and the loop goes
        on: one VM's trouble must not stop the others."""
        try:
            callback()
        except Exception:
            log.exception("internal error")

    def watch(self, fileobj, callback):
        self.sel.register(fileobj, selectors.EVENT_READ, callback)

    def unwatch(self, fileobj):
        try:
            self.sel.unregister(fileobj)
        except (KeyError, ValueError):
            pass

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
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            for port in list(self.ports.values()):
                if port.worker_died(pid, status):
                    break

    # ---- configuration --------------------------------------------------

    def apply(self, conf):
        """Make the running ports match conf: start new and changed ones,
        stop removed and changed ones, leave unchanged ones alone (their
        workers, tap and VMM connection stay: the guest sees nothing).
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
            log.info("%s: stopping (%s)", key, "removed" if key not in wanted else "changed")
            port.stop()
            del self.ports[key]
        self.conf = conf                    # workers forked from now on see it
        errors = []
        for key, iface in wanted.items():
            if key in self.ports:
                continue
            port = Port(self, iface, conf)
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
        workers' user and chroot, its switch's bridge, and for a local
        interface the prefix its address comes from. Other VMs, other
        switches, dns and line numbers do not count."""
        old = port.conf
        if iface != port.iface or (conf.user, conf.chroot) != (old.user, old.chroot):
            return False
        if iface.switch and conf.switches.get(iface.switch) != old.switches.get(iface.switch):
            return False
        if iface.local and conf.local_prefix != old.local_prefix:
            return False
        return True

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

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
        stop removed and changed ones, leave unchanged ones alone."""
        wanted = {}
        for vm in conf.vms.values():
            if vm.disabled:
                continue
            for iface in vm.interfaces:
                wanted[iface.key] = iface
        for key in list(self.ports):
            port = self.ports[key]
            if key not in wanted or not port.same_config(wanted[key], conf):
                log.info("%s: stopping (%s)", key, "removed" if key not in wanted else "changed")
                port.stop()
                del self.ports[key]
        for key, iface in wanted.items():
            if key in self.ports:
                continue
            port = Port(self, iface, conf)
            try:
                port.start()
            except (OSError, ValueError) as e:
                log.error("%s: cannot start: %s", key, e)
                port.stop()
                continue
            self.ports[key] = port
        self.conf = conf

    def reload(self):
        """SIGHUP or vionetctl reload. A file with an error changes nothing."""
        try:
            conf = config.load(self.path)
        except (config.ConfigError, OSError) as e:
            log.error("reload refused, configuration unchanged: %s", e)
            return str(e)
        log.info("reloading %s", self.path)
        self.apply(conf)
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

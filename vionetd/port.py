"""A port: one VM interface, that is one virtio-net device and its tap.

A port owns, in the parent:
- the tap (opened here, configured with pyroute2 through links.py);
- the listening vhost-user socket and at most one VMM connection at a time
  (a second connection is refused while the first lives);
- the two workers of its queue pair (rx serves ring 0, tx ring 1), forked at
  start, before any guest memory exists, and replaced when they die;
- what the VMM told us (memory table, ring setup, features), kept so that a
  replaced worker can be brought back to the same state.

It is the vhost-user Backend (vhost_user.py calls it for every checked
message) and translates each request into control-channel messages to the
worker that owns the ring. The parent never maps guest memory.
"""
import os
import signal
import socket
import time

from vionetd import control, features, links, tap
from vionetd import vionetd_pb2 as pb
from vionetd import vhost_user
from vionetd.log import log

WORKER_TIMEOUT = 3.0       # seconds to wait for a worker's synchronous answer
RESTART_BACKOFF = 1.0      # at most one restart per worker per second
RX, TX = 0, 1              # ring index within the queue pair (vhost-user: 2i, 2i+1)
ROLE = {RX: pb.ROLE_RX, TX: pb.ROLE_TX}
ROLE_NAME = {RX: "rx", TX: "tx"}


class Ring:
    """What the VMM said about one ring."""

    def __init__(self):
        self.num = 0
        self.addr = None            # (desc, used, avail) frontend addresses
        self.base = 0
        self.kick = None            # fd, kept for worker restarts
        self.call = None
        self.enabled = False
        self.started = False

    def close_fds(self):
        control.close_fds([fd for fd in (self.kick, self.call) if fd is not None])
        self.kick = self.call = None


class Worker:
    def __init__(self, role):
        self.role = role
        self.pid = None
        self.chan = None
        self.started_at = 0.0


class Port(vhost_user.Backend):
    def __init__(self, parent, iface, conf):
        self.parent = parent
        self.iface = iface
        self.conf = conf
        self.key = iface.key
        self.tap_fd = None
        self.tap_name = None
        self.tap_caps = 0           # TUN_F_* the kernel accepts
        self.offered = 0
        self.vmm_features = 0       # what the VMM acked (SET_FEATURES)
        self.listener = None
        self.conn = None
        self.rings = [Ring(), Ring()]
        self.mem = None             # (regions, fds)
        self.workers = {RX: Worker(RX), TX: Worker(TX)}
        self.restarts = 0
        self.address = None         # local interfaces: local.Addresses
        self.tap_mac = None         # the host side's MAC, source of DHCP replies
        self.lease = None

    # ---- life cycle -----------------------------------------------------

    def same_config(self, iface, conf):
        return iface == self.iface and self._global(conf) == self._global(self.conf)

    @staticmethod
    def _global(conf):
        return (conf.user, conf.chroot, conf.local_prefix,
                {k: v for k, v in conf.switches.items()})

    def start(self):
        self.tap_fd, self.tap_name = tap.open_tap(self.iface.name)
        self.tap_caps = tap.probe_offloads(self.tap_fd)
        tap.set_offload(self.tap_fd, 0)
        self._configure_link()
        self.offered = features.offer(self.iface.offload, self.tap_caps)
        self._listen()
        for role in (RX, TX):
            self._spawn(role)
        log.info("%s: tap %s, socket %s, offering %#x", self.key, self.tap_name,
                 self.iface.socket, self.offered)

    def _configure_link(self):
        bridge = None
        if self.iface.switch:
            bridge = self.conf.switches[self.iface.switch].bridge
        links.configure(self.tap_name, mtu=self.iface.mtu, bridge=bridge)
        if self.iface.local:
            from vionetd import local
            taken = {p.address.host for p in self.parent.ports.values() if p.address}
            self.address = local.addresses(self.conf.local_prefix, self.key, taken)
            links.add_address(self.tap_name, self.address.host, 31)

    def _listen(self):
        path = self.iface.socket
        if os.path.exists(path):
            os.unlink(path)        # a stale socket of an earlier run
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.bind(path)
        os.chmod(path, 0o660)
        s.listen(1)
        s.setblocking(False)
        self.listener = s
        self.parent.watch(s, self._accept)

    def stop(self):
        self._disconnect("port stopping")
        if self.listener:
            self.parent.unwatch(self.listener)
            self.listener.close()
            self.listener = None
            try:
                os.unlink(self.iface.socket)
            except OSError:
                pass
        for w in self.workers.values():
            self._kill(w)
        if self.tap_fd is not None:
            os.close(self.tap_fd)   # the tap is not persistent: closing deletes it
            self.tap_fd = None

    # ---- the VMM connection ---------------------------------------------

    def _accept(self):
        try:
            sock, _ = self.listener.accept()
        except BlockingIOError:
            return
        if self.conn is not None:
            log.info("%s: refusing a second VMM connection", self.key)
            sock.close()
            return
        sock.setblocking(True)
        self.conn = vhost_user.Connection(sock, self)
        self.parent.watch(sock, self._readable)
        log.info("%s: VMM connected", self.key)

    def _readable(self):
        try:
            alive = self.conn.handle_readable()
        except vhost_user.ProtocolError as e:
            log.warning("%s: dropping VMM: %s", self.key, e)
            alive = False
        except OSError as e:
            log.warning("%s: VMM connection: %s", self.key, e)
            alive = False
        if alive is False:
            self._disconnect("VMM disconnected")

    def _disconnect(self, why):
        if self.conn is None:
            return
        log.info("%s: %s", self.key, why)
        self.parent.unwatch(self.conn.sock)
        self.conn.close()
        self.conn = None
        self.reset()

    @property
    def state(self):
        if self.conn is None:
            return "waiting"
        if any(r.started for r in self.rings):
            return "running"
        return "connected"

    # ---- vhost_user.Backend -------------------------------------------

    def get_features(self):
        return self.offered

    def set_features(self, value):
        self.vmm_features = value
        mask = features.tap_offloads_for(value, self.iface.offload) & self.tap_caps
        tap.set_offload(self.tap_fd, mask)
        for w in self.workers.values():
            self._send(w, features=self._features_msg())

    def _features_msg(self):
        sw = features.software_mode(self.iface.offload, self.vmm_features)
        lladdr = b""
        if self.iface.locked and self.iface.lladdr:
            lladdr = bytes(int(x, 16) for x in self.iface.lladdr.split(":"))
        return pb.Features(features=self.vmm_features, software=pb.Software(**sw),
                           locked_lladdr=lladdr, local=bool(self.iface.local))

    def set_owner(self):
        pass

    def reset(self):
        for i in (RX, TX):
            self._stop_ring(i)
            self.rings[i].close_fds()
            self.rings[i] = Ring()
        if self.mem:
            control.close_fds(self.mem[1])
            self.mem = None
            for w in self.workers.values():
                self._send(w, mem_table=pb.MemTable())
        self.vmm_features = 0

    def set_mem_table(self, regions, fds):
        for i in (RX, TX):
            self._stop_ring(i)
        if self.mem:
            control.close_fds(self.mem[1])
        self.mem = (regions, fds)
        for w in self.workers.values():
            self._send_mem(w)
        for i in (RX, TX):
            self._maybe_start(i)

    def _send_mem(self, w):
        regions, fds = self.mem
        msg = pb.MemTable(regions=[pb.Region(guest_addr=r[0], size=r[1], user_addr=r[2],
                                             mmap_offset=r[3]) for r in regions])
        self._send(w, fds, mem_table=msg)

    def set_vring_num(self, i, num):
        self.rings[i].num = num

    def set_vring_addr(self, i, desc, used, avail, flags):
        self.rings[i].addr = (desc, used, avail)

    def set_vring_base(self, i, base):
        self.rings[i].base = base

    def get_vring_base(self, i):
        ring = self.rings[i]
        base = self._stop_ring(i)
        if ring.kick is not None:
            os.close(ring.kick)
            ring.kick = None
        return base if base is not None else ring.base

    def set_vring_kick(self, i, fd):
        ring = self.rings[i]
        if ring.started:
            self._stop_ring(i)
        if ring.kick is not None:
            os.close(ring.kick)
        ring.kick = fd
        self._maybe_start(i)

    def set_vring_call(self, i, fd):
        ring = self.rings[i]
        if ring.call is not None:
            os.close(ring.call)
        ring.call = fd
        if ring.started:               # the worker must signal the new eventfd
            base = self._stop_ring(i)
            ring.base = base if base is not None else ring.base
            self._maybe_start(i)

    def set_vring_err(self, i, fd):
        if fd is not None:
            os.close(fd)               # we never report ring errors this way

    def set_vring_enable(self, i, enabled):
        ring = self.rings[i]
        ring.enabled = enabled
        if ring.started:
            self._send(self.workers[i], ring_enable=pb.RingEnable(enabled=enabled))

    # ---- rings and workers ------------------------------------------------

    def _maybe_start(self, i, resume=False):
        ring = self.rings[i]
        if ring.started or self.mem is None or ring.kick is None or ring.addr is None \
                or ring.num == 0:
            return
        # Without protocol features a ring is enabled as soon as it starts.
        enabled = ring.enabled or not self.conn_protocol_features()
        desc, used, avail = ring.addr
        fds = [ring.kick] + ([ring.call] if ring.call is not None else [])
        msg = pb.RingStart(num=ring.num, desc_user_addr=desc, avail_user_addr=avail,
                           used_user_addr=used, base=ring.base,
                           has_call=ring.call is not None, enabled=enabled, resume=resume)
        if self._send(self.workers[i], fds, ring_start=msg):
            ring.started = True

    def conn_protocol_features(self):
        return self.conn is not None and self.conn.protocol_features_negotiated

    def _stop_ring(self, i):
        """Stop ring i in its worker; returns its next avail index, or None."""
        ring = self.rings[i]
        if not ring.started:
            return None
        ring.started = False
        w = self.workers[i]
        if not self._send(w, ring_stop=pb.RingStop()):
            return None
        reply = self._wait_reply(w, "ring_stopped")
        if reply is None:
            return None
        ring.base = reply.ring_stopped.last_avail
        return ring.base

    def _spawn(self, role):
        from vionetd import worker
        w = self.workers[role]
        parent_end, child_end = control.pair()
        name = "%s %s" % (ROLE_NAME[role], self.key)
        pid = os.fork()
        if pid == 0:
            parent_end.close()
            code = 1
            try:
                code = worker.main(child_end, name, self.parent.conf)
            finally:
                os._exit(code)
        child_end.close()
        w.pid, w.chan, w.started_at = pid, parent_end, time.monotonic()
        parent_end.settimeout(WORKER_TIMEOUT)
        self.parent.watch(parent_end, lambda w=w: self._from_worker(w))
        self._send(w, hello=pb.Hello(name=self.key, role=ROLE[role], queue_pair=0))
        self._send(w, [self.tap_fd], tap=pb.Tap())

    def _restore(self, w, role):
        """Bring a new worker to where its predecessor was."""
        if self.vmm_features:
            self._send(w, features=self._features_msg())
        if self.mem:
            self._send_mem(w)
        ring = self.rings[role]
        if ring.started:
            ring.started = False
            self._maybe_start(role, resume=True)

    def _kill(self, w):
        if w.chan is not None:
            self.parent.unwatch(w.chan)
            w.chan.close()
            w.chan = None
        if w.pid:
            try:
                os.kill(w.pid, signal.SIGKILL)
                os.waitpid(w.pid, 0)
            except (ProcessLookupError, ChildProcessError):
                pass
            w.pid = None

    def worker_died(self, pid, status):
        """SIGCHLD: if pid is one of ours, log how it died and replace it."""
        for role, w in self.workers.items():
            if w.pid != pid:
                continue
            how = describe_exit(status)
            log.warning("%s: %s worker %d %s", self.key, ROLE_NAME[role], pid, how)
            w.pid = None
            if w.chan is not None:
                self.parent.unwatch(w.chan)
                w.chan.close()
                w.chan = None
            if self.tap_fd is None:
                return True
            wait = RESTART_BACKOFF - (time.monotonic() - w.started_at)
            if wait > 0:
                time.sleep(wait)
            self.restarts += 1
            self._spawn(role)
            self._restore(w, role)
            return True
        return False

    def _send(self, w, fds=(), **kw):
        if w.chan is None:
            return False
        try:
            control.send(w.chan, pb.ToWorker(**kw), fds)
            return True
        except OSError as e:
            log.warning("%s: %s worker unreachable: %s", self.key, ROLE_NAME[w.role], e)
            return False

    def _wait_reply(self, w, field):
        """The worker's answer to a synchronous request; other messages that
        arrive meanwhile are handled as usual."""
        deadline = time.monotonic() + WORKER_TIMEOUT
        while time.monotonic() < deadline and w.chan is not None:
            try:
                msg, fds = control.recv(w.chan, pb.FromWorker)
            except (OSError, control.ChannelError) as e:
                log.warning("%s: %s worker: %s", self.key, ROLE_NAME[w.role], e)
                return None
            if msg is None:
                return None
            if msg.WhichOneof("msg") == field:
                return msg
            self._dispatch(w, msg, fds)
        return None

    def _from_worker(self, w):
        try:
            msg, fds = control.recv(w.chan, pb.FromWorker)
        except (OSError, control.ChannelError) as e:
            log.warning("%s: %s worker: %s", self.key, ROLE_NAME[w.role], e)
            self._kill(w)
            return
        if msg is None:
            self.parent.unwatch(w.chan)   # it is dying; SIGCHLD replaces it
            return
        self._dispatch(w, msg, fds)

    def _dispatch(self, w, msg, fds):
        control.close_fds(fds)           # workers never send fds
        kind = msg.WhichOneof("msg")
        if kind == "dhcp" and self.iface.local:
            from vionetd import dhcp
            reply = dhcp.decide(self, msg.dhcp)
            if reply is not None:
                self._send(self.workers[RX], dhcp_reply=reply)
        elif kind == "error":
            log.warning("%s: %s worker: %s", self.key, ROLE_NAME[w.role], msg.error)
        else:
            log.debug("%s: unexpected %s from %s worker", self.key, kind, ROLE_NAME[w.role])

    def counters(self):
        """{name: value} summed over both workers (for vionetctl)."""
        out = {}
        for role, w in self.workers.items():
            if not self._send(w, stats=pb.StatsRequest()):
                continue
            reply = self._wait_reply(w, "stats")
            if reply is None:
                continue
            for c in reply.stats.counters:
                out["%s_%s" % (ROLE_NAME[role], c.name)] = c.value
        return out


def describe_exit(status):
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        name = signal.Signals(sig).name if sig in signal.Signals.__members__.values() else str(sig)
        return "killed by %s" % name
    return "exited with status %d" % os.WEXITSTATUS(status)

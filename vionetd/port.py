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

from vionetd import control, features, links, sandbox, tap
from vionetd import vionetd_pb2 as pb
from vionetd import vhost_user, vmmsocket
from vionetd.log import log

WORKER_TIMEOUT = 3.0       # seconds to wait for a worker's synchronous answer
RESTART_BACKOFF = 1.0      # at most one restart per worker per second
DEFAULT_MTU = 1500         # an interface without "mtu": the kernel's default for a tap
AUTO_TAP = "vio%d"          # the kernel picks the number
RX, TX = 0, 1              # ring index within the queue pair (vhost-user: 2i, 2i+1)
ROLE = {RX: pb.ROLE_RX, TX: pb.ROLE_TX}
ROLE_NAME = {RX: "rx", TX: "tx"}


class RingFds:
    """The eventfds of one ring, kept so a replaced worker gets them again.
    Everything else about a ring lives in vhost_user.Connection.rings."""

    def __init__(self):
        self.kick = None
        self.call = None
        self.running = False        # started in its worker
        self.last_avail = None      # from the worker when it stopped

    def set(self, which, fd):
        old = getattr(self, which)
        if old is not None:
            os.close(old)
        setattr(self, which, fd)

    def close(self):
        self.set("kick", None)
        self.set("call", None)


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
        self.rings = [RingFds(), RingFds()]
        self.mem = None             # (regions, fds)
        self.workers = {RX: Worker(RX), TX: Worker(TX)}
        self.restarts = 0
        self.address = None         # local interfaces: local.Addresses
        self.tap_mac = None         # the host side's MAC, source of DHCP replies
        self.lease = None
        self.vmm_mtu = None         # accepted NET_SET_MTU; the tap's MTU follows it

    # ---- life cycle -----------------------------------------------------

    def start(self):
        self.tap_fd, self.tap_name = tap.open_tap(self.iface.name or AUTO_TAP)
        self.tap_caps = tap.probe_offloads(self.tap_fd)
        tap.set_offload(self.tap_fd, 0)
        if self.iface.locked and self.iface.lladdr:
            tap.set_rx_filter(self.tap_fd, bytes.fromhex(self.iface.lladdr.replace(":", "")))
        self._configure_link()
        self.offered = features.offer(self.iface.offload, self.tap_caps)
        self._listen()
        for role in (RX, TX):
            self._spawn(role)
        log.info("%s: tap %s, socket %s, offering %#x", self.key, self.tap_name,
                 self.iface.socket, self.offered)

    def _configure_link(self):
        if self.iface.mtu:
            links.set_mtu(self.tap_name, self.iface.mtu)
        if self.iface.switch:
            links.attach_to_bridge(self.tap_name, self.conf.switches[self.iface.switch].bridge)
        links.set_up(self.tap_name)
        self.tap_mac = links.get_mac(self.tap_name)
        if self.iface.local:
            from vionetd import local
            taken = {p.address.host for p in self.parent.ports.values() if p.address}
            self.address = local.addresses(self.conf.local_prefix, self.key, taken)
            links.add_address(self.tap_name, str(self.address.host), 31)

    def _listen(self):
        i = self.iface
        if i.connect:      # never listen on the VMM's own socket path
            raise RuntimeError("socket %s connect: client mode is not implemented yet" % i.socket)
        s = vmmsocket.listen(i.socket, i.socket_owner, i.socket_group, i.socket_mode)
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
        self.conn = vhost_user.Connection(sock, self, name=self.key)
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
        self.conn.close()              # reports rings stopped, then disconnected()
        self.conn = None

    @property
    def state(self):
        if self.conn is None:
            return "waiting"
        if any(r.running for r in self.rings):
            return "running"
        return "connected"

    # ---- vhost_user.Backend -------------------------------------------

    def get_features(self):
        return self.offered

    def set_features(self, value):
        self.vmm_features = value
        mask = features.tap_offloads_for(value, self.iface.offload, self.tap_caps)
        tap.set_offload(self.tap_fd, mask)
        for w in self.workers.values():
            self._send(w, features=self._features_msg())

    def _features_msg(self):
        sw = features.software_mode(self.iface.offload, self.vmm_features)
        software = pb.Software(tx_csum=sw.tx_csum, rx_csum=sw.rx_csum,
                               tx_tso4="tso4" in sw.tx_segment,
                               tx_tso6="tso6" in sw.tx_segment,
                               tx_uso="uso" in sw.tx_segment)
        lladdr = b""
        if self.iface.locked and self.iface.lladdr:
            lladdr = bytes.fromhex(self.iface.lladdr.replace(":", ""))
        return pb.Features(features=self.vmm_features, software=software,
                           locked_lladdr=lladdr, local=bool(self.iface.local),
                           mtu=self.vmm_mtu or self.iface.mtu or DEFAULT_MTU)

    def reset(self):
        for ring in self.rings:
            ring.close()
            ring.last_avail = None
        self._forget_memory()
        self.vmm_features = 0

    def disconnected(self):
        self.reset()
        if self.vmm_mtu is not None:
            # The next VMM may not say; the tap gets its configured MTU back.
            self.vmm_mtu = None
            if self.tap_name:
                try:
                    links.set_mtu(self.tap_name, self.iface.mtu or DEFAULT_MTU)
                except Exception as e:
                    log.warning("%s: restoring the tap's MTU: %s", self.key, e)

    def set_mtu(self, mtu):
        """NET_SET_MTU: the MTU the VMM gives the guest (QEMU's host_mtu,
        libvirt's <mtu size=.../>). Larger than the interface's mtu (the
        tap's) is refused; otherwise the tap's MTU follows."""
        limit = self.iface.mtu or DEFAULT_MTU
        if mtu > limit:
            log.error("%s: refusing MTU %d from the VMM: larger than this "
                      "interface's mtu %d in vionetd.conf", self.key, mtu, limit)
            raise vhost_user.BackendError("MTU %d larger than the interface's %d"
                                          % (mtu, limit))
        try:
            links.set_mtu(self.tap_name, mtu)
        except Exception as e:
            log.error("%s: MTU %d from the VMM: tap %s: %s", self.key, mtu, self.tap_name, e)
            raise vhost_user.BackendError("tap MTU %d: %s" % (mtu, e))
        self.vmm_mtu = mtu
        log.info("%s: guest MTU %d, tap %s follows", self.key, mtu, self.tap_name)

    def _forget_memory(self):
        if self.mem:
            control.close_fds(self.mem[1])
            self.mem = None
            for w in self.workers.values():
                self._send(w, mem_table=pb.MemTable())

    def set_mem_table(self, regions, fds):
        running = [i for i in (RX, TX) if self.rings[i].running]
        for i in running:                  # hotplug: remap under stopped rings
            self._stop_ring(i)
        if self.mem:
            control.close_fds(self.mem[1])
        self.mem = (list(regions), list(fds))
        for w in self.workers.values():
            self._send_mem(w)
        for i in running:
            self._start_ring(i, base=self.rings[i].last_avail)

    def _send_mem(self, w):
        regions, fds = self.mem
        msg = pb.MemTable(regions=[pb.Region(guest_addr=r.guest_addr, size=r.size,
                                             user_addr=r.user_addr, mmap_offset=r.mmap_offset)
                                   for r in regions])
        self._send(w, fds, mem_table=msg)

    def get_vring_base(self, i):
        ring = self.rings[i]
        if ring.last_avail is not None:
            return ring.last_avail
        return self.conn.rings[i].base

    def set_vring_base(self, i, base):
        self.rings[i].last_avail = None    # the VMM's base wins from now on

    def set_vring_kick(self, i, fd):
        self.rings[i].set("kick", fd)

    def set_vring_call(self, i, fd):
        ring = self.rings[i]
        ring.set("call", fd)
        if ring.running:                   # the worker must signal the new eventfd
            self._stop_ring(i)
            self._start_ring(i, base=ring.last_avail)

    def set_vring_enable(self, i, enabled):
        # Synchronous: the VMM's ack (REPLY_ACK) must mean the worker holds it.
        w = self.workers[i]
        if self.rings[i].running and self._send(w, ring_enable=pb.RingEnable(enabled=enabled)):
            self._wait_reply(w, "ring_enabled")

    def ring_ready_changed(self, i, ready):
        if ready:
            self._start_ring(i)
        else:
            self._stop_ring(i)

    # ---- rings and workers ------------------------------------------------

    def _start_ring(self, i, base=None, resume=False):
        ring = self.rings[i]
        state = self.conn.rings[i] if self.conn else None
        if state is None or ring.kick is None or self.mem is None:
            return
        fds = [ring.kick] + ([ring.call] if ring.call is not None else [])
        msg = pb.RingStart(num=state.num, desc_user_addr=state.desc,
                           avail_user_addr=state.avail, used_user_addr=state.used,
                           base=state.base if base is None else base,
                           has_call=ring.call is not None,
                           enabled=self.conn.ring_enabled(i), resume=resume)
        ring.last_avail = None
        if self._send(self.workers[i], fds, ring_start=msg):
            ring.running = True

    def _stop_ring(self, i):
        """Stop ring i in its worker and keep its next avail index."""
        ring = self.rings[i]
        if not ring.running:
            return
        ring.running = False
        w = self.workers[i]
        if self._send(w, ring_stop=pb.RingStop()):
            reply = self._wait_reply(w, "ring_stopped")
            if reply is not None:
                ring.last_avail = reply.ring_stopped.last_avail

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
        if self.rings[role].running:
            self._start_ring(role, resume=True)

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
        elif kind == "forbidden_syscall":
            log.error("%s: %s worker %s made forbidden system call %d (%s)", self.key,
                      ROLE_NAME[w.role], w.pid, msg.forbidden_syscall,
                      sandbox.syscall_name(msg.forbidden_syscall))
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

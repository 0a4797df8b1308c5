"""Run by the parent (root): its control socket, which vionetctl(8) talks to.

A unix SOCK_SEQPACKET socket: one CtlRequest per datagram, one CtlReply back
(proto/vionetd.proto). The socket is mode 0660, owned by root and the
daemon's group: the group may ask (status, show, stats); changing anything
(reload, log level) needs uid 0, checked per request with SO_PEERCRED.

Invariants:
- a client never blocks the parent: connections are non-blocking and served
  from the parent's selector when their request arrives; at most MAX_CLIENTS
  wait at a time, the oldest is dropped to make room (a client that connects
  and sends nothing costs one slot, not the daemon's attention);
- every request gets one reply or a closed connection: one that does not
  parse, is empty or longer than MAX_REQUEST gets an error reply, and the
  daemon goes on.

Counter names: each worker reports its C core's counters (frames, rx_bounced,
refused_<reason>, ...); here they get the prefix of the worker's direction,
"rx_" or "tx_", once: rx_frames, rx_bounced, tx_refused_hdr_len. They are
shown per queue pair and summed over the pairs. The
direction-specific counters of the other direction, which that worker never
counts, and the "ok" slots of the error enums are left out.
"""
import grp
import os
import pwd
import socket
import struct

from vionetd import features, log as logmod, procstat, tap
from vionetd import vionetd_pb2 as pb
from vionetd.log import log

MAX_REQUEST = 4096
MAX_CLIENTS = 16
STATS_TIMEOUT = 1.5      # seconds the sessions have to send their counters
SEND_TIMEOUT = 1.0       # a reply fits the socket buffer; this only bounds a bug
SNDBUF = 4 << 20         # a stats reply of many interfaces is one datagram
SO_SNDBUFFORCE = getattr(socket, "SO_SNDBUFFORCE", 32)    # Linux asm-generic/socket.h
READ_ONLY = ("status", "show", "stats")
DIRECTIONS = ("rx", "tx")
NEVER_COUNTED = ("ring_ok", "refused_ok")


def daemon_gid(user):
    """The group of the control socket: the user's primary group, else the
    group of that name, else root's."""
    try:
        return pwd.getpwnam(user).pw_gid
    except KeyError:
        try:
            return grp.getgrnam(user).gr_gid
        except KeyError:
            return 0


class CtlServer:
    def __init__(self, parent, path, user=None):
        self.parent = parent
        self.path = path
        self.clients = []            # accepted, request not yet read; oldest first
        if os.path.exists(path):
            os.unlink(path)
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            s.bind(path)
            self.set_group(parent.conf.user if user is None else user)
            os.chmod(path, 0o660)
            s.listen(8)
        except OSError:
            s.close()
            raise
        s.setblocking(False)
        self.sock = s

    def set_group(self, user):
        os.chown(self.path, 0, daemon_gid(user))

    def close(self):
        for conn in list(self.clients):
            self._forget(conn)
            conn.close()
        self.parent.unwatch(self.sock)
        self.sock.close()
        try:
            os.unlink(self.path)
        except OSError:
            pass

    # ---- connections ----------------------------------------------------

    def accept(self):
        try:
            conn, _ = self.sock.accept()
        except (BlockingIOError, ConnectionAbortedError):
            return
        conn.setblocking(False)
        if len(self.clients) >= MAX_CLIENTS:
            oldest = self.clients[0]
            self._forget(oldest)
            oldest.close()
        self.clients.append(conn)
        self.parent.watch(conn, lambda c=conn: self._request(c))

    def _forget(self, conn):
        self.parent.unwatch(conn)
        if conn in self.clients:
            self.clients.remove(conn)

    def _request(self, conn):
        try:
            data, _anc, flags, _ = conn.recvmsg(MAX_REQUEST)
        except BlockingIOError:
            return
        except OSError as e:
            log.debug("control client: %s", e)
            self._forget(conn)
            conn.close()
            return
        self._forget(conn)
        respond = lambda reply: self._reply(conn, reply)   # noqa: E731
        if flags & socket.MSG_TRUNC:
            return respond(pb.CtlReply(error="request longer than %d bytes" % MAX_REQUEST))
        try:
            self.answer(data, peer_uid(conn), respond)
        except Exception:
            log.exception("control request failed")
            respond(pb.CtlReply(error="internal error, see the daemon's log"))

    @staticmethod
    def _reply(conn, reply):
        with conn:
            try:
                conn.setsockopt(socket.SOL_SOCKET, SO_SNDBUFFORCE, SNDBUF)
            except OSError:
                pass                      # the default is enough for a few VMs
            try:
                conn.settimeout(SEND_TIMEOUT)
                conn.send(reply.SerializeToString())
            except OSError as e:          # the client went away: its loss
                log.debug("control client: %s", e)

    # ---- requests -------------------------------------------------------

    def answer(self, data, uid, respond):
        """Answer one request: respond(CtlReply) is called once, at once or,
        for counters, when every session has answered or STATS_TIMEOUT has
        passed (a session that does not answer leaves its counters out), and
        for a reload, when the interfaces it restarts have started or failed
        (one may wait, at most exiting.EXIT_WAIT, for its old processes)."""
        reply = self._answer(data, uid, respond)
        if reply is not None:
            respond(reply)

    def _answer(self, data, uid, respond):
        req = pb.CtlRequest()
        try:
            req.ParseFromString(data)
        except Exception:
            return pb.CtlReply(error="request does not parse")
        kind = req.WhichOneof("msg")
        if kind is None:
            return pb.CtlReply(error="empty request")
        if kind not in READ_ONLY and uid != 0:
            return pb.CtlReply(error="%s: permission denied, needs root"
                               % ("log" if kind == "log_level" else kind))
        log.debug("control: %s from uid %d", kind, uid)
        if kind == "status":
            return pb.CtlReply(interfaces=[self.describe(p) for p in self.parent.ports.values()])
        if kind == "stats":
            return self.stats(respond)
        if kind == "show":
            ports = [p for p in self.parent.ports.values() if p.iface.vm == req.show]
            if not ports:
                return pb.CtlReply(error="no such VM: %s" % req.show)
            return self._with_counters(ports, respond)
        if kind == "reload":      # answered once the interfaces it restarts have started
            self.parent.reload().then(lambda err: respond(
                pb.CtlReply(error=err or "", message="" if err else "reloaded")))
            return None
        if kind == "log_level":
            try:
                logmod.set_level(req.log_level)
            except ValueError as e:
                return pb.CtlReply(error=str(e))
            log.info("log level %s", req.log_level)
            return pb.CtlReply(message="log level %s" % req.log_level)
        return pb.CtlReply(error="unknown request")

    def stats(self, respond):
        """Every interface with its counters: respond(CtlReply) once they
        are in (vionetctl stats, and the metrics process's request)."""
        return self._with_counters(list(self.parent.ports.values()), respond)

    def _with_counters(self, ports, respond):
        """Statuses with counters, gathered from the sessions without
        waiting in the loop."""
        reply = pb.CtlReply(interfaces=[self.describe(p, usage=True) for p in ports])
        left = set(range(len(ports)))

        def finish():
            if not finished:
                finished.append(True)
                timer.cancel()
                respond(reply)

        def got(i, counters):
            st = reply.interfaces[i]
            total = {}
            for qp, named in sorted(per_queue_pair(counters).items()):
                q = st.queue_pairs.add(queue_pair=qp)
                for name, value in sorted(named.items()):
                    q.counters.add(name=name, value=value)
                    total[name] = total.get(name, 0) + value
            for name, value in sorted(total.items()):
                st.counters.add(name=name, value=value)
            left.discard(i)
            if not left:
                finish()

        finished = []
        timer = self.parent.loop.call_later(STATS_TIMEOUT, finish)
        for i, port in enumerate(ports):
            port.request_stats(lambda counters, i=i: got(i, counters))
        if not ports:
            finish()
        return None

    def describe(self, port, usage=False):
        """An InterfaceStatus; usage adds processes and tap drops (not for status)."""
        vmm = port.session.vmm_features
        st = pb.InterfaceStatus(
            vm=port.iface.vm, name=port.key, state=port.state, socket=port.iface.socket,
            tap=port.tap_name or "", lladdr=port.iface.lladdr or "",
            address=str(port.address.guest) if port.address else "",
            queues=port.queue_pairs, policy_features=features.offer(port.iface.offload, features.TUN_F_ALL),
            tap_features=port.tap_caps, vmm_features=vmm, negotiated=vmm & port.offered,
            offered=port.offered, restarts=port.session.worker_restarts,
            worker_pids=[pid for _, pid in sorted(port.children.workers.items())],
            lease=port.lease or "", reason=port.reason,
            address6=str(port.address6.net) if port.address6 else "",
            lease6=port.lease6 or "",
            session_pid=port.children.session_pid or 0,
            session_restarts=port.children.session_restarts,
            retries=port.session.retries, logging=port.session.logging,
            announced=port.tap.announced, mtu=port.tap.mtu if port.tap_name else 0,
            guest_mtu=port.tap.vmm_mtu, limits=port.limits)
        if usage:
            st.tap_dropped = tap.dropped(port.tap_name) if port.tap_name else 0
            st.processes.extend(procstat.processes(port))
        sw = features.software_mode(port.iface.offload, vmm)
        st.tx_path = tx_path(sw)
        st.rx_path = "software checksum" if sw.rx_csum else "passthrough"
        return st


def per_queue_pair(raw):
    """A session's counters ({"PAIR/<direction>_<C name>": value}) as
    {pair: {readable name: value}}; names without a valid pair are dropped."""
    out = {}
    for name, value in raw.items():
        qp, _, rest = name.partition("/")
        if qp.isdigit():
            out.setdefault(int(qp), {})[rest] = value
    return {qp: counter_names(c) for qp, c in out.items()}


def counter_names(raw):
    """A session's counters ({"<direction>_<C name>": value}) with readable names:
    "rx_rx_no_buffers" becomes "rx_no_buffers"; "tx_rx_no_buffers" (an RX
    counter in the TX worker, never counted) and the "ok" slots go."""
    out = {}
    for name, value in raw.items():
        direction, _, inner = name.partition("_")
        if direction in DIRECTIONS:
            other = "tx" if direction == "rx" else "rx"
            if inner in NEVER_COUNTED or inner.startswith(other + "_"):
                continue
            if inner.startswith(direction + "_"):
                inner = inner[len(direction) + 1:]
            name = "%s_%s" % (direction, inner)
        out[name] = out.get(name, 0) + value
    return out


def tx_path(sw):
    done = (["checksum"] if sw.tx_csum else []) + sorted(sw.tx_segment)
    return "software " + ",".join(done) if done else "passthrough"


def peer_uid(conn):
    """The uid of the client, from the kernel (struct ucred: pid, uid, gid)."""
    creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("iII"))
    _pid, uid, _gid = struct.unpack("iII", creds)
    return uid

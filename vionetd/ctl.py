"""The parent's control socket, which vionetctl(8) talks to.

A unix SOCK_SEQPACKET socket: one CtlRequest per datagram, one CtlReply back
(proto/vionetd.proto). The socket is mode 0660, owned by root and the
daemon's group: the group may ask (status, show, stats); changing anything
(reload, log level) needs uid 0, checked per request with SO_PEERCRED.
A request that does not parse gets an error reply; the daemon goes on.
"""
import grp
import os
import pwd
import socket
import struct

from vionetd import features, log as logmod
from vionetd import vionetd_pb2 as pb
from vionetd.log import log

MAX_REQUEST = 4096
READ_ONLY = ("status", "show", "stats")


def daemon_gid(user):
    try:
        return pwd.getpwnam(user).pw_gid
    except KeyError:
        try:
            return grp.getgrnam(user).gr_gid
        except KeyError:
            return 0


class CtlServer:
    def __init__(self, parent, path):
        self.parent = parent
        self.path = path
        if os.path.exists(path):
            os.unlink(path)
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        s.bind(path)
        os.chown(path, 0, daemon_gid(parent.conf.user))
        os.chmod(path, 0o660)
        s.listen(8)
        s.setblocking(False)
        self.sock = s

    def close(self):
        self.sock.close()
        try:
            os.unlink(self.path)
        except OSError:
            pass

    def accept(self):
        try:
            conn, _ = self.sock.accept()
        except BlockingIOError:
            return
        conn.settimeout(2.0)   # a client that sends nothing cannot hold the parent
        with conn:
            try:
                data = conn.recv(MAX_REQUEST)
                try:
                    reply = self.answer(data, peer_uid(conn))
                except Exception:
                    log.exception("control request failed")
                    reply = pb.CtlReply(error="internal error, see the daemon's log")
                conn.send(reply.SerializeToString())
            except OSError as e:
                log.debug("control client: %s", e)

    def answer(self, data, uid):
        req = pb.CtlRequest()
        try:
            req.ParseFromString(data)
        except Exception:
            return pb.CtlReply(error="request does not parse")
        kind = req.WhichOneof("msg")
        if kind is None:
            return pb.CtlReply(error="empty request")
        if kind not in READ_ONLY and uid != 0:
            return pb.CtlReply(error="%s needs root" % kind)
        if kind in ("status", "stats"):
            return pb.CtlReply(interfaces=[self.describe(p, kind == "stats")
                                           for p in self.parent.ports.values()])
        if kind == "show":
            ports = [p for p in self.parent.ports.values() if p.iface.vm == req.show]
            if not ports:
                return pb.CtlReply(error="no such VM: %s" % req.show)
            return pb.CtlReply(interfaces=[self.describe(p, True) for p in ports])
        if kind == "reload":
            err = self.parent.reload()
            return pb.CtlReply(error=err or "", message="" if err else "reloaded")
        if kind == "log_level":
            try:
                logmod.set_level(req.log_level)
            except ValueError as e:
                return pb.CtlReply(error=str(e))
            return pb.CtlReply(message="log level %s" % req.log_level)
        return pb.CtlReply(error="unknown request")

    def describe(self, port, with_counters):
        neg = port.vmm_features
        st = pb.InterfaceStatus(
            vm=port.iface.vm, name=port.key, state=port.state, socket=port.iface.socket,
            tap=port.tap_name or "", lladdr=port.iface.lladdr or "",
            address=str(port.address.guest) if port.address else "",
            queues=1, policy_features=features.offer(port.iface.offload, features.TUN_F_ALL),
            tap_features=port.tap_caps, vmm_features=neg, negotiated=neg & port.offered,
            offered=port.offered, restarts=port.restarts,
            worker_pids=[w.pid for w in port.workers.values() if w.pid],
            lease=port.lease or "")
        sw = features.software_mode(port.iface.offload, neg)
        st.tx_path = tx_path(sw)
        st.rx_path = "software checksum" if sw.rx_csum else "passthrough"
        if with_counters:
            for name, value in sorted(port.counters().items()):
                st.counters.add(name=name, value=value)
        return st


def tx_path(sw):
    done = (["checksum"] if sw.tx_csum else []) + sorted(sw.tx_segment)
    return "software " + ",".join(done) if done else "passthrough"


def peer_uid(conn):
    creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    _pid, uid, _gid = struct.unpack("3i", creds)
    return uid

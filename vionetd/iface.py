"""Run by the parent (root): one VM interface's tap, socket and links, started and stopped.

The parent owns, per VM interface:
- the tap, opened here (one fd per queue pair, IFF_MULTI_QUEUE when there
  are several) and configured with pyroute2 (links.py): MTU (the configured
  one, or its bridge's; never the guest's), bridge, up,
  and for a local interface its address and DHCP lease (dhcp.restore),
  and its IPv6 (iface6.py) unless inet6 is off; a locked one also gets
  its kernel filter (nftfilter.py), removed at stop;
- the listening vhost-user socket, created here and handed to the session;
  in client mode (the VMM listens) the session's channel connects to the
  VMM's socket when the session asks and hands over the connection;
- its processes (children.py), its end of the session's channel
  (session_channel.py) and what the VMM's requests do to the tap
  (tap_requests.py), each an attribute of the Interface.

start() opens and configures all that and forks the session: at once, or,
while killed processes of a stopped interface still hold the tap's name,
once they have exited (exiting.py; vionetctl shows it "restarting"
meanwhile); `started` then says how it went. stop() closes the fds and
kills the processes, and waits for nothing.

Invariants: the parent never reads a byte a VMM wrote; it closes its tap
fds before it kills the workers that share them, so that the tap's deletion
(an RCU wait of some milliseconds in the last close) is done by an exiting
worker, not by the parent, whenever a worker is there.
"""
import os

from vionetd import dhcp, features, links, nftfilter, tap, vmmsocket
from vionetd.iface6 import Inet6
from vionetd import vionetd_pb2 as pb
from vionetd.children import Children
from vionetd.eventloop import Reply
from vionetd.log import log
from vionetd.tap_requests import TapRequests

AUTO_TAP = "vio%d"            # the kernel picks the number
NO_SESSION = pb.SessionState(state="waiting")     # before the first session reports


class Interface:
    def __init__(self, parent, iface, conf):
        self.parent = parent
        self.iface = iface
        self.conf = conf
        self.key = iface.key
        self.tap_fds = []           # one per queue pair
        self.tap_name = None
        self.tap_caps = 0           # TUN_F_* the kernel accepts
        self.tap_mac = None         # the host side's MAC, source of DHCP replies
        self.tap_mtu = 0            # set once: the configured MTU or the bridge's
        self.offered = 0
        self.listener = None
        self.address = None         # local interfaces: local.Addresses
        self.lease = None
        self.address6 = None        # local interfaces with IPv6: local6.Addresses6
        self.lease6 = None
        self.inet6 = Inet6(self)
        self.filtered = None        # the tap whose nftables filter is ours (nftfilter.py)
        self.reason = ""
        self.ident = None           # (uid, gid) of its processes (uids.py), once opened
        self.started = Reply()      # set once: None, or why it could not start
        self.waiting = None         # exiting.Wait, while the tap name is held
        self.stopping = False
        self.children = Children(self)
        self.channel = None         # SessionChannel of the current session
        self.tap = TapRequests(self)

    # ---- life cycle -----------------------------------------------------

    def start(self):
        """Start now, or once no exiting process holds the tap's name."""
        self.waiting = self.parent.exiting.when_free(self.key, self.iface.name, self._start_now)

    def _start_now(self):
        self.waiting = None
        try:
            self._open()
        except Exception as e:          # one VM's trouble does not stop the others
            why = e.strerror if isinstance(e, OSError) and e.strerror else e
            log.error("%s: cannot start: %s", self.key, why)
            self.started.set("%s: cannot start: %s" % (self.key, why))
            self.stop()
            return
        self.started.set(None)

    def _open(self):
        self.ident = self.parent.ids.of(self.conf, self.iface.vm)
        self._open_tap()
        self._configure_link()
        self.offered = features.offer(self.iface.offload, self.tap_caps, self.queue_pairs)
        if not self.client_mode:
            self._listen()
        self.children.spawn_session()
        log.info("%s: tap %s, socket %s, offering %#x", self.key, self.tap_name,
                 self.iface.socket, self.offered)

    def _open_tap(self):
        multi = self.queue_pairs > 1
        fd, self.tap_name = tap.open_tap(self.iface.name or AUTO_TAP, multi_queue=multi)
        self.tap_fds = [fd]
        for _ in range(1, self.queue_pairs):
            self.tap_fds.append(tap.open_tap(self.tap_name, multi_queue=True)[0])
        self.tap_caps = tap.probe_offloads(self.tap_fd)
        tap.set_offload(self.tap_fd, 0)
        if self.locked_mac:
            tap.set_rx_filter(self.tap_fd, self.locked_mac)
            nftfilter.lock(self.tap_name, self.locked_mac)
            self.filtered = self.tap_name

    def _configure_link(self):
        """The tap's MTU is the configured one or, on a switch without one,
        the bridge's (a bridge follows its smallest port: the tap must not
        lower it); nothing a VMM sends changes it (tap_requests.py)."""
        bridge = self.iface.switch and self.conf.switches[self.iface.switch].bridge
        mtu = self.iface.mtu or (bridge_mtu(bridge) if bridge else 0)
        if mtu:
            links.set_mtu(self.tap_name, mtu)
        self.tap_mtu = mtu or links.get_mtu(self.tap_name)
        if bridge:
            links.attach_to_bridge(self.tap_name, bridge)
        links.set_up(self.tap_name)
        self.tap_mac = links.get_mac(self.tap_name)
        if self.iface.local:
            from vionetd import local
            taken = {p.address.host for p in self.parent.ports.values() if p.address}
            self.address = local.addresses(self.conf.local_prefix, self.key, taken)
            links.add_address(self.tap_name, str(self.address.host), 31)
            dhcp.restore(self)          # a lease from before a restart
            if self.iface.inet6:
                self.inet6.configure()

    def _listen(self):
        i = self.iface
        self.listener = vmmsocket.listen(i.socket, i.socket_owner, i.socket_group,
                                         i.socket_mode)

    def stop(self):
        """Forget a start still waiting, close the tap's fds, kill the
        processes and hand those not reaped yet to the parent's Exiting
        (they hold the tap until they exit), close the socket."""
        self.stopping = True
        self.inet6.stop()
        if self.waiting is not None:
            self.waiting.cancel()
            self.waiting = None
            self.started.set(None)
        for fd in self.tap_fds:
            os.close(fd)            # the tap is not persistent: its last fd deletes it
        self.tap_fds = []
        nftfilter.release(self)
        self.children.stop()
        if self.parent is not None and self.tap_name:
            self.parent.exiting.killed(self.tap_name, self.children.exiting)
        if self.listener:               # (client mode: the socket is the VMM's)
            self.listener.close()
            self.listener = None
            try:
                os.unlink(self.iface.socket)
            except OSError:
                pass

    # ---- what the parts, vionetctl and DHCP see -------------------------

    @property
    def queue_pairs(self):
        return getattr(self.iface, "queues", None) or 1

    @property
    def tap_fd(self):
        """The fd device-wide tap ioctls go to (offloads, filter)."""
        return self.tap_fds[0] if self.tap_fds else None

    @property
    def client_mode(self):
        return self.iface.connect

    @property
    def vmm_ident(self):
        """(uid, gid) the VMM must have, each None if not configured."""
        vm = self.conf.vms[self.iface.vm]
        return vm.vmm_user, vm.vmm_group

    @property
    def dial_groups(self):
        """Client mode: the supplementary groups the parent connects with
        (vmmsocket.connect): the VMM's group if configured, else none."""
        group = self.vmm_ident[1]
        return [group] if group is not None else []

    @property
    def locked_mac(self):
        """The lladdr as 6 bytes when the interface is locked to it, else b""."""
        if self.iface.locked and self.iface.lladdr:
            return bytes.fromhex(self.iface.lladdr.replace(":", ""))
        return b""

    @property
    def state(self):
        if self.children.session_pid is None:
            return "restarting" if not self.stopping else "stopped"
        return self.session.state

    @property
    def session(self):
        """What the current (or last) session reported."""
        return self.channel.session if self.channel is not None else NO_SESSION

    @property
    def limits(self):
        """rate tx|rx as the workers take them (pb.Limits)."""
        return pb.Limits(tx=rate_message(self.iface.rate_tx), rx=rate_message(self.iface.rate_rx))

    def change_in_place(self, iface, conf, changes):
        """A reload kept this interface (its new block iface, under conf):
        changes, a subset of {"ownership", "rates"}, are applied to the
        socket and sent to the session (which gives each worker its rate);
        the VMM sees nothing."""
        if "ownership" in changes:
            vmmsocket.apply_ownership(iface.socket, iface.socket_owner, iface.socket_group,
                                      iface.socket_mode)
            log.info("%s: socket owner, group or mode changed", self.key)
        self.iface, self.conf = iface, conf     # e.g. dns: the next DHCP answer has it
        if "rates" in changes and self.channel is not None:
            self.channel.send(limits=self.limits)
            log.info("%s: rate limits changed", self.key)

    def request_stats(self, done):
        """Ask the session for counters; done({name: value}) is called with
        them, or with {} if there is no session to answer."""
        if self.channel is None:
            done({})
        else:
            self.channel.request_stats(done)


def bridge_mtu(bridge):
    """The bridge's MTU, or 0 if there is no such bridge (attaching to it
    then says so)."""
    try:
        return links.get_mtu(bridge)
    except links.LinkError:
        return 0


def rate_message(rate):
    """A config.Rate as pb.Rate: bits to bytes per second."""
    return pb.Rate(bytes_per_s=rate.bits // 8, burst_bytes=rate.burst, frames_per_s=rate.pps)

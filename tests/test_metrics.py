"""Prometheus metrics: `vionetctl stats --prometheus` and the metrics process's /metrics.

- The text parses with a real Prometheus parser (prometheus_client's), every
  family has HELP and TYPE, counters end in _total, and every counter of
  `stats --json` is there, per queue pair, with its value; limits, state,
  offloads, restarts, processes' CPU and memory are there too.
- `metrics listen`: GET /metrics answers the same text from a process that
  is not root; any other method, path, or a request that does not parse or
  is too long is refused; a reload moves it or removes it.
- 200 connections that hang, and a client that floods GET /metrics, do not
  slow the daemon: a VM's vhost-user round trip through the parent
  (SET_FEATURES with REPLY_ACK) and vionetctl status stay under 50 ms.
"""
import json
import os
import socket
import sys
import time

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests import netns as N
from tests.daemon import daemon
from tests.test_reload import RoundTrips, forked_loop
from tests.test_zygote import libc_base
from tests.test_vionetctl import wait_for
from tests.testvm import TestVM
from vionetd import counters, prometheus, vionetctl
from vionetd import vionetd_pb2 as pb

pytestmark = pytest.mark.root

PORT = 9469
CONF = """socket "@CTL@"
metrics listen 127.0.0.1:%(port)d
vm "a" {
    interface {
        socket "@DIR@/a.sock"
        lladdr 52:54:00:12:34:56
        rate tx 200M
        rate rx 100M burst 1M pps 20k
    }
}
vm "b" {
    interface {
        socket "@DIR@/b.sock"
        queues 2
    }
}
"""
STALL_BOUND = 0.050
HANGING = 200


def families(text):
    """{family name: prometheus_client Metric}, parsed."""
    return {f.name: f for f in text_string_to_metric_families(text)}


def samples(fams):
    """{(sample name, frozenset(labels)): value}"""
    return {(s.name, frozenset(s.labels.items())): s.value
            for f in fams.values() for s in f.samples}


@pytest.fixture(scope="module")
def rig():
    with N.netns("met") as ns:
        N.disable_ipv6(ns)
        N.ns_run(ns, "ip", "link", "set", "lo", "up")
        with daemon(CONF % dict(port=PORT), ns) as d:
            d.wait_socket(d.dir + "/a.sock")
            d.wait_socket(d.dir + "/b.sock")
            with TestVM(d.dir + "/a.sock") as vm:
                yield d, ns, vm


def http(ns, request, timeout=5.0):
    """The whole answer to one request (bytes)."""
    with N.inside(ns):
        s = socket.create_connection(("127.0.0.1", PORT), timeout=timeout)
    with s:
        s.sendall(request)
        out = b""
        while chunk := s.recv(1 << 16):
            out += chunk
    return out


def test_exposition_parses_and_has_every_counter(rig):
    d, _, vm = rig
    vm.post_rx(4, 2048)
    js = d.stats()
    text = d.ctl("stats", "--prometheus").stdout
    fams = families(text)
    for name, f in fams.items():
        assert "# HELP %s " % (name + ("_total" if f.type == "counter" else "")) in text
        assert f.type in ("counter", "gauge")
    got = samples(fams)
    for key, iface in js.items():
        vmname, index = key.split("/")
        for qp, named in enumerate(iface["queue_pairs"]):
            for cname, value in named.items():
                fam, extra, _ = counters.family(cname)
                labels = dict(vm=vmname, interface=index, queue=str(qp), **extra)
                sample = ("vionetd_" + fam + "_total", frozenset(labels.items()))
                assert sample in got, (key, cname)
                assert got[sample] >= value                 # counters only grow
    for want in ("vionetd_session_state", "vionetd_offloads_info", "vionetd_worker_restarts",
                 "vionetd_process_cpu_seconds", "vionetd_process_resident_memory_bytes",
                 "vionetd_rate_limit_bits_per_second", "vionetd_tap_dropped_frames",
                 "vionetd_rx_bytes", "vionetd_tx_refused_frames", "vionetd_tx_dropped_frames"):
        assert want in fams, want
    a = dict(vm="a", interface="0")
    assert got[("vionetd_session_state", frozenset(dict(a, state="running").items()))] == 1
    assert got[("vionetd_rate_limit_bits_per_second",
                frozenset(dict(a, direction="tx").items()))] == 200e6
    assert got[("vionetd_rate_limit_packets_per_second",
                frozenset(dict(a, direction="rx").items()))] == 20e3
    assert got[("vionetd_process_resident_memory_bytes",
                frozenset(dict(a, process="tx").items()))] > 1 << 20


def test_label_values_are_escaped():
    reply = pb.CtlReply(interfaces=[pb.InterfaceStatus(
        vm="a", name="a/0", socket='/run/"q"\\\n.sock', state="running")])
    fams = families(prometheus.exposition(reply))
    info = fams["vionetd_interface_info"].samples[0]
    assert info.labels["socket"] == '/run/"q"\\\n.sock'


def test_http_get_metrics(rig):
    d, ns, _ = rig
    head, _, body = http(ns, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 ")
    assert b"Content-Type: text/plain; version=0.0.4" in head
    assert int(head.split(b"Content-Length: ")[1].split(b"\r\n")[0]) == len(body)
    fams = families(body.decode())
    assert "vionetd_rx_frames" in fams and "vionetd_session_state" in fams


@pytest.mark.parametrize("request_bytes,status", [
    (b"POST /metrics HTTP/1.1\r\nContent-Length: 0\r\n\r\n", 405),
    (b"HEAD /metrics HTTP/1.1\r\n\r\n", 405),
    (b"GET / HTTP/1.1\r\n\r\n", 404),
    (b"GET /metrics/../etc HTTP/1.1\r\n\r\n", 404),
    (b"hello\r\n\r\n", 400),
    (b"GET /metrics SPDY/3\r\n\r\n", 400),
    (b"GET /metrics HTTP/1.1\r\nX: " + b"y" * 5000, 400),
])
def test_http_refuses_the_rest(rig, request_bytes, status):
    _, ns, _ = rig
    assert http(ns, request_bytes).startswith(b"HTTP/1.1 %d " % status)


def test_metrics_process_is_confined_and_exec_d(rig):
    """Unprivileged, seccomp'd, the parent's child, and exec'd: its libc
    is not where the root parent's is (a fork would share the address)."""
    d, _, _ = rig
    pids = [p for p in os.listdir("/proc") if p.isdigit()]
    for p in pids:
        try:
            with open("/proc/%s/cmdline" % p, "rb") as f:
                if not f.read().startswith(b"vionetd: metrics"):
                    continue
            with open("/proc/%s/status" % p) as f:
                status = dict(line.split(":", 1) for line in f if ":" in line)
        except OSError:
            continue
        assert status["Uid"].split()[0] != "0" and status["Seccomp"].strip() == "2"
        assert int(status["PPid"]) == d.proc.pid
        assert libc_base(int(p)) != libc_base(d.proc.pid)
        return
    pytest.fail("no metrics process")


def hang(ns, n):
    """n connections to the endpoint that say nothing, or half a request."""
    socks = []
    with N.inside(ns):
        for k in range(n):
            s = socket.socket()
            s.setblocking(False)
            try:
                s.connect(("127.0.0.1", PORT))
            except BlockingIOError:
                pass
            socks.append(s)
    for k, s in enumerate(socks):
        if k % 2:
            try:
                s.send(b"GET /met")
            except OSError:
                pass
    return socks


def test_hanging_and_flooding_clients_do_not_slow_the_daemon(rig):
    d, ns, vm = rig
    status = pb.CtlRequest(status=True)

    def flood():
        try:
            http(ns, b"GET /metrics HTTP/1.1\r\n\r\n", timeout=2)
        except OSError:
            pass
    ctl = RoundTrips(lambda: vionetctl.request(d.ctl_socket, status, timeout=5))
    vhost = RoundTrips(lambda: vm.fe.set_features(vm.features) == 0 or 1 / 0)
    socks = hang(ns, HANGING)
    switch_interval = sys.getswitchinterval()
    sys.setswitchinterval(0.0005)
    try:
        with forked_loop(flood, seconds=30), ctl, vhost:
            time.sleep(3)
    finally:
        sys.setswitchinterval(switch_interval)
        for s in socks:
            s.close()
    for probe in (ctl, vhost):
        assert probe.error is None, repr(probe.error)
        took = [t for _, t in probe.calls]
        assert len(took) > 50
        print("%d round trips, worst %.1f ms" % (len(took), max(took) * 1e3))
        assert max(took) < STALL_BOUND
    # the endpoint still answers once they are gone
    assert http(ns, b"GET /metrics HTTP/1.1\r\n\r\n").startswith(b"HTTP/1.1 200 ")


def test_reload_moves_and_removes_the_endpoint(rig):
    d, ns, _ = rig
    text = open(d.conf).read()
    try:
        with open(d.conf, "w") as f:
            f.write(text.replace("127.0.0.1:%d" % PORT, "127.0.0.1:%d" % (PORT + 1)))
        d.ctl("reload")
        with N.inside(ns):
            wait_for("the new port", lambda: socket.create_connection(
                ("127.0.0.1", PORT + 1), timeout=2).close() or True)
            with pytest.raises(ConnectionRefusedError):
                socket.create_connection(("127.0.0.1", PORT), timeout=2)
        with open(d.conf, "w") as f:
            f.write(text.replace("metrics listen 127.0.0.1:%d\n" % PORT, ""))
        d.ctl("reload")
        with N.inside(ns), pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", PORT + 1), timeout=2)
    finally:
        with open(d.conf, "w") as f:
            f.write(text)
        d.ctl("reload")
    with N.inside(ns):
        wait_for("the port back", lambda: socket.create_connection(
            ("127.0.0.1", PORT), timeout=2).close() or True)
    assert "Traceback" not in d.log()
    assert json.loads(d.ctl("stats", "--json").stdout)["a/0"]["state"] == "running"

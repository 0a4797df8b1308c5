#!/bin/sh
# demo.sh: the main job, end to end (make demo).
#
# Starts vionetd on etc/vionetd.conf, boots a real Linux guest (the project's
# image, QEMU 10) attached over vhost-user to the local interface of VM
# "local1", and shows the guest getting its address by DHCP from vionetd and
# its IPv6 address from vionetd's router advertisements (SLAAC), pinging the
# host over both, and a throughput run; then vionetd's status, and cleans
# up. vionetd runs in a network namespace of the demo's own, so its taps
# and the bridge the example configuration names (vbr0) touch nothing else.
set -eu
cd "$(dirname "$0")/.."

NS=vionetd-demo
PY=.venv/bin/python
RUN=$(mktemp -d /tmp/vionetd-demo.XXXXXX)
PIDFILE=$RUN/vionetd.pid
CTL=/run/vionetd.sock       # the example configuration's control socket

cleanup() {
	set +e                  # clean up all there is, whatever fails
	[ -f "$PIDFILE" ] && kill "$(cat "$PIDFILE")" 2>/dev/null
	for p in $(ip netns pids "$NS" 2>/dev/null); do kill "$p" 2>/dev/null; done
	sleep 1
	ip netns del "$NS" 2>/dev/null || true
	rm -rf "$RUN"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

step() { printf '\n==> %s\n' "$*"; }

step "checking etc/vionetd.conf"
$PY -m vionetd.main -n -f etc/vionetd.conf

step "starting vionetd in network namespace $NS"
ip netns add "$NS"
ip -n "$NS" link set lo up
ip -n "$NS" link add vbr0 type bridge      # the switch "uplink" of the example
ip -n "$NS" link set vbr0 up
# The demo's DHCP leases stay in its own directory, removed at the end.
VIONETD_LEASES=$RUN/leases ip netns exec "$NS" $PY -m vionetd.main -d -f etc/vionetd.conf -p "$PIDFILE" \
	2> "$RUN/vionetd.log" &
for _ in $(seq 50); do [ -S /run/vionetd/local1.sock ] && break; sleep 0.2; done
[ -S /run/vionetd/local1.sock ] || { cat "$RUN/vionetd.log"; exit 1; }
$PY -m vionetd.vionetctl -s $CTL status

# The host's side of local1's tap has the first address of its /31, and
# the address ::1 of its /64 (ADDRESS6 in the status).
ip netns exec "$NS" iperf3 -s -D --logfile "$RUN/iperf3.log"
HOST6=$($PY -m vionetd.vionetctl -s $CTL status | awk '$1 == "local1" { print $7 }' |
	sed 's|::/64$|::1|')

# In the guest, after DHCP: the router it was given is the host's side.
# Each plan runs in a subshell: a plan ends with exit. The result
# demo.show_now tells the host to run vionetctl show: the guest is then
# connected, and busy with iperf3 for 8 more seconds.
SNIPPET='H=$(ip route | awk "/^default/ { print \$3; exit }")
(VIONET_HOST=$H; . /plans/ping.sh)
result demo.show_now 1
(VIONET_HOST=$H; VIONET_IPERF_SECS=8; . /plans/iperf.sh)'

step "booting a guest on vionetd (QEMU $($PY -c 'from tests import guest; print(guest.accel())'))"
$PY - "$SNIPPET" "$PY -m vionetd.vionetctl -s $CTL show local1" "$HOST6" <<'EOF'
import subprocess, sys
from tests import guest
g = guest.Guest(kernel="6.12", qemu="10", netdev=guest.VhostUser("/run/vionetd/local1.sock"),
                plan=["dhcp", "slaac"], snippet=sys.argv[1], timeout=600,
                params={"host6": sys.argv[3]})
with g:
    g.wait_for(r"demo\.show_now=", 600)
    print("\n==> vionetctl show local1, while the guest runs")
    show = subprocess.run(sys.argv[2].split(), capture_output=True, text=True, timeout=30)
    print(show.stdout + show.stderr, end="")
    res = g.wait_done()
print("\n==> what the guest saw")
for key in ("dhcp.ip", "dhcp.router", "dhcp.lease", "dhcp.hostname", "ping.sent",
            "ping.received", "slaac.addr", "slaac.route", "ping6.sent", "ping6.received",
            "iperf.mbps"):
    print("  %-14s %s" % (key, res.get(key)))
# what show printed must be the connected guest: running, features negotiated
first = show.stdout.splitlines()[0] if show.stdout else ""
negotiated = [l for l in show.stdout.splitlines() if l.split()[:1] == ["negotiated"]]
if ": running," not in first or not negotiated or int(negotiated[0].split()[1], 16) == 0:
    print("demo: vionetctl show did not see the guest running with negotiated features")
    sys.exit(1)
sys.exit(0 if res["rc"] == 0 else 1)
EOF

step "vionetd's log"
cat "$RUN/vionetd.log"

#!/bin/sh
# libvirt.sh: install Debian's libvirt (daemons and virsh) for
# tests/test_libvirt.py. Idempotent and non-interactive; called by
# scripts/setup.sh and by the test's fixture.
#
# libvirt-daemon-system creates the user libvirt-qemu (group kvm) that
# QEMU runs as, and the configuration under /etc/libvirt; no daemon is
# started here: the test starts the ones it needs and stops them.
set -eu
export DEBIAN_FRONTEND=noninteractive
need=""
for p in libvirt-daemon-system libvirt-daemon-driver-qemu libvirt-clients; do
	dpkg -s "$p" >/dev/null 2>&1 || need="$need $p"
done
[ -n "$need" ] || exit 0
apt-get update -qq
# policy-rc.d 101: the packages' maintainer scripts must not start services
# (there may be no init system to start them with).
prc=/usr/sbin/policy-rc.d
own_prc=0
if [ ! -e "$prc" ]; then
	printf '#!/bin/sh\nexit 101\n' > "$prc"
	chmod 755 "$prc"
	own_prc=1
fi
rc=0
apt-get install -y -qq --no-install-recommends $need || rc=$?
[ "$own_prc" = 1 ] && rm -f "$prc"
exit $rc

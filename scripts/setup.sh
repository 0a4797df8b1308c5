#!/bin/sh
# setup.sh: install everything vionetd and its tests need, from nothing.
#
# Idempotent and non-interactive: Debian packages (liburing for the tx
# worker's io_uring and the benchmark tool, nftables for a locked
# interface's kernel filter (libnftables; nft for operators), QEMU, iproute2,
# tools for the guest image, systemd-analyze for the unit's test, tmux for
# vionetctl top's test, libvirt through
# scripts/libvirt.sh, clang with libFuzzer and llvm-cov for fuzz/), QEMU 10
# from bookworm-backports (it knows USO), and a Python virtual environment in
# .venv with the package installed editable, which builds the C core through
# cffi (the test extras include atheris, for fuzz/py/).
#
# The backports entry is derived from the machine's own Debian sources file:
# same URIs and keyring, suite bookworm-backports. No host name is written here.
set -eu
cd "$(dirname "$0")/.."

export DEBIAN_FRONTEND=noninteractive
STAMP=.venv/.setup-done

debian_packages() {
	need=""
	for p in gcc make libseccomp2 iproute2 iputils-ping ethtool \
	    mandoc qemu-system-x86 qemu-utils busybox-static iperf3 cpio \
	    kmod tcpdump procps psmisc systemd util-linux \
	    clang llvm libclang-rt-14-dev liburing-dev tmux nftables; do
		dpkg -s "$p" >/dev/null 2>&1 || need="$need $p"
	done
	if [ -n "$need" ]; then
		apt-get update -qq
		apt-get install -y -qq --no-install-recommends $need
	fi
}

python_env() {
	[ -x .venv/bin/python ] || python3 -m venv .venv
	.venv/bin/pip install -q --upgrade pip
	.venv/bin/pip install -q -e '.[test]'
}

daemon_user() {
	# The workers' unprivileged user (vionetd.conf "user", default _vionetd).
	getent passwd _vionetd >/dev/null ||
	    useradd --system --no-create-home --home-dir /var/empty \
	        --shell /usr/sbin/nologin _vionetd
	mkdir -p /var/empty
	chmod 755 /var/empty
}

sh scripts/backports.sh
debian_packages
# libvirt, for tests/test_libvirt.py (its daemons are started by the test)
sh scripts/libvirt.sh
daemon_user
python_env
# The guest image (kernels, QEMU 10, initramfs) is built by its own script.
if [ -x scripts/guest-image.sh ]; then scripts/guest-image.sh; fi
touch "$STAMP"

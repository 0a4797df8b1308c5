#!/bin/sh
# guest-image.sh: build the test guests and the QEMU 10 that boots them.
#
# Outputs (all under guest/out/, which git ignores):
#   vmlinuz-6.12  initrd-6.12.gz   Debian bookworm-backports kernel (knows USO)
#   vmlinuz-6.1   initrd-6.1.gz    Debian bookworm's own kernel (the older guest)
#   qemu10/       QEMU 10 from bookworm-backports, unpacked beside the
#                 system's QEMU 7.2 (run it with -L qemu10/usr/share/qemu)
#   bin/          the static guest tools (GUEST_TOOLS, from tools/), usable on
#                 the host too
#   kernels.txt   which Debian kernel each short name is
#
# The initramfs is generic: busybox, iperf3, ethtool, dhcpcd (a DHCPv6
# client: Debian's busybox has no udhcpc6), the virtio-net module
# closure, guest/init and guest/plans; what a run does is on the kernel
# command line (see guest/init).
#
# Idempotent and non-interactive.  A stamp holds a hash of every input; when
# it matches and the outputs exist, the script exits at once.  Downloaded
# packages stay in guest/out/debs and are reused; remove that directory and
# guest/out/.stamp to pick up newer ones.  Packages are fetched with
# apt-get download and unpacked with dpkg -x: nothing on the host is
# installed or replaced but the few tools listed in need_tools.
# The backports entry is derived from the machine's own Debian sources
# (same awk as scripts/setup.sh); no host name is written anywhere.
set -eu
cd "$(dirname "$0")/.."
export DEBIAN_FRONTEND=noninteractive LC_ALL=C

OUT=guest/out
STAMP=$OUT/.stamp
BPO=bookworm-backports
# The tools the guest runs; tools/vhostbench.c is the host's benchmark tool,
# built by bench/backend.py.
GUEST_TOOLS="udpgso_send"

die() { echo "guest-image: $*" >&2; exit 1; }

inputs_hash() {
	cat scripts/guest-image.sh guest/init guest/lib/*.sh guest/plans/*.sh \
	    $(for n in $GUEST_TOOLS; do echo tools/$n.c; done) | sha256sum | cut -d' ' -f1
}

up_to_date() {
	[ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$(inputs_hash)" ] || return 1
	for f in vmlinuz-6.12 initrd-6.12.gz vmlinuz-6.1 initrd-6.1.gz \
	    qemu10/usr/bin/qemu-system-x86_64; do
		[ -f "$OUT/$f" ] || return 1
	done
}

need_tools() {
	need=""
	for p in busybox-static iperf3 ethtool dhcpcd-base cpio kmod gcc libc6-dev xz-utils; do
		dpkg -s "$p" >/dev/null 2>&1 || need="$need $p"
	done
	if [ -n "$need" ]; then
		apt-get -o DPkg::Lock::Timeout=300 update -qq
		apt-get -o DPkg::Lock::Timeout=300 install -y -qq \
		    --no-install-recommends $need
	fi
	# The backports index must be known before we can ask it anything.
	if ! apt-cache policy linux-image-amd64 | grep -q "$BPO"; then
		apt-get -o DPkg::Lock::Timeout=300 update -qq
	fi
	apt-cache policy linux-image-amd64 | grep -q "$BPO" ||
	    die "$BPO is not in apt's lists"
}

# fetch PKG[/SUITE]...: download into $OUT/debs unless already there.
fetch() {
	for spec in "$@"; do
		name=${spec%%/*}
		ls "$OUT/debs/${name}_"*.deb >/dev/null 2>&1 && continue
		(cd "$OUT/debs" && apt-get download -q "$spec" 2>&1 |
		    grep -v -e unsandboxed -e '^Get:' -e '^Fetched' || true)
		ls "$OUT/debs/${name}_"*.deb >/dev/null 2>&1 ||
		    die "could not download $spec"
	done
}

# The versioned kernel package the linux-image-amd64 metapackage points to.
kernel_pkg() {
	apt-cache $1 depends linux-image-amd64 |
	    awk '/Depends: linux-image-[0-9]/ { print $2; exit }'
}

qemu10() {
	fetch qemu-system-x86/$BPO qemu-system-data/$BPO seabios/$BPO
	q=$OUT/qemu10
	if [ ! -x $q/usr/bin/qemu-system-x86_64 ]; then
		rm -rf $q.tmp
		mkdir -p $q.tmp
		for p in qemu-system-x86 qemu-system-data seabios; do
			dpkg -x "$OUT/debs/${p}_"*.deb $q.tmp
		done
		rm -rf $q
		mv $q.tmp $q
	fi
	# Shared libraries bookworm lacks would show here; none did (10.0.2).
	if ldd $q/usr/bin/qemu-system-x86_64 | grep -q 'not found'; then
		ldd $q/usr/bin/qemu-system-x86_64 | grep 'not found' >&2
		die "QEMU 10 needs libraries this system lacks"
	fi
}

tools() {
	mkdir -p $OUT/bin
	for n in $GUEST_TOOLS; do
		gcc -static -O2 -Wall -Wextra -o "$OUT/bin/$n" "tools/$n.c"
	done
}

# copy_bin STAGE FILE: a dynamic binary and the libraries ldd names.
copy_bin() {
	mkdir -p "$1$(dirname "$2")"
	cp -L "$2" "$1$2"
	ldd "$2" | awk '/=> \// { print $3 } /^\t\/lib/ { print $1 }' |
	while read -r lib; do
		mkdir -p "$1$(dirname "$lib")"
		cp -L "$lib" "$1$lib"
	done
}

# initramfs SHORT PKG: unpack the kernel, build initrd-SHORT.gz.
initramfs() {
	short=$1 pkg=$2
	kver=${pkg#linux-image-}
	fetch "$pkg"
	root=$OUT/k-$kver
	rm -rf "$root"
	dpkg -x "$OUT/debs/${pkg}_"*.deb "$root"
	# Debian builds modules.dep in postinst; do it here for the unpacked tree.
	depmod -b "$root" "$kver"

	stage=$OUT/stage-$short
	rm -rf "$stage"
	mkdir -p "$stage/bin" "$stage/lib/modules" "$stage/plans" "$stage/usr/bin"
	cp /bin/busybox "$stage/bin/busybox"
	cp guest/init "$stage/init"
	chmod 755 "$stage/init"
	cp guest/lib/*.sh "$stage/lib/"
	cp guest/plans/*.sh "$stage/plans/"
	cp "$OUT"/bin/* "$stage/usr/bin/"
	copy_bin "$stage" /usr/bin/iperf3
	copy_bin "$stage" /usr/sbin/ethtool
	copy_bin "$stage" /usr/sbin/dhcpcd
	mkdir -p "$stage/var/lib/dhcpcd" "$stage/run/dhcpcd" "$stage/etc"
	# dhcpcd separates its privileges into this user's processes
	echo "dhcpcd:x:100:65534::/nonexistent:/bin/false" > "$stage/etc/passwd"
	echo "root:x:0:0::/:/bin/sh" >> "$stage/etc/passwd"

	# The driver's module closure, in the order modprobe would load it;
	# built-in ones (6.12 has virtio_pci built in) print as "builtin".
	: > "$stage/lib/modules/load.list"
	for m in virtio_pci virtio_net; do
		modprobe -d "$root" -S "$kver" --show-depends "$m"
	done | awk '$1 == "insmod" { print $2 }' |
	while read -r ko; do
		n=$(basename "$ko")
		n=${n%.xz}
		grep -qx "$n" "$stage/lib/modules/load.list" && continue
		case "$ko" in
		*.xz) xz -dc "$ko" > "$stage/lib/modules/$n" ;;
		*) cp "$ko" "$stage/lib/modules/$n" ;;
		esac
		echo "$n" >> "$stage/lib/modules/load.list"
	done

	(cd "$stage" && find . | sort | cpio -o -H newc -R 0:0 --quiet) |
	    gzip -6 > "$OUT/initrd-$short.gz.tmp"
	mv "$OUT/initrd-$short.gz.tmp" "$OUT/initrd-$short.gz"
	cp "$root/boot/vmlinuz-$kver" "$OUT/vmlinuz-$short"
	# The unpacked tree is big (400 MB for 6.1); the deb stays for rebuilds.
	rm -rf "$stage" "$root"
	echo "$short $kver" >> "$OUT/kernels.txt.tmp"
}

if up_to_date; then
	exit 0
fi
mkdir -p $OUT/debs
sh "$(dirname "$0")/backports.sh"
need_tools
qemu10
tools
rm -f $OUT/kernels.txt.tmp
k612=$(kernel_pkg "-t $BPO")
k61=$(kernel_pkg "")
case "$k612" in linux-image-6.12*) ;; *) die "backports kernel is $k612, not 6.12" ;; esac
case "$k61" in linux-image-6.1.*) ;; *) die "bookworm kernel is $k61, not 6.1" ;; esac
initramfs 6.12 "$k612"
initramfs 6.1 "$k61"
mv $OUT/kernels.txt.tmp $OUT/kernels.txt
inputs_hash > "$STAMP"
echo "guest-image: built $(tr '\n' ' ' < $OUT/kernels.txt)in $OUT"

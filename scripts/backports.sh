#!/bin/sh
# backports.sh: add bookworm-backports (QEMU 10, the 6.12 kernel) to apt.
#
# The entry is derived from the machine's own Debian sources file: the first
# stanza whose Suites has plain "bookworm", its URIs and keyring kept, suite
# bookworm-backports. No host name is written here. Idempotent.
set -eu
src=/etc/apt/sources.list.d/debian.sources
dst=/etc/apt/sources.list.d/vionetd-backports.sources
[ -f "$dst" ] && exit 0
[ -f "$src" ] || { echo "backports: no $src to derive backports from" >&2; exit 1; }
awk '
	/^$/ { if (ok) exit; uris = ""; key = ""; next }
	/^URIs:/ { uris = $0 }
	/^Signed-By:/ { key = $0 }
	/^Suites:/ { for (i = 2; i <= NF; i++) if ($i == "bookworm") ok = 1 }
	END { if (ok) { print "Types: deb"; print uris;
		print "Suites: bookworm-backports"; print "Components: main";
		if (key != "") print key } }
' "$src" > "$dst.tmp"
grep -q '^URIs:' "$dst.tmp" || { rm -f "$dst.tmp"; echo "backports: no bookworm stanza in $src" >&2; exit 1; }
mv "$dst.tmp" "$dst"

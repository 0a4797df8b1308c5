# vionet.sh: helpers shared by the guest's init and its test plans.
#
# Sourced by busybox sh inside the test guest.  Everything a plan reports
# goes through result(), which prints one line
#     VIONET-RESULT key=value
# on the console; the host harness (tests/guest.py) parses exactly those.
# Keys are [A-Za-z0-9_.-]; values are one line without spaces (spaces are
# turned into '_'), so the host never has to guess where a value ends.

# (Helpers keep their variables local: plans have their own.)
result() {
	local key=$1 val
	shift
	val=$(printf '%s' "$*" | tr ' \n\t' '___')
	echo "VIONET-RESULT $key=$val"
}

# Print a note on the console, clearly separated from results.
note() {
	echo "VIONET-NOTE $*"
}

# key=value lines on stdin become results prefixed with "$1."
results_from() {
	local line
	while IFS= read -r line; do
		case "$line" in
		*=*) result "$1.${line%%=*}" "${line#*=}" ;;
		*) echo "  $line" ;;
		esac
	done
}

# The network interface under test: the first one that is not lo.
netif() {
	local d n
	for d in /sys/class/net/*; do
		n=${d##*/}
		[ "$n" = lo ] || { echo "$n"; return 0; }
	done
	return 1
}

# ethtool: the interface's offloads as the guest's kernel sees them.
# Results: ethtool.<feature>=on|off for every "ethtool -k" line.
out=$(ethtool -k "$IF") || exit 1
echo "$out" | while IFS= read -r line; do
	case "$line" in
	*:\ on* | *:\ off*)
		k=$(echo "${line%%:*}" | tr -d ' \t')
		v=$(echo "${line#*: }" | cut -d' ' -f1)
		result "ethtool.$k" "$v"
		;;
	esac
done

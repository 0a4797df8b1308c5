# netcount: the guest's side of a benchmark's cost, printed as results
# $1.KEY (default prefix netcount): irq_in, irq_out, irq_cfg (the virtio
# MSI-X lines of /proc/interrupts, summed over CPUs), kick_rx, kick_tx
# (the driver's per-queue rxN_kicks/txN_kicks of ethtool -S), rx/tx bytes and packets
# of /sys/class/net/$IF/statistics. bench/e2e.py sends this text inline.
p=${1:-netcount}
awk -v p=$p '/virtio/{n=0;for(i=2;i<=NF&&$i~/^[0-9]+$/;i++)n+=$i
k=/-input/?"in":/-output/?"out":"cfg";c[k]+=n}
END{for(k in c)print "VIONET-RESULT "p".irq_"k"="c[k]}' /proc/interrupts
ethtool -S $IF|awk -v p=$p '$1~/^(rx|tx)[0-9]+_kicks:/{k=substr($1,1,2);c[k]+=$2}
END{for(k in c)print "VIONET-RESULT "p".kick_"k"="c[k]}'
for s in rx_bytes tx_bytes rx_packets tx_packets;do
result $p.$s $(cat /sys/class/net/$IF/statistics/$s);done

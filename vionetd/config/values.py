"""Run by the parent and `vionetd -n`: vionetd.conf's statement arguments, checked.

One function per kind of argument (path, user, MAC address, number...). Each
takes the Token the grammar read and returns the value to store, or raises
ConfigError at the token's line saying what was expected.

Invariants:
- These functions only look at their token (and, for users and groups, at
  the system's user and group databases, so that vionetd -n reports an
  unknown one); they never read further tokens nor record anything.
- A value they return fits where the parent puts it: socket paths fit in
  sun_path, tap and bridge names in IFNAMSIZ, MAC addresses are unicast
  and lower case, host names are dot-separated labels of letters, digits
  and "-", 253 characters at most.
"""
from __future__ import annotations

import grp
import ipaddress
import os
import pwd
import re
from typing import Callable

from vionetd.config.lexer import Token

# sun_path is 108 bytes on Linux, one of them the terminating NUL.
SUN_PATH_MAX = 107
# IFNAMSIZ is 16 on Linux, one of them the terminating NUL.
IFNAME_MAX = 15
MTU_MIN, MTU_MAX = 68, 65535
MAX_QUEUES = 16          # queue pairs of one interface (vhost_user.MAX_QUEUE_PAIRS)
QUEUES_AUTO = min(os.cpu_count() or 1, MAX_QUEUES)   # "queues auto"

# Linux's dev_valid_name() refuses "/", ":" and white space; we keep to
# a plainer set so names survive shells and logs unquoted.
_IFNAME = re.compile(r"[A-Za-z0-9_.-]+\Z")
_MAC = re.compile(r"[0-9A-Fa-f]{2}(:[0-9A-Fa-f]{2}){5}\Z")
_LABEL = re.compile(r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?\Z")
_USER = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]{0,31}\Z")
_MODE = re.compile(r"0?[0-7]{3}\Z")
_RANGE = re.compile(r"([0-9]{1,10})-([0-9]{1,10})\Z")
UID_RANGE_MIN, UID_RANGE_MAX = 1000, 2 ** 31 - 2
OVERFLOW_UID = 65534             # nobody: never given to a VM


def abs_path(tok: Token, what: str) -> str:
    """An absolute path; what names the statement in the error."""
    if not tok.value.startswith("/"):
        tok.error('%s: expected an absolute path, got "%s"'
                  % (what, tok.value))
    return tok.value


def sock_path(tok: Token) -> str:
    """An absolute path that fits in a unix socket address."""
    path = abs_path(tok, "socket")
    if len(path.encode()) > SUN_PATH_MAX:
        tok.error("socket path longer than %d bytes: %s"
                  % (SUN_PATH_MAX, path))
    return path


def _name(tok: Token, what: str) -> str:
    """A user or group name (what says which) as useradd(8) allows."""
    if not _USER.match(tok.value):
        tok.error('bad %s name "%s"' % (what, tok.value))
    return tok.value


def user(tok: Token) -> str:
    """The user that workers run as: a well-formed name, not root.
    Not looked up in the user database here (known_user() is)."""
    name = _name(tok, "user")
    if name == "root":
        tok.error("user: workers must not run as root")
    return name


def _known(tok: Token, name: str, lookup: Callable, unknown: str) -> str:
    """name if lookup (getpwnam or getgrnam) finds it, else the error
    unknown % name at tok's line. Looked up now, so that vionetd -n
    reports a name the system does not know."""
    try:
        lookup(name)
    except KeyError:
        tok.error(unknown % name)
    return name


def known_user(tok: Token) -> str:
    """A user that VM processes run as: not root, and known to the system."""
    return _known(tok, user(tok), pwd.getpwnam, 'unknown user "%s"')


def user_range(tok: Token) -> tuple[int, int]:
    """user range LOW-HIGH: uids above the system's (1000 and more), below
    the overflow uid 65534 or above it, LOW <= HIGH, at most 2^31 - 2."""
    m = _RANGE.match(tok.value)
    if not m:
        tok.error('expected a uid range such as 70000-79999, got "%s"' % tok.value)
    low, high = int(m.group(1)), int(m.group(2))
    if low > high or low < UID_RANGE_MIN or high > UID_RANGE_MAX \
            or low <= OVERFLOW_UID <= high:
        tok.error("user range %d-%d: expected %d <= LOW <= HIGH <= %d, not "
                  "containing %d" % (low, high, UID_RANGE_MIN, UID_RANGE_MAX,
                                     OVERFLOW_UID))
    return low, high


def vmm_id(tok: Token, what: str) -> int:
    """vmm user / vmm group: a name the system knows, or a number."""
    if tok.value.isdigit():
        return int(tok.value)
    lookup = pwd.getpwnam if what == "user" else grp.getgrnam
    _known(tok, _name(tok, what), lookup, "vmm " + what + ': unknown ' + what + ' "%s"')
    return lookup(tok.value)[2]


def owner(tok: Token) -> str:
    """The owner of a socket vionetd creates: a user the system knows."""
    return _known(tok, _name(tok, "user"), pwd.getpwnam,
                  'socket owner: unknown user "%s"')


def group(tok: Token) -> str:
    """The group of a socket vionetd creates: a group the system knows."""
    return _known(tok, _name(tok, "group"), grp.getgrnam,
                  'socket group: unknown group "%s"')


def mode(tok: Token) -> int:
    """A socket's mode: three or four octal digits, returned as an int."""
    if not _MODE.match(tok.value):
        tok.error('bad socket mode "%s": expected three or four octal digits '
                  "such as 0660" % tok.value)
    return int(tok.value, 8)


def prefix(tok: Token) -> ipaddress.IPv4Network:
    """The local prefix: an IPv4 network with no host bits set (a bare
    address is taken as a /32) that holds at least one /31."""
    try:
        net = ipaddress.ip_network(tok.value, strict=False)
    except ValueError:
        tok.error('expected an IPv4 prefix such as 100.64.0.0/10, got "%s"'
                  % tok.value)
    if net.version != 4:
        tok.error("local prefix must be IPv4, got %s" % net)
    if str(net) != tok.value and "/" in tok.value:
        tok.error("local prefix %s has host bits set (did you mean %s?)"
                  % (tok.value, net))
    if net.prefixlen > 31:
        tok.error("local prefix %s too small: it must hold at least one /31"
                  % net)
    return net


def prefix6(tok: Token) -> ipaddress.IPv6Network:
    """The local IPv6 prefix: an IPv6 network with no host bits set, a /48
    or wider, from which each local interface gets a /64."""
    try:
        net = ipaddress.IPv6Network(tok.value, strict=False)
    except ValueError:
        tok.error('expected an IPv6 prefix such as fd12:3456:789a::/48, got "%s"'
                  % tok.value)
    if "/" not in tok.value:
        tok.error('local prefix6 "%s" needs a length, such as /48' % tok.value)
    if net.network_address != ipaddress.IPv6Interface(tok.value).ip:
        tok.error("local prefix6 %s has host bits set (did you mean %s?)"
                  % (tok.value, net))
    if net.prefixlen > 48:
        tok.error("local prefix6 %s too small: it must be a /48 or wider"
                  % net)
    return net


def ipv6(tok: Token) -> ipaddress.IPv6Address:
    """An IPv6 address, such as a DNS server's."""
    try:
        return ipaddress.IPv6Address(tok.value)
    except ValueError:
        tok.error('expected an IPv6 address, got "%s"' % tok.value)


def ipv4(tok: Token) -> ipaddress.IPv4Address:
    """An IPv4 address, such as a DNS server's."""
    try:
        return ipaddress.IPv4Address(tok.value)
    except ValueError:
        tok.error('expected an IPv4 address, got "%s"' % tok.value)


def ifname(tok: Token, what: str) -> str:
    """A Linux interface name (a tap's or a bridge's, as what says)."""
    name = tok.value
    if len(name) > IFNAME_MAX:
        tok.error('%s "%s" longer than %d characters'
                  % (what, name, IFNAME_MAX))
    if not _IFNAME.match(name) or name in (".", ".."):
        tok.error('bad %s "%s": expected letters, digits, ".", "-" or "_"'
                  % (what, name))
    return name


def lladdr(tok: Token) -> str:
    """A guest's MAC address: unicast, not all zeroes; returned lower case."""
    mac = tok.value.lower()
    if not _MAC.match(mac):
        tok.error('bad lladdr "%s": expected six hex octets such as '
                  "52:54:00:12:34:56" % tok.value)
    if int(mac[:2], 16) & 1:
        tok.error("lladdr %s is a multicast address" % mac)
    if mac == "00:00:00:00:00:00":
        tok.error("lladdr %s is the null address" % mac)
    return mac


def number(tok: Token, what: str, low: int, high: int) -> int:
    """A decimal number in low..high; what names the statement."""
    if not tok.value.isdigit() or not tok.value.isascii():
        tok.error('expected a number after %s, got "%s"' % (what, tok.value))
    n = int(tok.value)
    if not low <= n <= high:
        tok.error("%s %d out of range %d..%d" % (what, n, low, high))
    return n


# Decimal suffixes of rates (bits and frames per second, as tc and iperf3
# write them) and binary ones of sizes (bytes).
_RATE_UNITS = {"": 1, "k": 10**3, "K": 10**3, "M": 10**6, "G": 10**9}
_SIZE_UNITS = {"": 1, "k": 1 << 10, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
_SCALED = re.compile(r"([0-9]+)([kKMG]?)\Z")
RATE_BITS_MAX = 100 * 10**9          # csrc/rate.h RATE_MAX_BYTES, in bits
RATE_BURST_MAX = 1 << 30             # csrc/rate.h RATE_MAX_BURST
RATE_PPS_MAX = 100 * 10**6           # csrc/rate.h RATE_MAX_FRAMES


def scaled(tok: Token, what: str, units: dict[str, int], low: int, high: int) -> int:
    """A number with an optional suffix of units (100M), in low..high; what
    names the statement."""
    m = _SCALED.match(tok.value)
    if not m:
        tok.error('expected a number with an optional k, M or G after %s, got "%s"'
                  % (what, tok.value))
    n = int(m.group(1)) * units[m.group(2)]
    if not low <= n <= high:
        tok.error("%s %s out of range %d..%d" % (what, tok.value, low, high))
    return n


def bitrate(tok: Token, what: str) -> int:
    """Bits per second: 200M is 200 000 000."""
    return scaled(tok, what, _RATE_UNITS, 1000, RATE_BITS_MAX)


def burst(tok: Token, what: str) -> int:
    """Bytes: 1M is 1 MiB."""
    return scaled(tok, what, _SIZE_UNITS, 1500, RATE_BURST_MAX)


def pps(tok: Token, what: str) -> int:
    """Frames per second: 10k is 10 000."""
    return scaled(tok, what, _RATE_UNITS, 1, RATE_PPS_MAX)


def listen(tok: Token) -> tuple[str, int]:
    """ADDR:PORT of an IPv4 or [IPv6] address, port 1..65535."""
    host, sep, port = tok.value.rpartition(":")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    try:
        ipaddress.ip_address(host)
        ok = bool(sep) and port.isdigit() and 1 <= int(port) <= 65535
    except ValueError:
        ok = False
    if not ok:
        tok.error('expected ADDRESS:PORT (such as 127.0.0.1:9469 or [::1]:9469) '
                  'after "metrics listen", got "%s"' % tok.value)
    return host, int(port)


def queues(tok: Token) -> int:
    """Queue pairs: a number in 1..MAX_QUEUES, or unquoted auto
    (QUEUES_AUTO: one per CPU, at most MAX_QUEUES)."""
    if tok.is_word("auto"):
        return QUEUES_AUTO
    return number(tok, "queues", 1, MAX_QUEUES)


def hostname(tok: Token) -> str:
    """A host name for DHCP: dot-separated labels, without a final dot."""
    name = tok.value.rstrip(".")
    if not name or len(name) > 253 \
            or not all(_LABEL.match(lb) for lb in name.split(".")):
        tok.error('bad hostname "%s": expected labels of letters, digits and '
                  '"-" separated by "."' % tok.value)
    return name

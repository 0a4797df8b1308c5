"""Run by the parent: DHCP leases of local interfaces, kept across restarts.

One file (DEFAULT_PATH, /var/db/vionetd/leases) holds every lease vionetd
gave, as JSON:

    {"version": 1,
     "leases": {"vm/0": {"address": "100.64.0.3", "lladdr": "52:54:...",
                         "expires": 1790000000}}}

keyed by the interface's key (vm/index), the address the guest was given,
its MAC (the DHCP chaddr) and the end of the lease in Unix time. Two
optional members hold IPv6 (local6.py, dhcp6.py):

    "prefix6": "fd12:3456:789a::/48",       the host's ULA prefix
    "leases6": {"vm/0": {"address": "fd12:...::2", "duid": "0001...",
                         "iaid": 1, "expires": 1790000000}}

the DHCPv6 leases (IA_NA), with the client's DUID (hex) and IAID.

- load() reads it once; a missing file is an empty store; a corrupt one
  (not JSON, wrong shape) is logged and ignored, as is any single entry
  that does not check out, and expired entries are dropped. Nothing in the
  file is trusted beyond these checks.
- record() (on a DHCP ACK) and release() (on a RELEASE) change the store
  and write the file: to a temporary file in the same directory, flushed to
  disk, then renamed over the old one, so a crash leaves the old file or
  the new one, never half of one. The directory is created (mode 0700).
- A write is skipped when nothing but the expiry moved by less than half
  a lease, and one interface's changes are written at most once every
  MIN_WRITE_INTERVAL seconds (a guest sending DHCP requests in a loop
  cannot make the daemon write in a loop); a skipped change is written
  with the next write, or by flush().
- A failed write is logged; the lease is still given (persistence is a
  convenience: local addresses follow from the interface's key anyway).

default() is the daemon's store, loaded at first use from DEFAULT_PATH or
from the environment variable VIONETD_LEASES (for tests).
"""
import ipaddress
import json
import os
import re
import tempfile
import time

from vionetd.log import log

DEFAULT_PATH = "/var/db/vionetd/leases"
ENV_PATH = "VIONETD_LEASES"
VERSION = 1
MIN_WRITE_INTERVAL = 5.0
MAX_FILE_SIZE = 4 << 20
_KEY = re.compile(r"[A-Za-z][A-Za-z0-9._-]{0,63}/[0-9]{1,4}\Z")
_MAC = re.compile(r"[0-9a-f]{2}(:[0-9a-f]{2}){5}\Z")


class Leases:
    def __init__(self, path=DEFAULT_PATH, clock=time.time, monotonic=time.monotonic):
        self.path = path
        self.entries = {}          # key -> {"address", "lladdr", "expires"}
        self.entries6 = {}         # key -> {"address", "duid", "iaid", "expires"}
        self.ula = None            # the host's ULA prefix, an IPv6Network
        self.clock = clock
        self.monotonic = monotonic
        self.dirty = False
        self.last_write = {}       # key -> monotonic time of its last write
        self.writes = 0

    # ---- reading ------------------------------------------------------------

    def load(self):
        """Read the file; return the number of leases kept."""
        self.entries, self.entries6, self.ula = {}, {}, None
        try:
            with open(self.path, "rb") as f:
                data = f.read(MAX_FILE_SIZE + 1)
        except FileNotFoundError:
            return 0
        except OSError as e:
            log.warning("leases %s: cannot read: %s", self.path, e.strerror or e)
            return 0
        try:
            if len(data) > MAX_FILE_SIZE:
                raise ValueError("larger than %d bytes" % MAX_FILE_SIZE)
            doc = json.loads(data.decode("utf-8"))
            if not isinstance(doc, dict) or doc.get("version") != VERSION \
                    or not isinstance(doc.get("leases"), dict):
                raise ValueError("not a version %d lease file" % VERSION)
        except (ValueError, UnicodeDecodeError) as e:
            log.warning("leases %s: corrupt, ignored: %s", self.path, e)
            return 0
        self.ula = _check_prefix6(doc.get("prefix6"))
        leases6 = doc.get("leases6")
        self._take(doc["leases"], self.entries, _check)
        self._take(leases6 if isinstance(leases6, dict) else {}, self.entries6, _check6)
        return len(self.entries) + len(self.entries6)

    def _take(self, found, into, check):
        now = self.clock()
        for key, entry in found.items():
            checked = check(key, entry)
            if checked is None:
                log.warning("leases %s: bad entry %r ignored", self.path, str(key)[:80])
            elif checked["expires"] > now:
                into[key] = checked

    def get(self, key, table=None):
        """The live lease of interface key: {"address", "lladdr", "expires"}
        or None (from table: entries6 for the DHCPv6 ones, get6())."""
        e = (self.entries if table is None else table).get(key)
        if e is None or e["expires"] <= self.clock():
            return None
        return dict(e)

    def get6(self, key):
        """The live DHCPv6 lease of key: {"address", "duid", "iaid", "expires"}."""
        return self.get(key, self.entries6)

    def prefix6(self):
        """The host's ULA prefix kept here, or None."""
        return self.ula

    def set_prefix6(self, net):
        """Keep the host's ULA prefix (written at once: it must outlive us)."""
        self.ula = ipaddress.IPv6Network(net)
        self.dirty = True
        return self.save()

    def describe(self, key):
        """"ADDRESS (Ns)": what vionetctl shows as the lease, or None."""
        e = self.get(key)
        if e is None:
            return None
        return "%s (%ds)" % (e["address"], int(e["expires"] - self.clock()))

    # ---- changing -----------------------------------------------------------

    def record(self, key, address, lladdr, seconds):
        """A DHCP ACK: address (str or IPv4Address) leased to lladdr (str
        or 6 bytes) for seconds. Returns True if the file was written."""
        if isinstance(lladdr, (bytes, bytearray)):
            lladdr = bytes(lladdr).hex(":")
        new = {"address": str(ipaddress.IPv4Address(address)),
               "lladdr": lladdr.lower(), "expires": int(self.clock() + seconds)}
        return self._change(self.entries, key, new, seconds)

    def record6(self, key, address, duid, iaid, seconds):
        """A DHCPv6 Reply with an IA_NA: address leased to the client of
        DUID duid (bytes) and IAID iaid. Returns True if the file was written."""
        new = {"address": str(ipaddress.IPv6Address(address)), "duid": bytes(duid).hex(),
               "iaid": int(iaid), "expires": int(self.clock() + seconds)}
        return self._change(self.entries6, key, new, seconds)

    def _change(self, table, key, new, seconds):
        old = table.get(key)
        table[key] = new
        if old is not None and {k: v for k, v in old.items() if k != "expires"} == \
                {k: v for k, v in new.items() if k != "expires"} and \
                new["expires"] - old["expires"] < seconds / 2:
            table[key] = old                 # a renewal early in the lease
            return False
        self.dirty = True
        return self._write_for(key)

    def release(self, key, table=None):
        """A DHCP RELEASE (table: entries6 for a DHCPv6 Release, release6()).
        Returns True if the file was written."""
        if (self.entries if table is None else table).pop(key, None) is None:
            return False
        self.dirty = True
        return self._write_for(key)

    def release6(self, key):
        return self.release(key, self.entries6)

    def flush(self):
        """Write pending changes now (at shutdown)."""
        if self.dirty:
            return self.save()
        return False

    def _write_for(self, key):
        now = self.monotonic()
        last = self.last_write.get(key)
        if last is not None and now - last < MIN_WRITE_INTERVAL:
            return False                     # written with the next one, or flush()
        self.last_write[key] = now
        return self.save()

    def save(self):
        """Write the whole store atomically. False (logged) on failure."""
        now = self.clock()
        doc = {"version": VERSION,
               "leases": {k: e for k, e in sorted(self.entries.items())
                          if e["expires"] > now}}
        if self.entries6:
            doc["leases6"] = {k: e for k, e in sorted(self.entries6.items())
                              if e["expires"] > now}
        if self.ula is not None:
            doc["prefix6"] = str(self.ula)
        directory = os.path.dirname(self.path) or "."
        tmp = None
        try:
            os.makedirs(directory, mode=0o700, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=".leases.", dir=directory)
            with os.fdopen(fd, "w") as f:
                json.dump(doc, f, indent=1, sort_keys=True)
                f.write("\n")
                f.flush()
                os.fsync(f.fileno())
            os.rename(tmp, self.path)
            tmp = None
            dfd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
            try:
                os.fsync(dfd)
            finally:
                os.close(dfd)
        except OSError as e:
            log.warning("leases %s: cannot write: %s", self.path, e.strerror or e)
            return False
        finally:
            if tmp is not None:
                try:
                    os.unlink(tmp)
                except OSError:
                    pass
        self.dirty = False
        self.writes += 1
        return True


def _check(key, entry):
    """The entry, normalised, if it checks out; else None."""
    if not isinstance(key, str) or not _KEY.match(key) or not isinstance(entry, dict):
        return None
    address, lladdr, expires = entry.get("address"), entry.get("lladdr"), \
        entry.get("expires")
    if not isinstance(address, str) or not isinstance(lladdr, str) \
            or not _MAC.match(lladdr) or type(expires) is not int:
        return None
    try:
        address = str(ipaddress.IPv4Address(address))
    except ValueError:
        return None
    return {"address": address, "lladdr": lladdr, "expires": expires}


_DUID = re.compile(r"([0-9a-f]{2}){1,130}\Z")


def _check6(key, entry):
    """A DHCPv6 entry, normalised, if it checks out; else None."""
    if not isinstance(key, str) or not _KEY.match(key) or not isinstance(entry, dict):
        return None
    address, duid, iaid, expires = (entry.get(k) for k in ("address", "duid", "iaid",
                                                              "expires"))
    if not isinstance(address, str) or not isinstance(duid, str) or not _DUID.match(duid) \
            or type(iaid) is not int or not 0 <= iaid < 1 << 32 or type(expires) is not int:
        return None
    try:
        address = str(ipaddress.IPv6Address(address))
    except ValueError:
        return None
    return {"address": address, "duid": duid, "iaid": iaid, "expires": expires}


def _check_prefix6(text):
    """The kept ULA prefix, if it is a /48 of fd00::/8; else None."""
    try:
        net = ipaddress.IPv6Network(text)
    except (ValueError, TypeError):
        return None
    if net.prefixlen != 48 or net.network_address.packed[0] != 0xFD:
        return None
    return net


_default = None


def default():
    """The daemon's store (loaded at first use)."""
    global _default
    if _default is None:
        _default = Leases(os.environ.get(ENV_PATH) or DEFAULT_PATH)
        n = _default.load()
        if n:
            log.info("leases: %d loaded from %s", n, _default.path)
    return _default


def set_default(store):
    """Replace the daemon's store (tests; a parent with another path)."""
    global _default
    _default = store

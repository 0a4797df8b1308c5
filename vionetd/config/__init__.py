"""vionetd.conf(5): read the configuration file into plain dataclasses.

The grammar is documented in man/vionetd.conf.5; etc/vionetd.conf is an
example.
It follows the spirit of OpenBSD's vm.conf(5): macros, a few global settings,
`switch` blocks naming a Linux bridge, `vm` blocks holding `interface` blocks.

Invariants:
- A Config returned by parse()/load() is complete and consistent: every check
  in this module has passed, every default is filled in. The parent may use it
  without further validation (what it cannot check here, such as whether a
  bridge exists, it checks at start).
- Anything wrong in the text raises ConfigError, whose str() is
  "FILE:LINE: message" and names what was expected. Nothing else escapes
  parse(): the file is untrusted input.
- Line numbers are kept in fields excluded from ==, so that adding a comment
  does not make an unchanged VM look changed to a reload.
- Automatic tap names are left as None: naming is the parent's business.
"""
from __future__ import annotations

import re

from vionetd.config import values
from vionetd.config.lexer import (MAX_EXPANDED, MAX_MACRO_DEPTH,  # noqa: F401
                                  Lexer, Token)
from vionetd.config.model import (DEFAULT_CHROOT, DEFAULT_PREFIX,  # noqa: F401
                                  DEFAULT_SOCKET, DEFAULT_SOCKET_MODE,
                                  DEFAULT_USER, DIRECTIONS, MODES,
                                  OFF, OFFLOAD_NAMES, PASSTHROUGH, SOFTWARE,
                                  Config, ConfigError, Interface, Offload,
                                  Switch, Vm)
from vionetd.config.values import (IFNAME_MAX, MAX_QUEUES, MTU_MAX,  # noqa: F401
                                   MTU_MIN, QUEUES_AUTO, SUN_PATH_MAX)

# ---- limits and vocabulary ------------------------------------------------

MAX_FILE_SIZE = 1 << 20

# Words that are statements somewhere in the grammar. Unquoted, they are
# never taken as a name where a name is optional, nor as a macro name.
KEYWORDS = frozenset((
    "chroot", "connect", "disable", "dns", "enable", "group", "hostname",
    "interface", "lladdr", "local", "locked", "mode", "mtu", "offload",
    "owner", "prefix", "queues", "socket", "switch", "user", "vm",
))
# The words that may follow "socket PATH" (and, without a path, "socket" at
# the top level, for the defaults of the VMs' sockets).
SOCKET_OPTIONS = ("owner", "group", "mode", "connect")

_MACRO_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
_VM_NAME = re.compile(r"[A-Za-z][A-Za-z0-9._-]{0,63}\Z")


# ---- parser ---------------------------------------------------------------

def _expected(what: list[str]) -> str:
    if len(what) == 1:
        return what[0]
    return ", ".join(what[:-1]) + " or " + what[-1]


class _Parser:
    GLOBAL = ["chroot", "dns", "local prefix", "socket", "switch", "user",
              "vm", "a macro definition (name = value)"]
    VM = ["disable", "enable", "interface", "local interface", "socket",
          "user", '"}"']
    IFACE = ["hostname", "local", "lladdr", "locked lladdr", "mtu", "offload",
             "queues", "socket", "switch", '"}"']
    SWITCH = ["interface", '"}"']

    def __init__(self, text: str, filename: str):
        self.filename = filename
        self.macros: dict[str, str] = {}
        self.lex = Lexer(text, filename, self.macros)
        self.conf = Config()
        self.seen: dict[tuple, int] = {}       # (scope, keyword) -> line
        self.where: dict[tuple, int] = {}      # (iface key, what) -> line
        self.vm_socket: dict[str, tuple[str, int, dict]] = {}
        # interface key -> the socket's options as written: {word: (value,
        # line)}; resolved against the global defaults in check()
        self.sock_opts: dict[str, dict] = {}
        self.vm_user: set[str] = set()         # vms with their own user

    # -- helpers

    def error(self, line: int | None, message: str):
        raise ConfigError(self.filename, line, message)

    def expect(self, kind: str, after: str) -> Token:
        tok = self.lex.next()
        if tok.kind != kind:
            self.error(tok.line, 'expected "%s" %s, got %s'
                       % (kind, after, tok.describe()))
        return tok

    def word(self, what: str, after: str) -> Token:
        """A required argument: a quoted string or a bare word."""
        tok = self.lex.next()
        if tok.kind != "word":
            self.error(tok.line, "expected %s after %s, got %s"
                       % (what, after, tok.describe()))
        return tok

    def optional_name(self) -> Token | None:
        tok = self.lex.peek()
        if tok.kind == "word" and (tok.quoted or tok.value not in KEYWORDS):
            return self.lex.next()
        return None

    def once(self, scope, keyword: str, line: int):
        """Single-valued statements may appear once per block."""
        if (scope, keyword) in self.seen:
            self.error(line, '"%s" given twice (first at line %d)'
                       % (keyword, self.seen[(scope, keyword)]))
        self.seen[(scope, keyword)] = line

    def unknown(self, tok: Token, where: str, expected: list[str]):
        what = ('unknown keyword %s' % tok.describe()) if tok.kind == "word" \
            else 'unexpected %s' % tok.describe()
        self.error(tok.line, "%s %s; expected %s"
                   % (what, where, _expected(expected)))

    # -- top level

    def parse(self) -> Config:
        while (tok := self.lex.peek()).kind != "eof":
            if tok.kind == "word" and not tok.quoted \
                    and self.lex.peek(1).kind == "=":
                self.macro()
                continue
            self.lex.next()
            if tok.is_word("socket") and \
                    self.lex.peek().is_word(*SOCKET_OPTIONS):
                self.socket_defaults(tok)
            elif tok.is_word("socket"):
                self.once("global", "socket", tok.line)
                self.conf.socket = values.sock_path(
                    self.word("a path", "socket"))
                nxt = self.lex.peek()
                if nxt.is_word(*SOCKET_OPTIONS):
                    self.error(nxt.line, '"%s" after the control socket\'s '
                               "path: owner, group and mode without a path "
                               "set the defaults of the VMs' sockets (write "
                               '"socket %s ..." as a statement of its own)'
                               % (nxt.value, nxt.value))
            elif tok.is_word("user"):
                self.once("global", "user", tok.line)
                self.conf.user = values.user(self.word("a user name", "user"))
            elif tok.is_word("chroot"):
                self.once("global", "chroot", tok.line)
                self.conf.chroot = values.abs_path(
                    self.word("a directory", "chroot"), "chroot")
            elif tok.is_word("local"):
                nxt = self.lex.next()
                if not nxt.is_word("prefix"):
                    self.error(nxt.line, 'expected "prefix" after "local", '
                               "got %s" % nxt.describe())
                self.once("global", "local prefix", tok.line)
                ptok = self.word("an IPv4 prefix", '"local prefix"')
                self.conf.local_prefix = values.prefix(ptok)
                self.where[("global", "prefix")] = ptok.line
            elif tok.is_word("dns"):
                self.dns(tok)
            elif tok.is_word("switch"):
                self.switch(tok)
            elif tok.is_word("vm"):
                self.vm(tok)
            else:
                self.unknown(tok, "at top level", self.GLOBAL)
        self.check()
        return self.conf

    def macro(self):
        name = self.lex.next()
        self.lex.next()                                  # "="
        if not _MACRO_NAME.match(name.value):
            self.error(name.line, 'bad macro name "%s": expected a letter or '
                       '"_" then letters, digits or "_"' % name.value)
        if name.value in KEYWORDS:
            self.error(name.line, 'macro name "%s" is a reserved keyword'
                       % name.value)
        value = self.word("a value", 'macro "%s" =' % name.value)
        self.macros[name.value] = value.value

    # -- values

    def socket_options(self, connect_ok: bool = True) -> dict:
        """The words after "socket PATH": owner USER, group GROUP,
        mode MODE and connect, each at most once, in any order.
        Returns {word: (value, line)}."""
        opts: dict[str, tuple] = {}
        while (tok := self.lex.peek()).is_word(*SOCKET_OPTIONS):
            self.lex.next()
            if tok.value in opts:
                self.error(tok.line, 'socket: "%s" given twice' % tok.value)
            if tok.value == "connect":
                if not connect_ok:
                    self.error(tok.line, '"connect" is said of one '
                               "interface's socket, not of the defaults")
                opts["connect"] = (True, tok.line)
                continue
            what = {"owner": "a user name", "group": "a group name",
                    "mode": "an octal mode such as 0660"}[tok.value]
            arg = self.word(what, "socket %s" % tok.value)
            opts[tok.value] = (getattr(values, tok.value)(arg), tok.line)
        return opts

    def socket_defaults(self, kw: Token):
        """Top level "socket owner USER group GROUP mode MODE": the
        defaults of the vhost-user sockets vionetd creates."""
        self.once("global", "socket owner/group/mode", kw.line)
        opts = self.socket_options(connect_ok=False)
        if "owner" in opts:
            self.conf.socket_owner = opts["owner"][0]
        if "group" in opts:
            self.conf.socket_group = opts["group"][0]
        if "mode" in opts:
            self.conf.socket_mode = opts["mode"][0]

    def resolve_socket(self, iface: Interface):
        """The interface's socket settings: its own, else the defaults."""
        opts = self.sock_opts.get(iface.key, {})
        if "connect" in opts:
            iface.connect = True
            for word in ("owner", "group", "mode"):
                if word in opts:
                    self.error(opts[word][1], "%s: socket %s does not apply "
                               "with connect: the VMM creates that socket"
                               % (iface.key, word))
            iface.socket_owner = iface.socket_group = None
            iface.socket_mode = None
            return
        conf = self.conf
        iface.socket_owner = opts.get("owner", (conf.socket_owner,))[0]
        iface.socket_group = opts.get("group", (conf.socket_group,))[0]
        iface.socket_mode = opts.get("mode", (conf.socket_mode,))[0]

    # -- statements

    def dns(self, tok: Token):
        nxt = self.lex.peek()
        if nxt.kind != "word" or (not nxt.quoted and nxt.value in KEYWORDS):
            self.error(nxt.line, "expected an IPv4 address after dns, got %s"
                       % nxt.describe())
        while (nxt := self.lex.peek()).kind == "word" \
                and not (not nxt.quoted and nxt.value in KEYWORDS) \
                and self.lex.peek(1).kind != "=":
            self.conf.dns.append(values.ipv4(self.lex.next()))

    def switch(self, kw: Token):
        tok = self.word("a switch name", "switch")
        name = tok.value
        if not name:
            self.error(tok.line, "empty switch name")
        if name in self.conf.switches:
            self.error(tok.line, 'duplicate switch "%s" (first at line %d)'
                       % (name, self.conf.switches[name].line))
        self.expect("{", "after switch name")
        bridge = None
        scope = ("switch", name)
        while True:
            tok = self.lex.next()
            if tok.kind == "}":
                break
            if tok.is_word("interface"):
                self.once(scope, "interface", tok.line)
                bridge = values.ifname(self.word("a bridge name", "interface"),
                                     "bridge name")
                self.where[("switch", name)] = tok.line
            elif tok.kind == "eof":
                self.error(kw.line, 'switch "%s": missing "}" (end of file '
                           "reached)" % name)
            else:
                self.unknown(tok, 'in switch "%s"' % name, self.SWITCH)
        if bridge is None:
            self.error(kw.line, 'switch "%s" has no interface (the bridge '
                       "it stands for)" % name)
        self.conf.switches[name] = Switch(name, bridge, line=kw.line)

    def vm(self, kw: Token):
        tok = self.word("a vm name", "vm")
        name = tok.value
        if not _VM_NAME.match(name):
            self.error(tok.line, 'bad vm name "%s": expected a letter, then '
                       'up to 63 letters, digits, ".", "-" or "_"' % name)
        if name in self.conf.vms:
            self.error(tok.line, 'duplicate vm "%s" (first at line %d)'
                       % (name, self.conf.vms[name].line))
        self.expect("{", "after vm name")
        vm = Vm(name, line=kw.line)
        scope = ("vm", name)
        while True:
            tok = self.lex.next()
            if tok.kind == "}":
                break
            if tok.is_word("socket"):
                self.once(scope, "socket", tok.line)
                path = values.sock_path(self.word("a path", "socket"))
                self.vm_socket[name] = (path, tok.line, self.socket_options())
            elif tok.is_word("user"):
                self.once(scope, "user", tok.line)
                vm.user = values.known_user(self.word("a user name", "user"))
                self.vm_user.add(name)
            elif tok.is_word("interface"):
                self.interface(vm, tok, local=False)
            elif tok.is_word("local"):
                nxt = self.lex.next()
                if not nxt.is_word("interface"):
                    self.error(nxt.line, 'expected "interface" after "local" '
                               "in vm block, got %s" % nxt.describe())
                self.interface(vm, tok, local=True)
            elif tok.is_word("disable", "enable"):
                self.once(scope, "enable/disable", tok.line)
                vm.disabled = tok.value == "disable"
            elif tok.kind == "eof":
                self.error(kw.line, 'vm "%s": missing "}" (end of file '
                           "reached)" % name)
            elif tok.is_word("vm", "switch"):
                self.error(tok.line, '"%s" inside vm "%s": missing "}" to '
                           "close the vm block opened at line %d?"
                           % (tok.value, name, kw.line))
            else:
                self.unknown(tok, 'in vm "%s"' % name, self.VM)
        self.vm_done(vm, kw)
        self.conf.vms[name] = vm

    def vm_done(self, vm: Vm, kw: Token):
        """A socket in the vm block belongs to the first interface."""
        if not vm.interfaces:
            self.error(kw.line, 'vm "%s" has no interface' % vm.name)
        if vm.name in self.vm_socket:
            path, line, opts = self.vm_socket[vm.name]
            first = vm.interfaces[0]
            if first.socket is not None:
                self.error(line, 'vm "%s": socket in the vm block is for the '
                           "first interface, which has its own socket"
                           % vm.name)
            first.socket = path
            self.sock_opts[first.key] = opts
            self.where[(first.key, "socket")] = line
        for iface in vm.interfaces:
            if iface.socket is None:
                self.error(iface.line, "%s: interface has no socket (add "
                           '"socket PATH" to its block)' % iface.key)

    def interface(self, vm: Vm, kw: Token, local: bool):
        iface = Interface(vm.name, len(vm.interfaces), local=local,
                          line=kw.line)
        offload_lines: dict[tuple[str, str], int] = {}
        name = self.optional_name()
        if name is not None:
            iface.name = values.ifname(name, "tap name")
            self.where[(iface.key, "name")] = name.line
        if self.lex.peek().kind == "{":
            self.lex.next()
            self.interface_body(iface, kw, offload_lines)
        self.offload_check(iface, offload_lines)
        if iface.local and iface.switch is not None:
            self.error(self.where[(iface.key, "switch")], "%s: a local "
                       "interface is routed, it cannot be on a switch"
                       % iface.key)
        if iface.hostname is not None and not iface.local:
            self.error(self.where[(iface.key, "hostname")], "%s: hostname is "
                       "given by DHCP on local interfaces only" % iface.key)
        vm.interfaces.append(iface)

    def interface_body(self, iface: Interface, kw: Token, offload_lines):
        scope = ("interface", iface.key)
        while True:
            tok = self.lex.next()
            if tok.kind == "}":
                return
            if tok.kind == "eof":
                self.error(kw.line, '%s: interface block missing "}" (end of '
                           "file reached)" % iface.key)
            if tok.is_word("socket"):
                self.once(scope, "socket", tok.line)
                iface.socket = values.sock_path(self.word("a path", "socket"))
                self.sock_opts[iface.key] = self.socket_options()
                self.where[(iface.key, "socket")] = tok.line
            elif tok.is_word("lladdr", "locked"):
                what = "lladdr"
                if tok.value == "locked":
                    nxt = self.lex.next()
                    if not nxt.is_word("lladdr"):
                        self.error(nxt.line, 'expected "lladdr" after '
                                   '"locked", got %s' % nxt.describe())
                    iface.locked = True
                    what = "locked lladdr"
                self.once(scope, "lladdr", tok.line)
                mac = self.optional_name()
                if mac is None:
                    # vionetd cannot choose the guest's address: the VMM
                    # sets it (QEMU's mac=), so it must be written here.
                    self.error(tok.line, "%s: %s needs an address (the "
                               "guest's MAC, as the VMM sets it), such as "
                               "52:54:00:12:34:56" % (iface.key, what))
                iface.lladdr = values.lladdr(mac)
                self.where[(iface.key, "lladdr")] = mac.line
            elif tok.is_word("switch"):
                self.once(scope, "switch", tok.line)
                iface.switch = self.word("a switch name", "switch").value
                self.where[(iface.key, "switch")] = tok.line
            elif tok.is_word("mtu"):
                self.once(scope, "mtu", tok.line)
                iface.mtu = values.number(self.word("a number", "mtu"), "mtu",
                                        values.MTU_MIN, values.MTU_MAX)
            elif tok.is_word("queues"):
                self.once(scope, "queues", tok.line)
                iface.queues = values.queues(
                    self.word("a number or auto", "queues"))
            elif tok.is_word("local"):
                iface.local = True
            elif tok.is_word("hostname"):
                self.once(scope, "hostname", tok.line)
                iface.hostname = values.hostname(
                    self.word("a host name", "hostname"))
                self.where[(iface.key, "hostname")] = tok.line
            elif tok.is_word("offload"):
                self.offload(iface, tok, offload_lines)
            else:
                self.unknown(tok, "in interface %s" % iface.key, self.IFACE)

    # -- offloads

    def offload(self, iface: Interface, kw: Token, lines):
        """offload [tx | rx] (NAME | all) MODE; later lines win."""
        tok = self.word("tx, rx, all or an offload name", "offload")
        dirs = DIRECTIONS
        if tok.value in DIRECTIONS:
            dirs = (tok.value,)
            tok = self.word("all or an offload name",
                            "offload %s" % tok.value)
        if tok.value == "all":
            names = OFFLOAD_NAMES
        elif tok.value in OFFLOAD_NAMES:
            names = (tok.value,)
        else:
            self.error(tok.line, 'unknown offload "%s"; expected all or one '
                       "of %s" % (tok.value, _expected(list(OFFLOAD_NAMES))))
        mtok = self.word("a mode (%s)" % _expected(list(MODES)),
                         "offload %s" % tok.value)
        mode = mtok.value
        if mode not in MODES:
            self.error(mtok.line, 'unknown offload mode "%s"; expected %s'
                       % (mode, _expected(list(MODES))))
        for d in dirs:
            for n in names:
                if d == "rx" and n != "csum" and mode == SOFTWARE:
                    self.error(mtok.line, "rx %s has no software mode: the "
                               "guest gets it from the kernel or not at all "
                               "(only rx csum can be done in software); "
                               "use passthrough or off" % n)
                getattr(iface.offload, d)[n] = mode
                lines[(d, n)] = kw.line

    def offload_check(self, iface: Interface, lines):
        """The virtio feature dependencies: TSO, USO and ECN need the
        checksum offload of their direction; ECN needs TSO4 or TSO6."""
        def line_of(*keys):
            return max(lines.get(k, iface.line) for k in keys)
        for d in DIRECTIONS:
            modes = getattr(iface.offload, d)
            if modes["csum"] == OFF:
                for n in ("tso4", "tso6", "uso", "ecn"):
                    if modes[n] != OFF:
                        self.error(line_of((d, n), (d, "csum")),
                                   "%s: %s %s needs %s csum, which is off "
                                   '(add "offload %s %s off" or turn csum on)'
                                   % (iface.key, d, n, d, d, n))
            if modes["ecn"] != OFF and modes["tso4"] == OFF \
                    and modes["tso6"] == OFF:
                self.error(line_of((d, "ecn"), (d, "tso4"), (d, "tso6")),
                           "%s: %s ecn needs %s tso4 or tso6, both off "
                           '(add "offload %s ecn off")' % (iface.key, d, d, d))

    # -- whole-file checks

    def check(self):
        conf = self.conf
        sockets = {conf.socket: ("the control socket", None)}
        taps: dict[str, str] = {}
        macs: dict[str, str] = {}
        bridges = {}
        for sw in conf.switches.values():
            if sw.bridge in bridges:
                self.error(self.where[("switch", sw.name)], 'switches "%s" '
                           'and "%s" use the same bridge %s'
                           % (bridges[sw.bridge], sw.name, sw.bridge))
            bridges[sw.bridge] = sw.name
        for vm in conf.vms.values():
            if vm.name not in self.vm_user:
                vm.user = conf.user
        nlocal = 0
        for iface in conf.interfaces():
            key = iface.key
            self.resolve_socket(iface)
            if iface.socket in sockets:
                other, _ = sockets[iface.socket]
                self.error(self.where[(key, "socket")], "%s: duplicate socket "
                           "%s (also used by %s)" % (key, iface.socket, other))
            sockets[iface.socket] = (key, None)
            if iface.name is not None:
                line = self.where[(key, "name")]
                if iface.name in taps:
                    self.error(line, '%s: duplicate tap name "%s" (also used '
                               "by %s)" % (key, iface.name, taps[iface.name]))
                if iface.name in bridges:
                    self.error(line, '%s: tap name "%s" is the bridge of '
                               'switch "%s"' % (key, iface.name,
                                                bridges[iface.name]))
                taps[iface.name] = key
            if iface.lladdr is not None:
                if iface.lladdr in macs:
                    self.error(self.where[(key, "lladdr")], "%s: duplicate "
                               "lladdr %s (also used by %s)"
                               % (key, iface.lladdr, macs[iface.lladdr]))
                macs[iface.lladdr] = key
            if iface.switch is not None and iface.switch not in conf.switches:
                known = sorted(conf.switches)
                self.error(self.where[(key, "switch")], '%s: unknown switch '
                           '"%s"; expected %s' % (
                               key, iface.switch,
                               _expected(['"%s"' % s for s in known])
                               if known else "a switch defined in this file"))
            nlocal += iface.local
        if nlocal * 2 > conf.local_prefix.num_addresses:
            self.error(self.where.get(("global", "prefix")), "local prefix %s "
                       "too small for %d local interfaces (each takes a /31)"
                       % (conf.local_prefix, nlocal))


# ---- entry points ---------------------------------------------------------

def parse(text: str, filename: str = "vionetd.conf") -> Config:
    """Parse configuration text; raise ConfigError on any error."""
    if len(text) > MAX_FILE_SIZE:
        raise ConfigError(filename, None, "file larger than %d bytes"
                          % MAX_FILE_SIZE)
    return _Parser(text, filename).parse()


def load(path: str) -> Config:
    """Read and parse a configuration file; raise ConfigError on any error,
    including a file that cannot be read."""
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_FILE_SIZE + 1)
    except OSError as e:
        raise ConfigError(path, None, "cannot read: %s"
                          % (e.strerror or e)) from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data[:e.start].count(b"\n") + 1
        raise ConfigError(path, line, "not valid UTF-8") from None
    return parse(text, path)


def check(path: str) -> tuple[bool, str]:
    """For vionetd -n: (True, "configuration OK") or (False, the error)."""
    try:
        load(path)
    except ConfigError as e:
        return False, str(e)
    return True, "configuration OK"

"""Run by the parent and `vionetd -n`: vionetd.conf's grammar, by keyword tables.

The file is a sequence of top-level statements and macro definitions
(name = value). Statements are read in four places: the top level, and
switch, vm and interface blocks. Each is a class below whose keyword table,
STATEMENTS, maps what may be written there to the method that reads it, in
the manner of the keywords[] of an OpenBSD parse.y.

read() returns the Config with the Notes that the whole-file checks need;
config.parse() then runs them (checks.py).

Invariants:
- A table maps a phrase (a keyword and the words that must follow it) to
  its handler; the first words of one table's phrases differ, so a
  statement is found with one lookup of its first word. The "expected ..."
  of an unknown keyword lists the table's phrases in table order: what is
  accepted and what the message offers cannot differ.
- KEYWORDS, the words that are never taken as a name where a name is
  optional, nor as a macro name, is every word of every table plus the
  socket options; it is derived from the tables, not written twice.
- Keywords are unquoted words: a quoted "vm" is a name, never a statement.
- A statement that sets one value may appear once per block ("given
  twice"); dns, local and offload may repeat (offload: later ones win),
  and so may blocks (switch, vm and interface).
- Every error is a ConfigError at the line of the token at fault, or of
  the statement or block it concerns, saying what was expected.
"""
from __future__ import annotations

import re
from typing import Callable, NoReturn

from vionetd.config import checks, values
from vionetd.config.lexer import Lexer, Token
from vionetd.config.model import (DIRECTIONS, MODES, OFFLOAD_NAMES, SOFTWARE,
                                  Config, Interface, Rate, Switch, Vm, alternatives)

_MACRO_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
_VM_NAME = re.compile(r"[A-Za-z][A-Za-z0-9._-]{0,63}\Z")

# The words that may follow "socket PATH" (and, without a path, "socket" at
# the top level, for the defaults of the VMs' sockets): what the error calls
# the word's argument and the function that checks it; connect takes none.
_SOCKET_ARGS: dict[str, tuple[str, Callable] | None] = {
    "owner": ("a user name", values.owner),
    "group": ("a group name", values.group),
    "mode": ("an octal mode such as 0660", values.mode),
    "connect": None,
}
SOCKET_OPTIONS = tuple(_SOCKET_ARGS)

# offload [tx | rx] (NAME | all) MODE: the offloads a word stands for.
_OFFLOAD_TARGETS = {"all": OFFLOAD_NAMES, **{n: (n,) for n in OFFLOAD_NAMES}}


def read(text: str, filename: str) -> tuple[Config, checks.Notes]:
    """read() - parse the statements of a whole file.
    @text: the file's contents; @filename: the name errors give.

    Return: the Config, in which each VM's user and each interface's socket
    owner, group and mode are still to be resolved against the global
    settings, and the Notes that checks.whole_file() needs to do so
    and to check the whole.
    """
    return _TopLevel(text, filename).read()


def _is_name(tok: Token) -> bool:
    """A word that may be a name: quoted, or not a keyword."""
    return tok.kind == "word" and (tok.quoted or tok.value not in KEYWORDS)


class _Block:
    """What the statements of every block share: reading the arguments,
    "given twice", and dispatch by the block's table.

    A subclass sets STATEMENTS (at the end of its body, after the handlers),
    place (where the block is, for "unknown keyword ... in vm "a""), and
    may set EXPECTED_AFTER (offered after the phrases) and FOLLOW_WHERE
    (added after 'expected "prefix" after "local"').
    """
    STATEMENTS: dict[str, Callable] = {}
    EXPECTED_AFTER: tuple[str, ...] = ('"}"',)
    FOLLOW_WHERE = ""
    # first word -> [(the phrase's words, handler)], built from STATEMENTS
    _index: dict[str, list[tuple[list[str], Callable]]] = {}

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        cls._index = {}
        for p, h in cls.STATEMENTS.items():
            cls._index.setdefault(p.split()[0], []).append((p.split(), h))
        for phrases in cls._index.values():
            # phrases sharing a first word are two words, told by the second
            assert len(phrases) == 1 or all(len(w) == 2 for w, _ in phrases), cls

    def __init__(self, outer: _Block, place: str):
        self.lex: Lexer = outer.lex
        self.conf: Config = outer.conf
        self.notes: checks.Notes = outer.notes
        self.place = place
        self.seen: dict[str, int] = {}         # keyword -> line, for once()

    def error(self, line: int | None, message: str) -> NoReturn:
        self.notes.error(line, message)

    def expect(self, kind: str, after: str) -> Token:
        """A token of this kind ("{"), else an error naming what was read."""
        tok = self.lex.next()
        if tok.kind != kind:
            tok.error('expected "%s" %s, got %s'
                      % (kind, after, tok.describe()))
        return tok

    def word(self, what: str, after: str) -> Token:
        """A required argument: a quoted string or a bare word."""
        tok = self.lex.next()
        if tok.kind != "word":
            tok.error("expected %s after %s, got %s"
                      % (what, after, tok.describe()))
        return tok

    def optional_name(self) -> Token | None:
        """The next token if it is a name (_is_name()), consumed; else None."""
        if _is_name(self.lex.peek()):
            return self.lex.next()
        return None

    def once(self, keyword: str, line: int):
        """Single-valued statements may appear once per block."""
        if keyword in self.seen:
            self.error(line, '"%s" given twice (first at line %d)'
                       % (keyword, self.seen[keyword]))
        self.seen[keyword] = line

    def dispatch(self, tok: Token):
        """dispatch() - run the statement that tok, just read, begins.

        Looks the first word up in the table, reads the rest of its phrase
        (as "prefix" of "local prefix"; the second word chooses among
        phrases that share the first, as "local prefix6"), then calls the
        handler with tok. Anything else is an unknown keyword.
        """
        phrases = self._index.get(tok.value) if tok.is_word() else None
        if phrases is None:
            self.unknown(tok)
        if len(phrases) > 1:
            nxt = self.lex.peek()
            seconds = [w[1] for w, _ in phrases]
            phrases = [p for p in phrases if nxt.is_word(p[0][1])] or phrases[:1]
            if not nxt.is_word(*seconds):
                nxt.error('expected %s after "%s"%s, got %s' % (
                    alternatives(['"%s"' % w for w in seconds]), tok.value,
                    self.FOLLOW_WHERE, nxt.describe()))
        words, handler = phrases[0]
        for before, word in zip(words, words[1:]):
            nxt = self.lex.next()
            if not nxt.is_word(word):
                nxt.error('expected "%s" after "%s"%s, got %s' % (
                    word, before, self.FOLLOW_WHERE, nxt.describe()))
        handler(self, tok)

    def unknown(self, tok: Token) -> NoReturn:
        """The error for a token that begins no statement of this block."""
        what = ("unknown keyword %s" if tok.kind == "word"
                else "unexpected %s") % tok.describe()
        expected = list(self.STATEMENTS) + list(self.EXPECTED_AFTER)
        tok.error("%s %s; expected %s"
                  % (what, self.place, alternatives(expected)))

    def body(self, kw: Token, unclosed: str):
        """body() - the statements of a block, its "{" already read.
        @kw: the token that opened the block, whose line an unclosed block
        is reported at, with the message @unclosed.

        Return: after the closing "}".
        """
        while (tok := self.lex.next()).kind != "}":
            if tok.kind == "eof":
                self.error(kw.line, unclosed)
            self.dispatch(tok)

    def socket_options(self, connect_ok: bool = True) -> dict:
        """socket_options() - the words after "socket PATH": owner USER,
        group GROUP, mode MODE and connect, each at most once, in any order.
        @connect_ok: False for the defaults, where connect is refused.

        Return: {word: (value, line)}, as written.
        """
        opts: dict[str, tuple] = {}
        while (tok := self.lex.peek()).is_word(*SOCKET_OPTIONS):
            self.lex.next()
            if tok.value in opts:
                tok.error('socket: "%s" given twice' % tok.value)
            arg = _SOCKET_ARGS[tok.value]
            if arg is None:
                if not connect_ok:
                    tok.error('"connect" is said of one interface\'s socket, '
                              "not of the defaults")
                opts[tok.value] = (True, tok.line)
                continue
            what, value = arg
            opts[tok.value] = (
                value(self.word(what, "socket %s" % tok.value)), tok.line)
        return opts


class _TopLevel(_Block):
    """The statements outside any block, and macro definitions."""
    EXPECTED_AFTER = ("a macro definition (name = value)",)

    def __init__(self, text: str, filename: str):
        # the outermost block creates what the blocks inside it share
        self.macros: dict[str, str] = {}
        self.lex = Lexer(text, filename, self.macros)
        self.conf = Config()
        self.notes = checks.Notes(filename)
        self.place = "at top level"
        self.seen = {}

    def read(self) -> tuple[Config, checks.Notes]:
        """Statements up to the end of the file; see read() above."""
        while (tok := self.lex.peek()).kind != "eof":
            if tok.kind == "word" and not tok.quoted \
                    and self.lex.peek(1).kind == "=":
                self.macro()
                continue
            self.dispatch(self.lex.next())
        return self.conf, self.notes

    def macro(self):
        """NAME = VALUE: $NAME stands for VALUE's tokens from now on."""
        name = self.lex.next()
        self.lex.next()                                  # "="
        if not _MACRO_NAME.match(name.value):
            name.error('bad macro name "%s": expected a letter or "_" then '
                       'letters, digits or "_"' % name.value)
        if name.value in KEYWORDS:
            name.error('macro name "%s" is a reserved keyword' % name.value)
        value = self.word("a value", 'macro "%s" =' % name.value)
        self.macros[name.value] = value.value

    def chroot(self, kw: Token):
        self.once("chroot", kw.line)
        self.conf.chroot = values.abs_path(
            self.word("a directory", "chroot"), "chroot")

    def dns(self, kw: Token):
        self.addresses(kw, "an IPv4 address", values.ipv4, self.conf.dns)

    def dns6(self, kw: Token):
        """dns6 ADDRESS...: as dns, of IPv6 addresses (RDNSS, DHCPv6)."""
        self.addresses(kw, "an IPv6 address", values.ipv6, self.conf.dns6)

    def addresses(self, kw: Token, what: str, value: Callable, into: list):
        """dns ADDRESS...: dns must be followed by a name (quoted, or not
        a keyword); the list ends before a keyword or a macro definition."""
        nxt = self.lex.peek()
        if not _is_name(nxt):
            nxt.error("expected %s after %s, got %s"
                      % (what, kw.value, nxt.describe()))
        while _is_name(self.lex.peek()) and self.lex.peek(1).kind != "=":
            into.append(value(self.lex.next()))

    def local_prefix6(self, kw: Token):
        self.once("local prefix6", kw.line)
        tok = self.word("an IPv6 prefix", '"local prefix6"')
        self.conf.local_prefix6 = values.prefix6(tok)

    def local_prefix(self, kw: Token):
        self.once("local prefix", kw.line)
        tok = self.word("an IPv4 prefix", '"local prefix"')
        self.conf.local_prefix = values.prefix(tok)
        self.notes.where[("global", "prefix")] = tok.line

    def metrics_listen(self, kw: Token):
        """metrics listen ADDR:PORT"""
        self.once("metrics listen", kw.line)
        self.conf.metrics_listen = values.listen(
            self.word("ADDRESS:PORT", '"metrics listen"'))

    def socket(self, kw: Token):
        """socket PATH: the control socket. socket OPTION...: the defaults
        of the VMs' sockets (owner, group, mode; not connect)."""
        if self.lex.peek().is_word(*SOCKET_OPTIONS):
            self.once("socket owner/group/mode", kw.line)
            opts = self.socket_options(connect_ok=False)
            for word in ("owner", "group", "mode"):
                if word in opts:
                    setattr(self.conf, "socket_" + word, opts[word][0])
            return
        self.once("socket", kw.line)
        self.conf.socket = values.sock_path(self.word("a path", "socket"))
        nxt = self.lex.peek()
        if nxt.is_word(*SOCKET_OPTIONS):
            nxt.error('"%s" after the control socket\'s path: owner, group '
                      "and mode without a path set the defaults of the VMs' "
                      'sockets (write "socket %s ..." as a statement of its '
                      "own)" % (nxt.value, nxt.value))

    def switch(self, kw: Token):
        """switch NAME { interface BRIDGE }"""
        tok = self.word("a switch name", "switch")
        name = tok.value
        if not name:
            tok.error("empty switch name")
        if name in self.conf.switches:
            tok.error('duplicate switch "%s" (first at line %d)'
                      % (name, self.conf.switches[name].line))
        self.expect("{", "after switch name")
        self.conf.switches[name] = _Switch(self, name).read(kw)

    def user(self, kw: Token):
        """user NAME: every VM's, unless it names its own. user range
        LOW-HIGH: the uids VMs that name no user get one of each."""
        if self.lex.peek().is_word("range"):
            self.lex.next()
            self.once("user range", kw.line)
            self.conf.user_range = values.user_range(
                self.word("a uid range", "user range"))
            return
        self.once("user", kw.line)
        self.conf.user = values.user(self.word("a user name", "user"))
        self.notes.global_user = True

    def vm(self, kw: Token):
        """vm NAME { ... }"""
        tok = self.word("a vm name", "vm")
        name = tok.value
        if not _VM_NAME.match(name):
            tok.error('bad vm name "%s": expected a letter, then up to 63 '
                      'letters, digits, ".", "-" or "_"' % name)
        if name in self.conf.vms:
            tok.error('duplicate vm "%s" (first at line %d)'
                      % (name, self.conf.vms[name].line))
        self.expect("{", "after vm name")
        self.conf.vms[name] = _Vm(self, Vm(name, line=kw.line)).read(kw)

    STATEMENTS = {
        "chroot": chroot,
        "dns": dns,
        "dns6": dns6,
        "local prefix": local_prefix,
        "local prefix6": local_prefix6,
        "metrics listen": metrics_listen,
        "socket": socket,
        "switch": switch,
        "user": user,
        "vm": vm,
    }


class _Switch(_Block):
    """The statements of a switch block: the bridge it stands for."""

    def __init__(self, outer: _Block, name: str):
        super().__init__(outer, 'in switch "%s"' % name)
        self.name = name
        self.bridge: str | None = None

    def read(self, kw: Token) -> Switch:
        """The block's statements; return the Switch, which needs a bridge."""
        self.body(kw, 'switch "%s": missing "}" (end of file reached)'
                  % self.name)
        if self.bridge is None:
            self.error(kw.line, 'switch "%s" has no interface (the bridge '
                       "it stands for)" % self.name)
        return Switch(self.name, self.bridge, line=kw.line)

    def interface(self, kw: Token):
        self.once("interface", kw.line)
        self.bridge = values.ifname(self.word("a bridge name", "interface"),
                                    "bridge name")
        self.notes.where[("switch", self.name)] = kw.line

    STATEMENTS = {
        "interface": interface,
    }


class _Vm(_Block):
    """The statements of a vm block, into self.vm."""
    FOLLOW_WHERE = " in vm block"

    def __init__(self, outer: _Block, vm: Vm):
        super().__init__(outer, 'in vm "%s"' % vm.name)
        self.vm = vm
        # "socket" in the vm block: (path, line, options), or None
        self.socket_stmt: tuple[str, int, dict] | None = None

    def read(self, kw: Token) -> Vm:
        """The block's statements, then its socket given to its first
        interface; every interface must end up with a socket.
        Return: the Vm, with its interfaces."""
        self.body(kw, 'vm "%s": missing "}" (end of file reached)'
                  % self.vm.name)
        vm = self.vm
        if not vm.interfaces:
            self.error(kw.line, 'vm "%s" has no interface' % vm.name)
        if self.socket_stmt is not None:
            path, line, opts = self.socket_stmt
            first = vm.interfaces[0]
            if first.socket is not None:
                self.error(line, 'vm "%s": socket in the vm block is for the '
                           "first interface, which has its own socket"
                           % vm.name)
            first.socket = path
            self.notes.sock_opts[first.key] = opts
            self.notes.where[(first.key, "socket")] = line
        for iface in vm.interfaces:
            if iface.socket is None:
                self.error(iface.line, "%s: interface has no socket (add "
                           '"socket PATH" to its block)' % iface.key)
        return vm

    def unknown(self, tok: Token) -> NoReturn:
        """As for any block, but "vm" or "switch" here is taken for a
        missing "}" before it."""
        if tok.is_word("vm", "switch"):
            tok.error('"%s" inside vm "%s": missing "}" to close the vm block '
                      "opened at line %d?" % (tok.value, self.vm.name,
                                              self.vm.line))
        super().unknown(tok)

    def enable(self, kw: Token):
        """enable or disable, whichever kw is."""
        self.once("enable/disable", kw.line)
        self.vm.disabled = kw.value == "disable"

    def interface(self, kw: Token):
        self.add_interface(kw, local=False)

    def local_interface(self, kw: Token):
        self.add_interface(kw, local=True)

    def add_interface(self, kw: Token, local: bool):
        """[local] interface [NAME] [{ ... }]: the interface is appended to
        the VM once its statements are read and checked together."""
        iface = Interface(self.vm.name, len(self.vm.interfaces), local=local,
                          line=kw.line)
        block = _Interface(self, iface)
        name = self.optional_name()
        if name is not None:
            iface.name = values.ifname(name, "tap name")
            self.notes.where[(iface.key, "name")] = name.line
        if self.lex.peek().kind == "{":
            self.lex.next()
            block.body(kw, '%s: interface block missing "}" (end of file '
                       "reached)" % iface.key)
        checks.interface_done(iface, block.offload_lines, self.notes)
        self.vm.interfaces.append(iface)

    def socket(self, kw: Token):
        """socket PATH [OPTION...]: the first interface's, see read()."""
        self.once("socket", kw.line)
        path = values.sock_path(self.word("a path", "socket"))
        self.socket_stmt = (path, kw.line, self.socket_options())

    def user(self, kw: Token):
        self.once("user", kw.line)
        self.vm.user = values.known_user(self.word("a user name", "user"))
        self.notes.own_user.add(self.vm.name)

    def vmm(self, kw: Token):
        """vmm user U, vmm group G: who the VM's VMM runs as."""
        what = self.lex.next()
        if not what.is_word("user", "group"):
            what.error('expected "user" or "group" after "vmm", got %s'
                       % what.describe())
        self.once("vmm " + what.value, kw.line)
        setattr(self.vm, "vmm_" + what.value, values.vmm_id(
            self.word("a %s name or number" % what.value, "vmm " + what.value),
            what.value))

    STATEMENTS = {
        "disable": enable,
        "enable": enable,
        "interface": interface,
        "local interface": local_interface,
        "socket": socket,
        "user": user,
        "vmm": vmm,
    }


class _Interface(_Block):
    """The statements of an interface block, into self.iface."""

    def __init__(self, outer: _Block, iface: Interface):
        super().__init__(outer, "in interface %s" % iface.key)
        self.iface = iface
        # (direction, offload name) -> line of the last offload setting it
        self.offload_lines: dict[tuple[str, str], int] = {}

    def hostname(self, kw: Token):
        self.once("hostname", kw.line)
        self.iface.hostname = values.hostname(
            self.word("a host name", "hostname"))
        self.notes.where[(self.iface.key, "hostname")] = kw.line

    def inet6(self, kw: Token):
        """inet6 off | on: a local interface without (or with) IPv6."""
        self.once("inet6", kw.line)
        tok = self.word("off or on", "inet6")
        if tok.value not in ("off", "on"):
            tok.error('expected off or on after inet6, got "%s"' % tok.value)
        self.iface.inet6 = tok.value == "on"
        self.notes.where[(self.iface.key, "inet6")] = kw.line

    def local(self, kw: Token):
        self.iface.local = True

    def lladdr(self, kw: Token):
        self.set_lladdr(kw, "lladdr")

    def locked_lladdr(self, kw: Token):
        self.iface.locked = True
        self.set_lladdr(kw, "locked lladdr")

    def set_lladdr(self, kw: Token, what: str):
        """[locked] lladdr ADDRESS, what being the statement's phrase."""
        self.once("lladdr", kw.line)
        mac = self.optional_name()
        if mac is None:
            # vionetd cannot choose the guest's address: the VMM
            # sets it (QEMU's mac=), so it must be written here.
            kw.error("%s: %s needs an address (the guest's MAC, as the VMM "
                     "sets it), such as 52:54:00:12:34:56"
                     % (self.iface.key, what))
        self.iface.lladdr = values.lladdr(mac)
        self.notes.where[(self.iface.key, "lladdr")] = mac.line

    def mtu(self, kw: Token):
        self.once("mtu", kw.line)
        self.iface.mtu = values.number(self.word("a number", "mtu"), "mtu",
                                       values.MTU_MIN, values.MTU_MAX)

    def offload(self, kw: Token):
        """offload [tx | rx] (NAME | all) MODE; later statements win.
        Without a direction, both; rx has no software mode but for csum."""
        tok = self.word("tx, rx, all or an offload name", "offload")
        dirs = DIRECTIONS
        if tok.value in DIRECTIONS:
            dirs = (tok.value,)
            tok = self.word("all or an offload name",
                            "offload %s" % tok.value)
        names = _OFFLOAD_TARGETS.get(tok.value)
        if names is None:
            tok.error('unknown offload "%s"; expected all or one of %s'
                      % (tok.value, alternatives(list(OFFLOAD_NAMES))))
        mtok = self.word("a mode (%s)" % alternatives(list(MODES)),
                         "offload %s" % tok.value)
        mode = mtok.value
        if mode not in MODES:
            mtok.error('unknown offload mode "%s"; expected %s'
                       % (mode, alternatives(list(MODES))))
        for d in dirs:
            for n in names:
                if d == "rx" and n != "csum" and mode == SOFTWARE:
                    mtok.error("rx %s has no software mode: the guest gets "
                               "it from the kernel or not at all (only rx "
                               "csum can be done in software); use "
                               "passthrough or off" % n)
                getattr(self.iface.offload, d)[n] = mode
                self.offload_lines[(d, n)] = kw.line

    def rate(self, kw: Token):
        """rate tx|rx [RATE] [burst SIZE] [pps N]: RATE or pps, or both."""
        d = self.word("tx or rx", "rate")
        if d.value not in DIRECTIONS:
            d.error('expected tx or rx after rate, got "%s"' % d.value)
        self.once("rate " + d.value, kw.line)
        what = "rate " + d.value
        bits = burst = pps = 0
        if not self.lex.peek().is_word("burst", "pps"):
            bits = values.bitrate(self.word("a rate such as 100M", what), what)
        for word in ("burst", "pps"):
            if self.lex.peek().is_word(word):
                self.lex.next()
                tok = self.word("a number", "%s %s" % (what, word))
                if word == "burst":
                    burst = values.burst(tok, what + " burst")
                else:
                    pps = values.pps(tok, what + " pps")
        if not bits and not pps:
            kw.error("%s: expected a rate (such as 100M) or pps N" % what)
        setattr(self.iface, "rate_" + d.value, Rate(bits, burst, pps))

    def queues(self, kw: Token):
        self.once("queues", kw.line)
        self.iface.queues = values.queues(
            self.word("a number or auto", "queues"))

    def socket(self, kw: Token):
        """socket PATH [OPTION...]; options are resolved at the end of the
        file (checks.whole_file()), against the global defaults."""
        self.once("socket", kw.line)
        key = self.iface.key
        self.iface.socket = values.sock_path(self.word("a path", "socket"))
        self.notes.sock_opts[key] = self.socket_options()
        self.notes.where[(key, "socket")] = kw.line

    def switch(self, kw: Token):
        self.once("switch", kw.line)
        self.iface.switch = self.word("a switch name", "switch").value
        self.notes.where[(self.iface.key, "switch")] = kw.line

    STATEMENTS = {
        "hostname": hostname,
        "inet6": inet6,
        "local": local,
        "lladdr": lladdr,
        "locked lladdr": locked_lladdr,
        "mtu": mtu,
        "offload": offload,
        "queues": queues,
        "rate": rate,
        "socket": socket,
        "switch": switch,
    }


# Every word of every table, and the socket options (see the invariants).
KEYWORDS = frozenset(
    [word for block in (_TopLevel, _Switch, _Vm, _Interface)
     for phrase in block.STATEMENTS for word in phrase.split()]
    + list(SOCKET_OPTIONS) + ["range", "burst", "pps"])

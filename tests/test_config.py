"""Tests of vionetd/config.py, etc/vionetd.conf and man/vionetd.conf.5.

Each error case asserts both the message and the line it names, since the
line is what an operator follows. The fuzz test feeds the parser token soup
and random text: nothing but ConfigError may come out.
"""
import ipaddress
import os
import shutil
import subprocess
import sys
import textwrap

import pytest
from hypothesis import given, settings, strategies as st

from vionetd import config
from vionetd.config import ConfigError, parse

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXAMPLE = os.path.join(ROOT, "etc", "vionetd.conf")
MANPAGE = os.path.join(ROOT, "man", "vionetd.conf.5")

ALL_PT = dict.fromkeys(config.OFFLOAD_NAMES, "passthrough")


def conf(text):
    return parse(textwrap.dedent(text), "t.conf")


def error(text):
    with pytest.raises(ConfigError) as info:
        conf(text)
    return info.value


def assert_error(text, line, *fragments):
    e = error(text)
    assert e.line == line, str(e)
    assert str(e).startswith("t.conf:%d: " % line), str(e)
    for frag in fragments:
        assert frag in e.message, str(e)
    return e


ONE = """\
vm "a" {
	interface { socket "/run/a.sock" }
}
"""


# ---- the example ---------------------------------------------------------

def test_example_parses_to_what_it_says():
    c = config.load(EXAMPLE)
    assert c.socket == "/run/vionetd.sock"
    assert c.user == "_vionetd"
    assert c.chroot == "/var/empty"
    assert c.local_prefix == ipaddress.IPv4Network("100.64.0.0/10")
    assert c.dns == [ipaddress.IPv4Address("192.0.2.53")]
    assert c.switches == {"uplink": config.Switch("uplink", "vbr0")}
    assert list(c.vms) == ["local1", "web1", "db1"]

    (l1,) = c.vms["local1"].interfaces
    assert l1.local and l1.name is None and l1.switch is None
    assert l1.hostname == "local1"
    assert l1.socket == "/run/vionetd/local1.sock"
    assert l1.offload == config.Offload()
    assert not c.vms["local1"].disabled

    (w,) = c.vms["web1"].interfaces
    assert (w.name, w.socket, w.lladdr, w.locked, w.switch, w.mtu, w.local) == (
        "vtap-web1", "/run/vionetd/web1.sock", "52:54:00:12:34:56", True,
        "uplink", 1500, False)

    db = c.vms["db1"]
    assert db.disabled
    d0, d1 = db.interfaces
    assert d0.key == "db1/0" and d1.key == "db1/1"
    assert d0.switch == "uplink" and d0.lladdr == "52:54:00:ab:cd:01"
    assert not d0.locked
    assert d0.offload.tx == {"csum": "software", "tso4": "software",
                             "tso6": "software", "uso": "software",
                             "ecn": "off"}
    assert d0.offload.rx == ALL_PT
    assert d1.local and d1.name == "vtap-db1"
    assert d1.offload.tx == ALL_PT
    assert d1.offload.rx == {"csum": "software", "tso4": "off", "tso6": "off",
                             "uso": "off", "ecn": "off"}
    assert [i.key for i in c.interfaces()] == [
        "local1/0", "web1/0", "db1/0", "db1/1"]


def test_check_helper(tmp_path):
    assert config.check(EXAMPLE) == (True, "configuration OK")
    bad = tmp_path / "bad.conf"
    bad.write_text('vm "x" interface\n')
    ok, msg = config.check(str(bad))
    assert not ok
    assert msg == '%s:1: expected "{" after vm name, got "interface"' % bad
    ok, msg = config.check(str(tmp_path / "missing.conf"))
    assert not ok and "missing.conf: cannot read: No such file" in msg
    raw = tmp_path / "raw.conf"
    raw.write_bytes(b"# fine\n# \xff\n")
    ok, msg = config.check(str(raw))
    assert not ok and msg == "%s:2: not valid UTF-8" % raw


# ---- defaults, comments, macros -------------------------------------------

def test_defaults():
    c = conf(ONE)
    assert c.socket == config.DEFAULT_SOCKET
    assert c.user == config.DEFAULT_USER
    assert c.chroot == config.DEFAULT_CHROOT
    assert c.local_prefix == ipaddress.IPv4Network("100.64.0.0/10")
    assert c.dns == [] and c.switches == {}
    (i,) = c.vms["a"].interfaces
    assert i == config.Interface("a", 0, socket="/run/a.sock")
    assert (i.name, i.lladdr, i.locked, i.switch, i.mtu, i.local,
            i.hostname) == (None, None, False, None, None, False, None)
    assert i.offload.tx == ALL_PT and i.offload.rx == ALL_PT
    assert not c.vms["a"].disabled
    assert parse("", "empty") == config.Config()


def test_comments_and_continuation():
    c = conf("""\
        # a comment
        chroot "/var/#e"   # hash inside quotes is kept
        socket \\
          "/run/x.sock"
        vm "a" { # brace then comment
        	interface { socket "/run/a.sock" } # one line
        }
        """)
    assert c.chroot == "/var/#e"
    assert c.socket == "/run/x.sock"
    # the continuation still counts lines: the error is on line 3
    assert_error('user "u"\nsocket \\\n"rel"\n', 3, "absolute path")


def test_macros():
    c = conf("""\
        mac = "52:54:00:00:00:01"
        sw = "up"
        opts = "offload tx all off"
        sock = "/run/a.sock"
        switch $sw { interface "br0" }
        vm "a" {
        	interface { socket $sock lladdr $mac switch $sw $opts }
        }
        """)
    (i,) = c.vms["a"].interfaces
    assert i.lladdr == "52:54:00:00:00:01" and i.switch == "up"
    assert i.socket == "/run/a.sock"
    assert set(i.offload.tx.values()) == {"off"}
    # not expanded inside quotes
    assert_error('x = "y"\nuser "$x"\n', 2, 'bad user name "$x"')


def test_macro_errors():
    assert_error("\n\nuser $nope\n", 3, "undefined macro $nope")
    assert_error('a = "$a"\n\nuser $a\n', 3, "nested too deeply")
    laughs = 'a0 = "x"\n' + "".join('a%d = "%s"\n' % (i, " ".join(
        ["$a%d" % (i - 1)] * 20)) for i in range(1, 8))
    assert_error(laughs + "\nuser $a7\n", 10, "more than 100000 words")
    assert_error('vm = "x"\n', 1, 'macro name "vm" is a reserved keyword')
    assert_error('1x = "x"\n', 1, 'bad macro name "1x"')
    assert_error('x = \n', 2, "expected a value after macro")
    # an expanded macro's error points at the line that used it
    assert_error('m = "zz:00"\n' + ONE.replace(
        "{ socket", "{ lladdr $m socket"), 3, 'bad lladdr "zz:00"')


# ---- grammar errors --------------------------------------------------------

def test_expected_brace_after_vm_name():
    e = assert_error('# x\n\nvm "web1" interface {\n', 3)
    assert str(e) == 't.conf:3: expected "{" after vm name, got "interface"'


def test_unknown_keywords_list_what_was_expected():
    assert_error("\nbogus 1\n", 2, 'unknown keyword "bogus" at top level',
                 "chroot", "dns", "dns6", "local prefix", "local prefix6", "socket",
                 "switch", "user", "vm")
    assert_error('vm "a" {\n\tmemory 1G\n}\n', 2,
                 'unknown keyword "memory" in vm "a"', "interface", "socket",
                 "disable", '"}"')
    assert_error('vm "a" {\n interface {\n  socket "/s"\n  speed 10\n }\n}\n',
                 4, 'unknown keyword "speed" in interface a/0', "lladdr",
                 "locked lladdr", "mtu", "offload", "switch", "hostname")
    assert_error('switch "s" {\n bridge "br0"\n}\n', 2,
                 'unknown keyword "bridge" in switch "s"', "interface")
    assert_error("\n}\n", 2, 'unexpected "}" at top level')
    assert_error("local\nfoo\n", 2, 'expected "prefix" or "prefix6" after "local"')


def test_unterminated_string():
    assert_error('user "_v\n', 1, "unterminated string")
    assert_error('\n\nvm "web1 {\n}\n', 3, "unterminated string")
    assert_error('user "abc', 1, "unterminated string")


def test_bad_characters():
    assert_error("\nuser !x\n", 2, 'unexpected character "!"')
    assert_error('user "a\x01b"\n', 1, "control character")


def test_missing_closing_brace():
    assert_error('\nvm "a" {\n interface { socket "/s" }\n', 2,
                 'vm "a": missing "}"')
    assert_error('vm "a" {\n interface {\n  socket "/s"\n', 2,
                 'a/0: interface block missing "}"')
    assert_error('switch "s" {\n interface "br0"\n', 1,
                 'switch "s": missing "}"')
    assert_error('vm "a" {\n interface { socket "/s" }\n\nvm "b" {\n', 4,
                 '"vm" inside vm "a": missing "}"', "opened at line 1")


def test_duplicate_statement():
    assert_error('vm "a" {\n interface {\n  socket "/s"\n  mtu 1500\n'
                 '  mtu 9000\n }\n}\n', 5, '"mtu" given twice (first at line 4)')
    assert_error('user "a"\nuser "b"\n', 2, '"user" given twice')


# ---- semantic errors -------------------------------------------------------

def test_duplicate_vm():
    assert_error(ONE + "\n" + ONE.replace("a.sock", "b.sock"), 5,
                 'duplicate vm "a" (first at line 1)')


def test_duplicate_sockets():
    assert_error('vm "a" {\n interface { socket "/s" }\n'
                 ' interface {\n  socket "/s"\n }\n}\n', 4,
                 "a/1: duplicate socket /s (also used by a/0)")
    assert_error('socket "/run/a.sock"\n' + ONE, 3,
                 "duplicate socket /run/a.sock", "control socket")
    # a vm-level socket is checked at its own line
    assert_error(ONE + 'vm "b" {\n socket "/run/a.sock"\n interface\n}\n', 5,
                 "b/0: duplicate socket")


def test_vm_socket_belongs_to_first_interface():
    c = conf('vm "a" {\n socket "/s0"\n interface\n'
             ' interface { socket "/s1" }\n}\n')
    assert [i.socket for i in c.vms["a"].interfaces] == ["/s0", "/s1"]
    assert_error('vm "a" {\n socket "/s0"\n interface { socket "/x" }\n}\n',
                 2, "first interface, which has its own socket")


def test_interface_without_socket():
    assert_error('vm "a" {\n socket "/s0"\n interface\n\n interface "t1"\n}\n',
                 5, "a/1: interface has no socket")


def test_vm_without_interface():
    assert_error('\nvm "a" {\n disable\n}\n', 2, 'vm "a" has no interface')


def test_duplicate_tap_names():
    assert_error('vm "a" {\n interface "t0" { socket "/s0" }\n'
                 ' interface "t0" { socket "/s1" }\n}\n', 3,
                 'a/1: duplicate tap name "t0" (also used by a/0)')
    assert_error('switch "s" { interface "br0" }\n'
                 'vm "a" {\n interface "br0" { socket "/s0" }\n}\n', 3,
                 'tap name "br0" is the bridge of switch "s"')


def test_tap_names():
    c = conf('vm "a" {\n interface "abcdefghijklmno" { socket "/s0" }\n}\n')
    assert c.vms["a"].interfaces[0].name == "abcdefghijklmno"
    assert_error('vm "a" {\n interface "abcdefghijklmnop" { socket "/s0" }\n}',
                 2, 'tap name "abcdefghijklmnop" longer than 15 characters')
    assert_error('vm "a" {\n interface "a/b" { socket "/s0" }\n}', 2,
                 'bad tap name "a/b"')


def test_unknown_switch():
    assert_error('switch "up" { interface "br0" }\nvm "a" {\n interface {\n'
                 '  socket "/s"\n  switch "down"\n }\n}\n', 5,
                 'a/0: unknown switch "down"; expected "up"')
    # switches may be defined after their use
    c = conf('vm "a" {\n interface { socket "/s" switch "up" }\n}\n'
             'switch "up" { interface "br0" }\n')
    assert c.vms["a"].interfaces[0].switch == "up"


def test_switch_errors():
    assert_error('\nswitch "s" {\n}\n', 2, 'switch "s" has no interface')
    assert_error('switch "s" { interface "br0" }\n'
                 'switch "s" { interface "br1" }\n', 2, 'duplicate switch "s"')
    assert_error('switch "s" { interface "br0" }\n'
                 'switch "t" { interface "br0" }\n', 2, "same bridge br0")


@pytest.mark.parametrize("mac,message", [
    ("52:54:00:12:34", 'bad lladdr "52:54:00:12:34"'),
    ("52:54:00:12:34:5g", "expected six hex octets"),
    ("01:00:5e:00:00:01", "multicast"),
    ("ff:ff:ff:ff:ff:ff", "multicast"),
    ("00:00:00:00:00:00", "null address"),
])
def test_bad_lladdr(mac, message):
    assert_error('vm "a" {\n interface {\n  socket "/s"\n  lladdr %s\n }\n}\n'
                 % mac, 4, message)


def test_lladdr_forms():
    c = conf('vm "a" {\n interface { socket "/s" locked lladdr 52:54:00:00:00:02 }\n'
             ' interface { socket "/t" lladdr 52:54:00:AB:CD:EF }\n}\n')
    i0, i1 = c.vms["a"].interfaces
    assert (i0.locked, i0.lladdr) == (True, "52:54:00:00:00:02")
    assert (i1.locked, i1.lladdr) == (False, "52:54:00:ab:cd:ef")
    # vionetd cannot pick the guest's MAC (the VMM sets it): an address
    # is required, and the error names the line of the statement
    assert_error('vm "a" {\n interface { socket "/s"\n locked lladdr }\n}\n',
                 3, "a/0: locked lladdr needs an address")
    assert_error('vm "a" {\n interface { socket "/s"\n  lladdr\n mtu 1500 }\n}\n',
                 3, "a/0: lladdr needs an address")
    assert_error('vm "a" {\n interface { socket "/s" lladdr 52:54:00:00:00:01 }'
                 '\n interface { socket "/t"\n lladdr 52:54:00:00:00:01 }\n}\n',
                 4, "a/1: duplicate lladdr 52:54:00:00:00:01")
    assert_error('vm "a" {\n interface { socket "/s" locked mtu 1 }\n}\n', 2,
                 'expected "lladdr" after "locked", got "mtu"')


@pytest.mark.parametrize("mtu,ok", [
    ("67", False), ("68", True), ("1500", True), ("65535", True),
    ("65536", False), ("0", False), ("-1", False), ("big", False),
])
def test_mtu_range(mtu, ok):
    text = 'vm "a" {\n interface {\n  socket "/s"\n  mtu %s\n }\n}\n' % mtu
    if ok:
        assert conf(text).vms["a"].interfaces[0].mtu == int(mtu)
    elif mtu.lstrip("-").isdigit() and not mtu.startswith("-"):
        assert_error(text, 4, "mtu %s out of range 68..65535" % mtu)
    else:
        assert_error(text, 4, "expected a number after mtu")


@pytest.mark.parametrize("prefix,message", [
    ("fd00::/8", "must be IPv4"),
    ("100.64.0.1/10", "host bits set"),
    ("100.64.0.0/32", "too small"),
    ("banana", "expected an IPv4 prefix"),
])
def test_bad_prefix(prefix, message):
    assert_error("\nlocal prefix %s\n" % prefix, 2, message)


def test_prefix_size_against_local_interfaces():
    text = ('local prefix 10.0.0.0/31\nvm "a" {\n'
            ' interface { socket "/s" local }\n%s}\n')
    assert conf(text % "").local_prefix.prefixlen == 31
    assert_error(text % ' interface { socket "/t" local }\n', 1,
                 "too small for 2 local interfaces")


def test_dns():
    c = conf("dns 192.0.2.1 192.0.2.2\ndns 192.0.2.3\n" + ONE)
    assert [str(a) for a in c.dns] == ["192.0.2.1", "192.0.2.2", "192.0.2.3"]
    assert_error("dns\nvm", 2, 'expected an IPv4 address after dns, got "vm"')
    assert_error("dns 192.0.2.1\n  2001:db8::1\n", 2,
                 'expected an IPv4 address, got "2001:db8::1"')


def test_globals():
    c = conf('socket "/run/x.sock"\nuser "nobody"\nchroot "/var/lib/empty"\n')
    assert (c.socket, c.user, c.chroot) == ("/run/x.sock", "nobody",
                                            "/var/lib/empty")
    assert_error('\nuser "root"\n', 2, "must not run as root")
    assert_error('chroot "empty"\n', 1, "expected an absolute path")
    assert_error('socket "/%s"\n' % ("x" * 107), 1, "longer than 107 bytes")


# ---- socket ownership, client mode, per-VM user ------------------------------

def test_socket_ownership_defaults_and_overrides():
    c = conf(ONE)
    (i,) = c.interfaces()
    assert (i.socket_owner, i.socket_group, i.socket_mode, i.connect) == (
        None, None, 0o660, False)
    # top level, without a path: the defaults of the VMs' sockets, which
    # may come after the VMs; the control socket is not concerned
    c = conf("""\
        socket "/run/ctl.sock"
        vm "a" {
            interface { socket "/a0" }
            interface { socket "/a1" owner nobody mode 600 }
            interface { socket "/a2" group nogroup }
        }
        socket owner daemon group daemon mode 0640
        """)
    a0, a1, a2 = c.vms["a"].interfaces
    assert c.socket == "/run/ctl.sock"
    assert (c.socket_owner, c.socket_group, c.socket_mode) == (
        "daemon", "daemon", 0o640)
    assert (a0.socket_owner, a0.socket_group, a0.socket_mode) == (
        "daemon", "daemon", 0o640)
    assert (a1.socket_owner, a1.socket_group, a1.socket_mode) == (
        "nobody", "daemon", 0o600)
    assert (a2.socket_owner, a2.socket_group, a2.socket_mode) == (
        "daemon", "nogroup", 0o640)
    # the vm block's socket carries its options to the first interface
    c = conf('vm "a" {\n socket "/s" group nogroup mode 0666\n interface\n}\n')
    (i,) = c.interfaces()
    assert (i.socket, i.socket_group, i.socket_mode) == ("/s", "nogroup", 0o666)
    # a changed group makes the interface differ (reload sees it)
    assert conf(ONE) != conf(ONE.replace('"/run/a.sock"', '"/run/a.sock" group nogroup'))


@pytest.mark.parametrize("text,line,message", [
    ('vm "a" {\n interface {\n  socket "/s" owner no_such_user_x\n }\n}\n', 3,
     'socket owner: unknown user "no_such_user_x"'),
    ('vm "a" {\n interface {\n  socket "/s"\n  group no_such_group_x\n }\n}\n', 4,
     'socket group: unknown group "no_such_group_x"'),
    ('\n\nsocket group no_such_group_x\n', 3, 'unknown group "no_such_group_x"'),
    ('vm "a" {\n interface {\n  socket "/s" mode 0668\n }\n}\n', 3,
     'bad socket mode "0668": expected three or four octal digits'),
    ('vm "a" {\n interface {\n  socket "/s" mode 1777\n }\n}\n', 3,
     'bad socket mode "1777"'),
    ('vm "a" {\n interface {\n  socket "/s" mode rw\n }\n}\n', 3,
     'bad socket mode "rw"'),
    ('socket mode 66\n', 1, 'bad socket mode "66"'),
    ('vm "a" {\n interface {\n  socket "/s" mode 0600 mode 0600\n }\n}\n', 3,
     'socket: "mode" given twice'),
    ('vm "a" {\n interface {\n  socket "/s" owner\n }\n}\n', 4,
     "expected a user name after socket owner"),
    ('socket "/c" group nogroup\n', 1, '"group" after the control socket'),
    ('socket mode 0600\nsocket group nogroup\n', 2, 'given twice (first at line 1)'),
    ('socket connect\n', 1, '"connect" is said of one interface'),
    ('vm "a" {\n interface {\n  socket "/s" connect\n   group nogroup\n }\n}\n', 4,
     "a/0: socket group does not apply with connect"),
])
def test_socket_option_errors(text, line, message):
    assert_error(text, line, message)


def test_socket_connect_client_mode():
    c = conf('socket group nogroup\nvm "a" {\n socket "/s" connect\n interface\n'
             ' interface { socket "/t" }\n}\n')
    i0, i1 = c.vms["a"].interfaces
    assert i0.connect and i0.socket == "/s"
    # the VMM creates a socket vionetd connects to: no ownership to apply
    assert (i0.socket_owner, i0.socket_group, i0.socket_mode) == (None, None, None)
    assert not i1.connect and i1.socket_group == "nogroup"
    # the path is still unique in the file
    assert_error('vm "a" {\n interface { socket "/s" connect }\n'
                 ' interface {\n socket "/s" }\n}\n', 4, "duplicate socket /s")


def test_vm_user():
    c = conf('user nobody\nvm "a" {\n user daemon\n interface { socket "/s" }\n}\n'
             'vm "b" { interface { socket "/t" } }\n')
    assert c.user == "nobody"
    assert c.vms["a"].user == "daemon"
    assert c.vms["b"].user == "nobody"       # the global user, given after or before
    # no user written: a uid of its own from the range (uids.py)
    assert conf(ONE).vms["a"].user is None
    assert_error('vm "a" {\n interface { socket "/s" }\n\n user no_such_user_x\n}\n',
                 4, 'unknown user "no_such_user_x"')
    assert_error('vm "a" {\n user root\n interface { socket "/s" }\n}\n', 2,
                 "must not run as root")
    assert_error('vm "a" {\n user daemon\n user daemon\n interface { socket "/s" }\n}\n',
                 3, '"user" given twice')


def test_user_range():
    assert conf(ONE).user_range == config.DEFAULT_USER_RANGE == (70000, 79999)
    c = conf("user range 100000-100009\n" + ONE)
    assert c.user_range == (100000, 100009) and c.vms["a"].user is None
    assert c.user == config.DEFAULT_USER          # the control socket's group
    # user range and user are two statements: both may be given
    c = conf("user range 100000-100009\nuser nobody\n" + ONE)
    assert c.vms["a"].user == "nobody"
    assert_error("user range 80000-70000\n", 1, "user range 80000-70000")
    assert_error("user range 0-10\n", 1, "expected 1000 <= LOW")
    assert_error("user range 60000-70000\n", 1, "not containing 65534")
    assert_error("user range many\n", 1, "expected a uid range")
    assert_error("user range 70000-70001\nuser range 70000-70001\n", 2,
                 '"user range" given twice')


def test_vmm_identity():
    import grp
    import pwd
    c = conf('vm "a" {\n vmm user nobody\n vmm group 1234\n interface { socket "/s" }\n}\n')
    assert (c.vms["a"].vmm_user, c.vms["a"].vmm_group) == (pwd.getpwnam("nobody").pw_uid, 1234)
    c = conf('vm "a" {\n vmm group nogroup\n interface { socket "/s" }\n}\n')
    assert (c.vms["a"].vmm_user, c.vms["a"].vmm_group) == (None, grp.getgrnam("nogroup").gr_gid)
    assert conf(ONE).vms["a"].vmm_user is None
    assert_error('vm "a" {\n vmm user no_such_user_x\n interface { socket "/s" }\n}\n', 2,
                 'vmm user: unknown user "no_such_user_x"')
    assert_error('vm "a" {\n vmm owner x\n interface { socket "/s" }\n}\n', 2,
                 'expected "user" or "group" after "vmm"')
    assert_error('vm "a" {\n vmm user 1\n vmm user 2\n interface { socket "/s" }\n}\n', 3,
                 '"vmm user" given twice')


def test_check_reports_unknown_names_with_file_and_line(tmp_path):
    # what vionetd -n prints: FILE:LINE: message
    f = tmp_path / "v.conf"
    f.write_text('vm "a" {\n interface {\n  socket "/s" group no_such_group_x\n }\n}\n')
    assert config.check(str(f)) == (
        False, '%s:3: socket group: unknown group "no_such_group_x"' % f)
    r = subprocess.run([sys.executable, "-m", "vionetd.main", "-n", "-f", str(f)],
                       capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert r.returncode == 1
    assert '%s:3: socket group: unknown group "no_such_group_x"' % f in r.stderr


def test_local_and_hostname():
    c = conf('vm "a" {\n local interface { socket "/s" hostname "a.example" }'
             '\n interface { socket "/t" local }\n}\n')
    i0, i1 = c.vms["a"].interfaces
    assert i0.local and i1.local and i0.hostname == "a.example"
    assert_error('switch "s" { interface "br0" }\nvm "a" {\n interface {\n'
                 '  socket "/s" local\n  switch "s"\n }\n}\n', 5,
                 "local interface is routed")
    assert_error('vm "a" {\n interface {\n  socket "/s"\n  hostname "a"\n'
                 ' }\n}\n', 4, "hostname is given by DHCP on local interfaces")
    assert_error('vm "a" {\n interface {\n  socket "/s" local\n'
                 '  hostname "a_b"\n }\n}\n', 4, 'bad hostname "a_b"')


def test_disable_enable():
    c = conf('vm "a" {\n interface { socket "/s" }\n disable\n}\n')
    assert c.vms["a"].disabled
    c = conf('vm "a" {\n enable\n interface { socket "/s" }\n}\n')
    assert not c.vms["a"].disabled
    assert_error('vm "a" {\n enable\n disable\n interface { socket "/s" }\n}\n',
                 3, "given twice")


# ---- offloads --------------------------------------------------------------

def offload(lines):
    body = "".join("  %s\n" % ln for ln in lines)
    return 'vm "a" {\n interface {\n  socket "/s"\n%s }\n}\n' % body


def iface_of(lines):
    return conf(offload(lines)).vms["a"].interfaces[0]


def test_offload_statements():
    i = iface_of(["offload tx csum software", "offload rx csum software"])
    assert i.offload.tx == dict(ALL_PT, csum="software")
    assert i.offload.rx == dict(ALL_PT, csum="software")
    # no direction: both; "all": every name; later lines win
    i = iface_of(["offload all off", "offload csum passthrough",
                  "offload tx tso4 software"])
    assert i.offload.tx == {"csum": "passthrough", "tso4": "software",
                            "tso6": "off", "ecn": "off", "uso": "off"}
    assert i.offload.rx == dict(dict.fromkeys(config.OFFLOAD_NAMES, "off"),
                                csum="passthrough")
    i = iface_of(["offload tx all software"])
    assert set(i.offload.tx.values()) == {"software"}
    assert i.offload.rx == ALL_PT
    assert i.offload.offered("tx", "csum")
    assert not iface_of(["offload all off"]).offload.offered("rx", "csum")


def test_offload_errors():
    # line 4 is the first offload line in offload()
    assert_error(offload(["offload rx tso4 software"]), 4,
                 "rx tso4 has no software mode")
    assert_error(offload(["offload all software"]), 4, "has no software mode")
    assert_error(offload(["offload rx all software"]), 4, "rx tso4")
    assert_error(offload(["offload tx gso off"]), 4,
                 'unknown offload "gso"', "csum, tso4, tso6, ecn or uso")
    assert_error(offload(["offload tx csum fast"]), 4,
                 'unknown offload mode "fast"',
                 "passthrough, software or off")
    assert_error(offload(["offload"]), 5, "expected tx, rx, all")


def test_offload_dependencies():
    # csum off while tso4 stays on (default): error on the csum line
    e = assert_error(offload(["mtu 1500", "offload tx csum off"]), 5,
                     "a/0: tx tso4 needs tx csum")
    assert "offload tx tso4 off" in e.message
    assert_error(offload(["offload rx csum off", "offload rx tso4 off",
                          "offload rx tso6 off", "offload rx ecn off"]), 4,
                 "rx uso needs rx csum")  # uso never set: blame the csum line
    # csum off with everything else off is fine, either direction
    i = iface_of(["offload tx all off"])
    assert set(i.offload.tx.values()) == {"off"}
    # ecn without tso4 nor tso6
    assert_error(offload(["offload tx tso4 off", "offload tx tso6 off"]), 5,
                 "tx ecn needs tx tso4 or tso6")
    i = iface_of(["offload tx tso4 off", "offload tx tso6 off",
                  "offload tx ecn off"])
    assert i.offload.tx == dict(ALL_PT, tso4="off", tso6="off", ecn="off")
    # ecn with only tso6 is fine
    assert iface_of(["offload rx tso4 off"]).offload.rx["ecn"] == "passthrough"


# ---- equality for reload ---------------------------------------------------

BASE = """\
switch "up" { interface "br0" }
vm "a" {
	interface { socket "/a" switch "up" }
}
vm "b" {
	interface { socket "/b" mtu 1500 }
}
"""


def test_equality_for_reload():
    c1, c2 = conf(BASE), conf(BASE)
    assert c1 == c2
    # comments and blank lines move line numbers, not equality
    c3 = conf("# new comment\n\n" + BASE.replace("{ socket", "{\n socket"))
    assert c3 == c1
    assert c3.vms["a"].line != c1.vms["a"].line
    assert c3.vms["a"] == c1.vms["a"]
    # one changed interface: that VM differs, the other does not
    c4 = conf(BASE.replace("mtu 1500", "mtu 9000"))
    assert c4 != c1
    assert c4.vms["b"] != c1.vms["b"]
    assert c4.vms["b"].interfaces[0] != c1.vms["b"].interfaces[0]
    assert c4.vms["a"] == c1.vms["a"]
    c5 = conf(BASE.replace('socket "/a"', 'socket "/a" offload tx csum '
                           "software"))
    assert c5.vms["a"] != c1.vms["a"] and c5.vms["b"] == c1.vms["b"]
    c6 = conf(BASE.replace('switch "up" {', "\n\n" + 'switch "up" {'))
    assert c6.switches == c1.switches
    assert c1.vms["a"].interfaces[0].key == "a/0"


# ---- robustness -------------------------------------------------------------

TOKENS = ['vm', 'interface', 'switch', 'socket', '"/s"', '"/t"', '{', '}',
          'local', 'prefix', '10.0.0.0/8', 'lladdr', 'locked',
          '52:54:00:00:00:01', 'mtu', '1500', 'offload', 'tx', 'rx', 'all',
          'csum', 'tso4', 'ecn', 'off', 'software', 'passthrough', 'dns',
          '1.2.3.4', 'x', '=', '$x', '"', '#', '\n', 'disable', 'hostname',
          '"h"', 'user', 'chroot', '\\\n', '"a"', '$']


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from(TOKENS), max_size=40))
def test_fuzz_token_soup(words):
    try:
        c = parse(" ".join(words), "f")
    except ConfigError as e:
        assert str(e).startswith("f:") and e.message
    else:
        assert isinstance(c, config.Config)


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=200))
def test_fuzz_text(text):
    try:
        parse(text, "f")
    except ConfigError:
        pass


def test_fuzz_mutated_example():
    text = open(EXAMPLE).read()
    for i in range(0, len(text), 7):
        for cut in (text[:i], text[:i] + text[i + 1:], text[:i] + "{" +
                    text[i:]):
            try:
                parse(cut, "f")
            except ConfigError:
                pass


# ---- the manual page ----------------------------------------------------------

def test_manpage_lint_clean():
    mandoc = shutil.which("mandoc")
    if mandoc is None:
        pytest.skip("mandoc is not installed")
    r = subprocess.run([mandoc, "-T", "lint", "-W", "warning", MANPAGE],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 0 and r.stdout == "" and r.stderr == "", \
        r.stdout + r.stderr


def test_manpage_documents_every_keyword():
    # every word the parser knows appears as a keyword (Ic) or a
    # command modifier (Cm) on some macro line of the page
    marked = set()
    for line in open(MANPAGE):
        words = line.split()
        if not line.startswith("."):
            continue
        for i, w in enumerate(words):
            if w in ("Ic", "Cm"):
                for nxt in words[i + 1:]:
                    if nxt[:1].isupper() and nxt[1:2].islower():
                        break          # the next macro
                    marked.add(nxt.strip(",|"))
    for word in sorted(config.KEYWORDS) + list(config.OFFLOAD_NAMES) + \
            list(config.MODES) + ["tx", "rx", "all"]:
        assert word in marked, word


# ---- IPv6 of local interfaces ----------------------------------------------

def test_local_prefix6_dns6_and_inet6():
    c = config.parse('local prefix6 fd00:1:2::/48\ndns6 fd00::53 2001:db8::1\n'
                     'vm "a" {\n local interface { socket "/a"\n  inet6 off }\n'
                     ' local interface { socket "/b" }\n}\n', "t.conf")
    assert str(c.local_prefix6) == "fd00:1:2::/48"
    assert [str(a) for a in c.dns6] == ["fd00::53", "2001:db8::1"]
    assert [i.inet6 for i in c.interfaces()] == [False, True]
    assert config.parse("", "t.conf").local_prefix6 is None


@pytest.mark.parametrize("text,line,message", [
    ("local prefix6 fd00::1/48\n", 1, "has host bits set (did you mean fd00::/48?)"),
    ("local prefix6 fd00::/56\n", 1, "too small: it must be a /48 or wider"),
    ("local prefix6 10.0.0.0/8\n", 1, "expected an IPv6 prefix"),
    ("local prefix6 fd00::\n", 1, "needs a length"),
    ("\nlocal prefix6 fd00::/48\nlocal prefix6 fd01::/48\n", 3, "given twice"),
    ("dns6 1.2.3.4\n", 1, 'expected an IPv6 address, got "1.2.3.4"'),
    ('vm "a" {\n interface { socket "/a"\n  inet6 off }\n}\n', 3,
     "inet6 is said of local interfaces only"),
    ('vm "a" {\n local interface { socket "/a"\n  inet6 maybe }\n}\n', 3,
     'expected off or on after inet6, got "maybe"'),
])
def test_ipv6_statement_errors(text, line, message):
    assert_error(text, line, message)

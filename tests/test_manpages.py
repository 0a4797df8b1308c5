"""The manual pages: mandoc(1) lint clean, and in step with the code.

- Every page in man/ passes `mandoc -T lint` at the warning level with no
  output at all. At the style level, the only note accepted is the one
  about cross-references mandoc cannot look up (our own pages, which are
  not installed, or system pages it finds without a mandoc.db), and only
  for the pages listed in XREFS: any other style note fails.
- Every option of vionetd's parser (vionetd.main.parse_args) is in the
  SYNOPSIS and the option list of vionetd(8), with its argument name, and
  the page lists no option the parser does not have.
- Every option, command, command argument and choice of vionetctl's parser
  is in vionetctl(8), and the page lists no command the parser does not have.

The parsers are taken from the code itself (argparse.ArgumentParser.parse_args
is wrapped to catch the parser being used), so a new option that is not
documented fails here.
"""
import argparse
import glob
import os
import re
import shutil
import subprocess

import pytest

from vionetd import main as vmain
from vionetd import vionetctl

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MAN = os.path.join(ROOT, "man")
PAGES = sorted(glob.glob(os.path.join(MAN, "*.[58]")))

# Pages that our pages cross-reference: our own, and system ones. mandoc
# looks each up in the system's manual tree and gives a STYLE note where it
# cannot; these notes, for these pages only, are accepted.
OURS = {("vionetd", "8"), ("vionetctl", "8"), ("vionetd.conf", "5")}
SYSTEM = {("syslog", "3"), ("ps", "1"), ("ip", "8")}
XREFS = OURS | SYSTEM

NOT_FOUND = re.compile(r"^mandoc: \S+:\d+:\d+: STYLE: referenced manual not found: "
                       r"Xr (\S+) (\d)( \(\d+ times\))?$")
NO_DB = re.compile(r"^mandoc: outdated mandoc\.db lacks (\S+)\((\d)\) entry, "
                   r"run makewhatis \S+$")


def mandoc():
    path = shutil.which("mandoc")
    if path is None:
        pytest.skip("mandoc is not installed")
    return path


def lint(page, *level):
    r = subprocess.run([mandoc(), "-T", "lint", *level, page],
                       capture_output=True, text=True, timeout=30)
    return r.stdout + r.stderr


def page_text(name):
    with open(os.path.join(MAN, name)) as f:
        return f.read()


def section(text, name):
    """The macro lines of section .Sh name, up to the next .Sh."""
    m = re.search(r"^\.Sh %s\n(.*?)(?=^\.Sh |\Z)" % re.escape(name), text, re.M | re.S)
    assert m, "no section %s" % name
    return m.group(1)


def items(text):
    """The words of every .It line, as lists."""
    return [line.split()[1:] for line in text.splitlines() if line.startswith(".It ")]


def test_there_are_three_pages():
    assert [os.path.basename(p) for p in PAGES] == \
        ["vionetctl.8", "vionetd.8", "vionetd.conf.5"]


@pytest.mark.parametrize("page", PAGES, ids=os.path.basename)
def test_lint_warnings(page):
    out = lint(page, "-W", "warning")
    assert out == "", out


@pytest.mark.parametrize("page", PAGES, ids=os.path.basename)
def test_lint_style(page):
    unexpected = []
    for line in lint(page).splitlines():
        m = NOT_FOUND.match(line) or NO_DB.match(line)
        if not m or (m.group(1), m.group(2)) not in XREFS:
            unexpected.append(line)
    assert not unexpected, "\n".join(unexpected)


@pytest.mark.parametrize("page", PAGES, ids=os.path.basename)
def test_xrefs_are_known(page):
    # every .Xr names a page in XREFS, so that the list above stays the
    # list of what the pages really cite
    text = open(page).read()
    refs = set(re.findall(r"^\.Xr (\S+) (\d)", text, re.M))
    assert refs <= XREFS, refs - XREFS


def test_lint_catches_a_broken_page(tmp_path):
    # the lint tests can fail: a page with an error is not clean
    bad = tmp_path / "bad.8"
    bad.write_text(page_text("vionetd.8").replace(".Sh DESCRIPTION\n", ".Sh DESCRIPTION\n.Bl\n", 1))
    assert lint(str(bad), "-W", "warning") != ""


# ---- the parsers, taken from the code ------------------------------------------

class _Caught(Exception):
    pass


def parser_of(call, stop):
    """The ArgumentParser that call() uses; if stop, stop it before it parses."""
    caught = []
    orig = argparse.ArgumentParser.parse_args

    def grab(self, *a, **kw):
        caught.append(self)
        if stop:
            raise _Caught()
        return orig(self, *a, **kw)

    argparse.ArgumentParser.parse_args = grab
    try:
        call()
    except _Caught:
        pass
    finally:
        argparse.ArgumentParser.parse_args = orig
    assert caught, "no parser used"
    return caught[0]


def options(parser):
    """(flag, metavar or None) of every option but -h."""
    out = []
    for a in parser._actions:
        if not a.option_strings or isinstance(a, argparse._HelpAction):
            continue
        takes = a.nargs != 0
        out.append((a.option_strings[0], (a.metavar or a.dest) if takes else None))
    return out


def subcommands(parser):
    for a in parser._actions:
        if isinstance(a, argparse._SubParsersAction):
            return a.choices
    return {}


# ---- vionetd(8) ------------------------------------------------------------------

def test_vionetd_options_documented():
    parser = parser_of(lambda: vmain.parse_args([]), stop=False)
    opts = options(parser)
    assert opts, "parser has no options"
    text = page_text("vionetd.8")
    synopsis = section(text, "SYNOPSIS")
    listed = {tuple(w) for w in items(section(text, "DESCRIPTION"))
              if w and w[0] == "Fl"}
    for flag, metavar in opts:
        letter = flag.lstrip("-")
        if metavar is None:
            # a flag without argument: in the cluster .Op Fl dnv
            assert re.search(r"^\.Op Fl [a-zA-Z]*%s[a-zA-Z]*$" % letter, synopsis, re.M), flag
            assert ("Fl", letter) in listed, flag
        else:
            assert ".Op Fl %s Ar %s\n" % (letter, metavar) in synopsis, flag
            assert ("Fl", letter, "Ar", metavar) in listed, flag
    # and nothing documented that the parser does not know
    known = {flag.lstrip("-") for flag, _ in opts}
    assert {w[1] for w in listed} <= known, {w[1] for w in listed} - known


# ---- vionetctl(8) ----------------------------------------------------------------

def test_vionetctl_documented():
    parser = parser_of(lambda: vionetctl.main(["status"]), stop=True)
    text = page_text("vionetctl.8")
    described = items(section(text, "DESCRIPTION"))

    for flag, metavar in options(parser):
        assert ["Fl", flag.lstrip("-"), "Ar", metavar] in described, flag
        assert ".Op Fl %s Ar %s\n" % (flag.lstrip("-"), metavar) in section(text, "SYNOPSIS")

    commands = subcommands(parser)
    assert set(commands) >= {"status", "show", "stats", "reload", "log"}
    headings = {w[1]: w for w in described if len(w) > 1 and w[0] == "Cm"}
    for name, sub in commands.items():
        assert name in headings, "command %s not documented" % name
        words = headings[name]
        for a in sub._actions:
            if isinstance(a, argparse._HelpAction):
                continue
            if a.option_strings:
                # argparse's --json is mdoc's Fl -json
                assert "-" + a.option_strings[0].lstrip("-") in words \
                    or a.option_strings[0][1:] in words, (name, a.option_strings)
            elif a.choices:
                for choice in a.choices:
                    assert choice in words, (name, choice)
            else:
                assert ("Ar", a.dest) in zip(words, words[1:]), (name, a.dest)
    # no documented command the parser does not have: the command list is
    # the .It Cm lines whose word is a command or an undocumented leftover
    command_list = section(text, "DESCRIPTION").split("The commands are as follows:")[1]
    top = [w[1] for w in items(command_list) if len(w) > 1 and w[0] == "Cm"]
    assert set(top) == set(commands), set(top) ^ set(commands)


def test_vionetctl_permissions_documented():
    # the read-only commands of ctl.py are the ones the page says the group may use
    from vionetd import ctl
    text = page_text("vionetctl.8")
    para = text[text.index("Members of that group"):text.index(".Sh FILES")]
    readonly = set(re.findall(r"^\.Cm (\w+)", para.split("The commands that change")[0], re.M))
    # (the control requests of ctl.py are named as the commands)
    assert readonly == set(ctl.READ_ONLY)

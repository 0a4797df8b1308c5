"""Run by the parent and `vionetd -n`: vionetd.conf's lexer, which expands $macros.

Lexer turns the text into Tokens on demand: bare words, quoted strings, "{",
"}", "=" and one "eof" token at the end. Blanks, comments (# to the end of
the line) and line continuations (backslash, newline) separate tokens. A
$name is replaced by the tokens of the macro's value, lexed in turn.

Invariants:
- Lexing is lazy: the grammar defines macros between tokens (they are kept
  in the dict it passes in), and a $name sees the definitions before it.
- Any error raises ConfigError naming the file and the line; a token from a
  macro carries the line of the $name that produced it, not of the
  definition, and so does any error in it.
- Expansion is bounded twice: macros nest at most MAX_MACRO_DEPTH deep, and
  all the expansions of one file together produce at most MAX_EXPANDED
  tokens (nested macros multiply: "billion laughs").
- Text inside quotes is never expanded, and a quoted word is marked quoted:
  Token.is_word(), which the grammar asks of keywords, is false for it.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import NoReturn

from vionetd.config.model import ConfigError

MAX_MACRO_DEPTH = 8
MAX_EXPANDED = 100000

_MACRO_USE = re.compile(r"[A-Za-z0-9_]+")
_BARE = re.compile(r"[A-Za-z0-9_./:+@-]+")


@dataclass
class Token:
    kind: str            # "word", "{", "}", "=", "eof"
    value: str
    line: int
    filename: str
    quoted: bool = False

    def is_word(self, *values: str) -> bool:
        """An unquoted word, one of values if any are given."""
        return (self.kind == "word" and not self.quoted
                and (not values or self.value in values))

    def describe(self) -> str:
        """The token as an error message shows it: "value" or end of file."""
        if self.kind == "eof":
            return "end of file"
        return '"%s"' % self.value

    def error(self, message: str) -> NoReturn:
        """Raise ConfigError for message at this token's file and line."""
        raise ConfigError(self.filename, self.line, message)


class Lexer:
    """Tokens of one text, read with peek() and next().

    A Lexer for a macro's value reads with fixed_line set (every token gets
    the line of the $name) and shares its parent's depth count and budget.
    """

    def __init__(self, text: str, filename: str, macros: dict[str, str],
                 line: int = 1, depth: int = 0, fixed_line: bool = False,
                 budget: list[int] | None = None):
        self.text = text
        self.pos = 0
        self.line = line
        self.filename = filename
        self.macros = macros
        self.depth = depth
        self.fixed_line = fixed_line   # macro text: report the $use's line
        self.pending: list[Token] = []
        self.budget = [MAX_EXPANDED] if budget is None else budget

    def error(self, line: int, message: str) -> NoReturn:
        raise ConfigError(self.filename, line, message)

    def peek(self, n: int = 0) -> Token:
        """The token n places ahead, without consuming anything."""
        while len(self.pending) <= n:
            self.pending.extend(self._lex())
        return self.pending[n]

    def next(self) -> Token:
        """The next token, consumed; at the end, "eof" again and again."""
        tok = self.peek()
        if tok.kind != "eof":
            self.pending.pop(0)
        return tok

    def _token(self, kind: str, value: str, line: int,
               quoted: bool = False) -> Token:
        return Token(kind, value, line, self.filename, quoted)

    def _newline(self):
        if not self.fixed_line:
            self.line += 1

    def _skip_blank(self):
        text = self.text
        while self.pos < len(text):
            c = text[self.pos]
            if c == "\n":
                self._newline()
                self.pos += 1
            elif c in " \t\r":
                self.pos += 1
            elif c == "\\" and text.startswith("\n", self.pos + 1):
                self._newline()        # line continuation, as in vm.conf
                self.pos += 2
            elif c == "#":
                end = text.find("\n", self.pos)
                self.pos = len(text) if end < 0 else end
            else:
                return

    def _lex(self) -> list[Token]:
        """The tokens at pos: one, or all those of a $macro."""
        self._skip_blank()
        if self.pos >= len(self.text):
            return [self._token("eof", "", self.line)]
        c = self.text[self.pos]
        if c in "{}=":
            self.pos += 1
            return [self._token(c, c, self.line)]
        if c == '"':
            return [self._string()]
        if c == "$":
            return self._macro()
        m = _BARE.match(self.text, self.pos)
        if m:
            self.pos = m.end()
            return [self._token("word", m.group(), self.line)]
        shown = c if c.isprintable() else repr(c)
        self.error(self.line, 'unexpected character "%s"; strings with such '
                   "characters must be quoted" % shown)

    def _string(self) -> Token:
        """A quoted string, on one line; \\" and \\\\ stand for " and \\."""
        line = self.line
        out = []
        self.pos += 1
        while self.pos < len(self.text):
            c = self.text[self.pos]
            if c == '"':
                self.pos += 1
                return self._token("word", "".join(out), line, quoted=True)
            if c == "\n":
                break
            if c == "\\" and self.pos + 1 < len(self.text) \
                    and self.text[self.pos + 1] in '"\\':
                c = self.text[self.pos + 1]
                self.pos += 1
            elif not c.isprintable():
                self.error(line, "control character %r in string" % c)
            out.append(c)
            self.pos += 1
        self.error(line, 'unterminated string: expected \'"\' before end '
                   "of line")

    def _macro(self) -> list[Token]:
        """$name: the tokens of the macro's value, at least one."""
        line = self.line
        m = _MACRO_USE.match(self.text, self.pos + 1)
        if not m:
            self.error(line, 'expected macro name after "$"')
        self.pos = m.end()
        name = m.group()
        if name not in self.macros:
            self.error(line, "undefined macro $%s" % name)
        if self.depth >= MAX_MACRO_DEPTH:
            self.error(line, "macro $%s nested too deeply (recursive?)" % name)
        sub = Lexer(self.macros[name], self.filename, self.macros,
                    line=line, depth=self.depth + 1, fixed_line=True,
                    budget=self.budget)
        toks = []
        while (tok := sub.next()).kind != "eof":
            self.budget[0] -= 1
            if self.budget[0] < 0:
                self.error(line, "macros expand to more than %d words"
                           % MAX_EXPANDED)
            toks.append(tok)
        if not toks:
            self.error(line, "macro $%s is empty" % name)
        return toks

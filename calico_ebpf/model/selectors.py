"""Calico's label-selector language: parse, evaluate against labels, print canonically.

The grammar, precedences and canonical form follow Calico's selector parser
(``libcalico-go/lib/selector``), checked by every vector of its parser tests
(``tests/data/calico-selector-vectors.json``)::

    expr    := and ( "||" and )*
    and     := op ( "&&" op )*
    op      := "!"* ( "(" expr ")" | "all()" | "global()" | "has(" LABEL ")"
                    | LABEL ( "==" | "!=" | "contains" | "starts with" | "ends with" ) STRING
                    | LABEL ( "in" | "not in" ) "{" [ STRING ( "," STRING )* [","] ] "}" )

LABEL is ``[A-Za-z0-9_./-]+``; STRING is single- or double-quoted without
escapes; blanks are spaces and tabs only. ``startswith``, ``endswith`` and
``notin`` are accepted spellings. An empty selector is ``all()``.

Absent labels: ``!=`` and ``not in`` are true, every other comparison false.

>>> sel = Selector.parse("role in {'db', 'web'} && !has(quarantine)")
>>> sel.matches({"role": "web"}), sel.matches({"role": "web", "quarantine": ""})
(True, False)
>>> str(Selector.parse("!(has( b)||! has(a ))"))
'!(has(b) || !has(a))'
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass

from calico_ebpf.errors import ModelError

__all__ = [
    "All",
    "And",
    "CmpOp",
    "Compare",
    "Global",
    "Has",
    "InSet",
    "Node",
    "Not",
    "Or",
    "Selector",
    "SelectorError",
    "parse_selector",
]

_BLANKS = " \t"
_LABEL_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_./-")


class SelectorError(ModelError):
    """A selector that does not parse; names the selector, the character position and why."""

    def __init__(self, selector: str, position: int, reason: str):
        self.selector = selector
        self.position = position
        super().__init__(f"selector {selector!r}", f"position {position}", reason)


# ---------------------------------------------------------------- the tree

def _quote(value: str) -> str:
    # Literals have no escapes: a value holding " can only be written in '...'.
    q = "'" if '"' in value else '"'
    return f"{q}{value}{q}"


class Node:
    """A node of a parsed selector."""

    __slots__ = ()

    def evaluate(self, labels: Mapping[str, str]) -> bool:  # pragma: no cover - abstract
        raise NotImplementedError


@dataclass(frozen=True, slots=True)
class All(Node):
    """``all()`` (and the empty selector): matches every label set."""

    def evaluate(self, labels: Mapping[str, str]) -> bool:
        return True

    def __str__(self) -> str:
        return "all()"


@dataclass(frozen=True, slots=True)
class Global(Node):
    """``global()``: true on any labels; in policy it restricts to non-namespaced endpoints."""

    def evaluate(self, labels: Mapping[str, str]) -> bool:
        return True

    def __str__(self) -> str:
        return "global()"


@dataclass(frozen=True, slots=True)
class Has(Node):
    """``has(label)``: the label is present, whatever its value."""

    label: str

    def evaluate(self, labels: Mapping[str, str]) -> bool:
        return self.label in labels

    def __str__(self) -> str:
        return f"has({self.label})"


class CmpOp(enum.Enum):
    """Comparisons of a label's value with one string; the value is the canonical spelling."""

    EQ = "=="
    NE = "!="
    CONTAINS = "contains"
    STARTS_WITH = "starts with"
    ENDS_WITH = "ends with"


_CMP = {
    CmpOp.EQ: lambda have, want: have == want,
    CmpOp.NE: lambda have, want: have != want,
    CmpOp.CONTAINS: lambda have, want: want in have,
    CmpOp.STARTS_WITH: lambda have, want: have.startswith(want),
    CmpOp.ENDS_WITH: lambda have, want: have.endswith(want),
}


@dataclass(frozen=True, slots=True)
class Compare(Node):
    """``label OP "value"``; an absent label makes ``!=`` true and the others false."""

    label: str
    op: CmpOp
    value: str

    def evaluate(self, labels: Mapping[str, str]) -> bool:
        have = labels.get(self.label)
        if have is None:
            return self.op is CmpOp.NE
        return _CMP[self.op](have, self.value)

    def __str__(self) -> str:
        return f"{self.label} {self.op.value} {_quote(self.value)}"


@dataclass(frozen=True, slots=True)
class InSet(Node):
    """``label in {...}`` (or ``not in`` when ``negated``); ``values`` sorted, no duplicates."""

    label: str
    values: tuple[str, ...]
    negated: bool = False

    def evaluate(self, labels: Mapping[str, str]) -> bool:
        have = labels.get(self.label)
        if have is None:
            return self.negated
        return (have in self.values) != self.negated

    def __str__(self) -> str:
        op = "not in" if self.negated else "in"
        return f"{self.label} {op} {{{', '.join(_quote(v) for v in self.values)}}}"


@dataclass(frozen=True, slots=True)
class Not(Node):
    operand: Node

    def evaluate(self, labels: Mapping[str, str]) -> bool:
        return not self.operand.evaluate(labels)

    def __str__(self) -> str:
        return f"!{self.operand}"


@dataclass(frozen=True, slots=True)
class And(Node):
    operands: tuple[Node, ...]

    def evaluate(self, labels: Mapping[str, str]) -> bool:
        return all(o.evaluate(labels) for o in self.operands)

    def __str__(self) -> str:
        # Calico's canonical form brackets every && and || group.
        return "(" + " && ".join(map(str, self.operands)) + ")"


@dataclass(frozen=True, slots=True)
class Or(Node):
    operands: tuple[Node, ...]

    def evaluate(self, labels: Mapping[str, str]) -> bool:
        return any(o.evaluate(labels) for o in self.operands)

    def __str__(self) -> str:
        return "(" + " || ".join(map(str, self.operands)) + ")"


# ---------------------------------------------------------------- tokens

class _T(enum.Enum):
    LABEL = "label"
    STRING = "string"
    LBRACE = "{"
    RBRACE = "}"
    COMMA = ","
    LPAREN = "("
    RPAREN = ")"
    NOT = "!"
    AND = "&&"
    OR = "||"
    CMP = "comparison"
    IN = "in"
    NOT_IN = "not in"
    HAS = "has()"
    ALL = "all()"
    GLOBAL = "global()"
    EOF = "end of selector"


@dataclass(frozen=True, slots=True)
class _Tok:
    kind: _T
    pos: int
    value: object = None

    def describe(self) -> str:
        if self.kind is _T.LABEL:
            return f"label {self.value!r}"
        if self.kind is _T.STRING:
            return f"string {_quote(str(self.value))}"
        if self.kind is _T.CMP:
            return f"'{self.value.value}'"
        return self.kind.value if self.kind is _T.EOF else f"'{self.kind.value}'"


_PUNCT = {"(": _T.LPAREN, ")": _T.RPAREN, "{": _T.LBRACE, "}": _T.RBRACE, ",": _T.COMMA}
_PAIRS = {"==": (_T.CMP, CmpOp.EQ), "!=": (_T.CMP, CmpOp.NE), "&&": (_T.AND, None), "||": (_T.OR, None)}
# After a label only an operator can follow; these words are operators there
# (written with or without the blank, as Calico accepts).
_WORD_OPS = [
    (("contains",), _T.CMP, CmpOp.CONTAINS),
    (("starts", "with"), _T.CMP, CmpOp.STARTS_WITH),
    (("ends", "with"), _T.CMP, CmpOp.ENDS_WITH),
    (("not", "in"), _T.NOT_IN, None),
    (("in",), _T.IN, None),
]
_FUNCS = {"has": _T.HAS, "all": _T.ALL, "global": _T.GLOBAL}


class _Lexer:
    def __init__(self, text: str):
        self.text = text
        self.pos = 0

    def fail(self, pos: int, reason: str) -> SelectorError:
        return SelectorError(self.text, pos, reason)

    def skip_blanks(self) -> None:
        while self.pos < len(self.text) and self.text[self.pos] in _BLANKS:
            self.pos += 1

    def label_at(self, pos: int) -> str:
        end = pos
        while end < len(self.text) and self.text[end] in _LABEL_CHARS:
            end += 1
        return self.text[pos:end]

    def tokens(self) -> list[_Tok]:
        out: list[_Tok] = []
        text = self.text
        while True:
            self.skip_blanks()
            start = self.pos
            if start == len(text):
                out.append(_Tok(_T.EOF, start))
                return out
            c, pair = text[start], text[start:start + 2]
            after_label = bool(out) and out[-1].kind is _T.LABEL
            if c in _PUNCT:
                out.append(_Tok(_PUNCT[c], start))
                self.pos += 1
            elif pair in _PAIRS:
                kind, op = _PAIRS[pair]
                out.append(_Tok(kind, start, op))
                self.pos += 2
            elif c == "!":
                out.append(_Tok(_T.NOT, start))
                self.pos += 1
            elif c in "=&|":
                raise self.fail(start, f"expected '{c}{c}'" if c != "=" else "expected '=='")
            elif c in "\"'":
                end = text.find(c, start + 1)
                if end < 0:
                    raise self.fail(start, "unterminated string")
                out.append(_Tok(_T.STRING, start, text[start + 1:end]))
                self.pos = end + 1
            elif after_label:
                out.append(self.word_operator(out[-1]))
            elif (func := self.function(start)) is not None:
                out.append(func)
            elif word := self.label_at(start):
                out.append(_Tok(_T.LABEL, start, word))
                self.pos += len(word)
            else:
                raise self.fail(start, f"unexpected character {c!r}")

    def word_operator(self, label: _Tok) -> _Tok:
        start = self.pos
        for words, kind, op in _WORD_OPS:
            pos = start
            for i, word in enumerate(words):
                if i:
                    while pos < len(self.text) and self.text[pos] in _BLANKS:
                        pos += 1
                if not self.text.startswith(word, pos):
                    break
                pos += len(word)
            else:
                self.pos = pos
                return _Tok(kind, start, op)
        raise self.fail(start, f"expected an operator after label {label.value!r}")

    def function(self, start: int) -> _Tok | None:
        # has(label), all(), global(): the name is followed directly by "(".
        for name, kind in _FUNCS.items():
            if self.text.startswith(name + "(", start):
                self.pos = start + len(name) + 1
                self.skip_blanks()
                arg = None
                if kind is _T.HAS:
                    arg = self.label_at(self.pos)
                    if not arg:
                        raise self.fail(self.pos, "expected a label name in has(...)")
                    self.pos += len(arg)
                    self.skip_blanks()
                if not self.text.startswith(")", self.pos):
                    raise self.fail(self.pos, f"expected ')' to close {name}(")
                self.pos += 1
                return _Tok(kind, start, arg)
        return None


# ---------------------------------------------------------------- parser

class _Parser:
    def __init__(self, text: str):
        self.text = text
        self.toks = _Lexer(text).tokens()
        self.i = 0

    @property
    def tok(self) -> _Tok:
        return self.toks[self.i]

    def take(self) -> _Tok:
        tok = self.toks[self.i]
        self.i += 1
        return tok

    def fail(self, tok: _Tok, expected: str) -> SelectorError:
        return SelectorError(self.text, tok.pos, f"expected {expected}, found {tok.describe()}")

    def parse(self) -> Node:
        if self.tok.kind is _T.EOF:
            return All()
        node = self.expr()
        if self.tok.kind is not _T.EOF:
            raise self.fail(self.tok, "'&&', '||' or the end of the selector")
        return node

    def expr(self) -> Node:
        parts = [self.conjunction()]
        while self.tok.kind is _T.OR:
            self.take()
            parts.append(self.conjunction())
        return parts[0] if len(parts) == 1 else Or(tuple(parts))

    def conjunction(self) -> Node:
        parts = [self.operation()]
        while self.tok.kind is _T.AND:
            self.take()
            parts.append(self.operation())
        return parts[0] if len(parts) == 1 else And(tuple(parts))

    def operation(self) -> Node:
        negated = False
        while self.tok.kind is _T.NOT:  # "!!x" is x: Calico folds the nots
            self.take()
            negated = not negated
        node = self.operand()
        return Not(node) if negated else node

    def operand(self) -> Node:
        tok = self.take()
        if tok.kind is _T.ALL:
            return All()
        if tok.kind is _T.GLOBAL:
            return Global()
        if tok.kind is _T.HAS:
            return Has(tok.value)
        if tok.kind is _T.LPAREN:
            node = self.expr()
            if self.tok.kind is not _T.RPAREN:
                raise self.fail(self.tok, "')'")
            self.take()
            return node
        if tok.kind is _T.LABEL:
            return self.comparison(tok.value)
        raise self.fail(tok, "a label, has(), all(), global(), '!' or '('")

    def comparison(self, label: str) -> Node:
        op = self.take()
        if op.kind is _T.CMP:
            value = self.take()
            if value.kind is not _T.STRING:
                raise self.fail(value, f"a quoted string after {op.describe()}")
            return Compare(label, op.value, value.value)
        if op.kind in (_T.IN, _T.NOT_IN):
            return InSet(label, self.string_set(), negated=op.kind is _T.NOT_IN)
        raise self.fail(op, f"an operator after label {label!r}")

    def string_set(self) -> tuple[str, ...]:
        if self.tok.kind is not _T.LBRACE:
            raise self.fail(self.tok, "'{' to start a set of strings")
        self.take()
        values: set[str] = set()
        while self.tok.kind is _T.STRING:
            values.add(self.take().value)
            if self.tok.kind is not _T.COMMA:
                break
            self.take()
        if self.tok.kind is not _T.RBRACE:
            raise self.fail(self.tok, "a quoted string or '}'")
        self.take()
        return tuple(sorted(values))


# ---------------------------------------------------------------- public face

class Selector:
    """A parsed selector. Equal selectors have equal canonical strings (``str()``).

    >>> Selector.parse("a in {'z', 'a', 'z'}") == Selector.parse('a in {"a", "z"}')
    True
    """

    __slots__ = ("_text", "root")

    def __init__(self, root: Node):
        self.root = root
        self._text = str(root)

    @classmethod
    def parse(cls, text: str) -> Selector:
        """Parse ``text``; raises :class:`SelectorError` naming the position of the problem."""
        if not isinstance(text, str):
            raise SelectorError(repr(text), 0, "a selector must be a string")
        return cls(_Parser(text).parse())

    def matches(self, labels: Mapping[str, str]) -> bool:
        """Whether a label set (``{"app": "web"}``) is selected."""
        return self.root.evaluate(labels)

    __call__ = matches

    @property
    def selects_all(self) -> bool:
        """True for the empty selector and ``all()``."""
        return isinstance(self.root, All)

    def __str__(self) -> str:
        return self._text

    def __repr__(self) -> str:
        return f"Selector({self._text!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Selector) and other._text == self._text

    def __hash__(self) -> int:
        return hash(self._text)


def parse_selector(text: str) -> Selector:
    """Shorthand for :meth:`Selector.parse`."""
    return Selector.parse(text)

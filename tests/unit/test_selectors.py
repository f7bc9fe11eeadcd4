"""Calico's selector language, checked against every vector of Calico's parser tests."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from calico_ebpf.errors import ModelError
from calico_ebpf.model.selectors import (
    All,
    And,
    CmpOp,
    Compare,
    Has,
    InSet,
    Not,
    Or,
    Selector,
    SelectorError,
    parse_selector,
)

VECTORS = json.loads((Path(__file__).parents[1] / "data" / "calico-selector-vectors.json").read_text())


def _cases(table: str, ids) -> list:
    return [pytest.param(case, id=f"{n}:{ids(case)}") for n, case in enumerate(VECTORS[table])]


def test_vector_file_is_complete():
    # The counts the reference documents; a truncated copy must not pass quietly.
    assert len(VECTORS["selector_tests"]) == 58
    assert sum(len(t["matches"]) + len(t["non_matches"]) for t in VECTORS["selector_tests"]) == 98
    assert len(VECTORS["bad_selectors"]) == 26
    assert len(VECTORS["canonicalisation"]) == 17


@pytest.mark.parametrize("case", _cases("selector_tests", lambda c: c["selector"]))
def test_selector_vector(case):
    sel = Selector.parse(case["selector"])
    for labels in case["matches"]:
        assert sel.matches(labels), f"{case['selector']!r} must match {labels}"
    for labels in case["non_matches"]:
        assert not sel.matches(labels), f"{case['selector']!r} must not match {labels}"
    # The canonical form means the same thing and is a fixed point.
    again = Selector.parse(str(sel))
    assert str(again) == str(sel)
    for labels in case["matches"] + case["non_matches"]:
        assert again.matches(labels) == sel.matches(labels)


@pytest.mark.parametrize("text", [pytest.param(t, id=f"{n}:{t}") for n, t in enumerate(VECTORS["bad_selectors"])])
def test_bad_selector_vector(text):
    with pytest.raises(SelectorError) as info:
        Selector.parse(text)
    err = info.value
    assert err.selector == text
    assert 0 <= err.position <= len(text)
    assert repr(text) in str(err)


@pytest.mark.parametrize("case", _cases("canonicalisation", lambda c: c["input"]))
def test_canonicalisation_vector(case):
    assert str(Selector.parse(case["input"])) == case["canonical"]


# --- beyond the vectors: structure, positions, API ----------------------------------

def test_tree_shape_and_precedence():
    sel = Selector.parse("a == 'x' || !b in {'y'} && has(c)")
    assert sel.root == Or((
        Compare("a", CmpOp.EQ, "x"),
        And((Not(InSet("b", ("y",))), Has("c"))),
    ))
    assert str(sel) == '(a == "x" || (!b in {"y"} && has(c)))'


def test_not_folding_and_parenthesised_leaves():
    assert Selector.parse("!!has(a)").root == Has("a")
    assert Selector.parse("!!!has(a)").root == Not(Has("a"))
    assert Selector.parse("((has(a)))").root == Has("a")


def test_alternative_spellings():
    assert str(Selector.parse("a notin {'x'}")) == 'a not in {"x"}'
    assert str(Selector.parse("a not  in{'x',}")) == 'a not in {"x"}'
    assert str(Selector.parse("a startswith 'p' && b ends  with 's'")) == '(a starts with "p" && b ends with "s")'
    assert str(Selector.parse("a in {}")) == "a in {}"


def test_label_names_with_prefix_and_dashes():
    sel = Selector.parse("projectcalico.org/namespace == 'ns-1' && kubernetes.io/metadata.name in {'a'}")
    assert sel.matches({"projectcalico.org/namespace": "ns-1", "kubernetes.io/metadata.name": "a"})
    assert not sel.matches({"projectcalico.org/namespace": "ns-1"})


def test_absent_label_semantics():
    absent: dict[str, str] = {}
    assert Selector.parse("a != 'x'").matches(absent)
    assert Selector.parse("a not in {'x'}").matches(absent)
    for text in ("a == 'x'", "a in {'x'}", "a contains ''", "a starts with ''", "a ends with ''"):
        assert not Selector.parse(text).matches(absent), text
    assert Selector.parse("a contains ''").matches({"a": "anything"})


@pytest.mark.parametrize("text, position, reason", [
    ("a b", 2, "expected an operator after label 'a'"),
    ("a == b", 5, "expected a quoted string after '=='"),
    ("a = 'b'", 2, "expected '=='"),
    ("has(a) & has(b)", 7, "expected '&&'"),
    ("a == 'b", 5, "unterminated string"),
    ("(a == 'b'", 9, "expected ')', found end of selector"),
    ("a in 'x'", 5, "expected '{'"),
    ("has()", 4, "expected a label name"),
    ("all(x)", 4, "expected ')' to close all("),
    ("a == 'b' c", 9, "expected '&&', '||' or the end"),
    ("a == 'b'\n", 8, "unexpected character '\\n'"),
])
def test_error_names_position_and_reason(text, position, reason):
    with pytest.raises(SelectorError) as info:
        Selector.parse(text)
    assert info.value.position == position
    assert reason in info.value.reason
    assert isinstance(info.value, ModelError)
    assert f"position {position}" in str(info.value)


def test_selector_equality_hashing_and_shortcuts():
    a = parse_selector("a in {'z', 'a', 'z'}")
    b = Selector.parse('a in {"a", "z"}')
    assert a == b and hash(a) == hash(b) and len({a, b}) == 1
    assert repr(a) == "Selector('a in {\"a\", \"z\"}')"
    assert a({"a": "z"})
    assert Selector.parse("").selects_all and Selector.parse(" all( ) ").selects_all
    assert not Selector.parse("global()").selects_all
    assert Selector.parse("").root == All()


def test_quoting_picks_the_quote_the_value_does_not_hold():
    assert str(Selector.parse("a == 'say \"hi\"'")) == "a == 'say \"hi\"'"
    assert str(Selector.parse("a == \"it's\"")) == "a == \"it's\""
    assert str(Selector.parse("a in {'\"', \"'\"}")) == "a in {'\"', \"'\"}"


def test_non_string_is_rejected():
    with pytest.raises(SelectorError):
        Selector.parse(None)  # type: ignore[arg-type]

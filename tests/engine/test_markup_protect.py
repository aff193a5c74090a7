"""Markup parsing, protected spans and unit rendering: the byte-for-byte guarantees."""

import pytest

from ctxgate.compressor import InvalidRequest, find_protected, has_markup, parse_markup
from ctxgate.compressor._units import render, segment


def test_markup_is_stripped_and_regions_point_into_stripped_text():
    m = parse_markup(
        "a <ctxgate:keep>KEEP ME</ctxgate:keep> b <ctxgate:compress rate=0.2>long part</ctxgate:compress> c"
    )
    assert m.text == "a KEEP ME b long part c"
    assert [m.text[r.start : r.end] for r in m.keep] == ["KEEP ME"]
    assert [(m.text[r.start : r.end], r.rate) for r in m.compress] == [("long part", 0.2)]


def test_tags_are_honoured_in_any_case_and_only_tags_count_as_markup():
    m = parse_markup("Café <CTXGATE:Keep>KEEP</CTXGATE:Keep> b <CtxGate:compress RATE=0.5>x</CtxGate:compress>")
    assert m.text == "Café KEEP b x"
    assert [m.text[r.start : r.end] for r in m.keep] == ["KEEP"] and [r.rate for r in m.compress] == [0.5]
    assert has_markup("é </CTXGATE:keep>") and has_markup("<ctxgate:keep>")
    assert not has_markup("ctxgate: is our name") and not has_markup("Café <b>bold</b>")
    with pytest.raises(InvalidRequest, match="offset 2"):
        parse_markup("x <CTXGATE:KEEP>never closed")


@pytest.mark.parametrize(
    "bad, where",
    [
        ("x <ctxgate:keep>never closed", "offset 2"),
        ("x </ctxgate:keep> y", "offset 2"),
        ("<ctxgate:keep><ctxgate:keep>a</ctxgate:keep></ctxgate:keep>", "nested"),
        ("<ctxgate:compress rate=2>a</ctxgate:compress>", "rate must be"),
        ("<ctxgate:compress rate=abc>a</ctxgate:compress>", "not a number"),
        ("<ctxgate:compress level=1>a</ctxgate:compress>", "unknown attribute"),
    ],
)
def test_bad_markup_names_the_problem(bad, where):
    with pytest.raises(InvalidRequest, match=where):
        parse_markup(bad)


def _kinds(text):
    return {(text[s.start : s.end], s.kind) for s in find_protected(text)}


def test_protected_spans_cover_identifiers_numbers_urls():
    text = (
        "Call get_user_id() at https://api.example.com/v1/users?id=42, mail ops@example.org, "
        "id 123e4567-e89b-12d3-a456-426614174000, commit 9fceb02d0ae598e95dc970b74767f19372d61af8, "
        "file /etc/nginx/nginx.conf costs $1,299.99 (12.5%) on 2023-01-05 and parseJSON config.max_tokens."
    )
    kinds = _kinds(text)
    for expected in [
        ("https://api.example.com/v1/users?id=42", "url"),
        ("ops@example.org", "email"),
        ("123e4567-e89b-12d3-a456-426614174000", "uuid"),
        ("9fceb02d0ae598e95dc970b74767f19372d61af8", "hash"),
        ("/etc/nginx/nginx.conf", "path"),
        ("$1,299.99", "number"),
        ("12.5%", "number"),
        ("2023-01-05", "number"),
        ("parseJSON", "identifier"),
        ("config.max_tokens", "identifier"),
    ]:
        assert expected in kinds, expected


def test_code_blocks_and_json_are_structural():
    text = 'Intro.\n```python\ndef f(x):\n    return x  # keep\n```\nThen {"a": [1, 2], "b": "c d"} end.'
    spans = {(text[s.start : s.end], s.kind) for s in find_protected(text)}
    assert ("```python\ndef f(x):\n    return x  # keep\n```", "code_block") in spans
    assert ('{"a": [1, 2], "b": "c d"}', "json") in spans


def test_units_keep_protected_spans_whole_and_render_copies_original_bytes():
    text = 'Der  Preis: 1.299,50 €\nSiehe https://ex.am/ple.  Ünïcödé  word {"k": [1, 2]} end'
    seg = segment(text)
    assert render(seg, range(len(seg.units))) == text  # keeping everything is the identity
    unit_texts = [seg.unit_text(i) for i in range(len(seg.units))]
    assert '{"k": [1, 2]}' in unit_texts and "https://ex.am/ple." in unit_texts
    assert seg.units[unit_texts.index('{"k": [1, 2]}')].kind == "keep"
    # dropping words collapses gaps but never alters kept bytes
    kept = [i for i, t in enumerate(unit_texts) if t in ("Der", "1.299,50", "Ünïcödé", "end")]
    assert render(seg, kept) == "Der 1.299,50\nÜnïcödé end"


def test_keep_markup_becomes_keep_units():
    seg = segment(parse_markup("drop this <ctxgate:keep>but keep this</ctxgate:keep> and more"))
    keep_text = " ".join(seg.unit_text(i) for i in seg.must_keep)
    assert keep_text == "but keep this"

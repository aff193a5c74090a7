"""``classifier``: the shipped student artifact, its pin, and the method's contract on real text.

NQ items here are rows 100-111 of the 20-document file: the student never trained on rows 100-199.
SQuAD questions come from article 4 (Victoria), which the student never saw.
"""

import re
import shutil

import numpy as np
import pytest

from ctxgate.compressor import Compressor, InvalidRequest
from ctxgate.compressor._student import ordinal_span
from ctxgate.compressor.models import STUDENTS, clear_loaded, verify_student
from ctxgate.compressor.models import _load as load_mod
from ctxgate.compressor.models._prepare import sha256_file
from tests.helpers.data import DATA, PROTECTED, answer_kept, check_protected, nq_docs, nq_items, squad_questions

HELD_OUT = slice(100, 112)


@pytest.fixture(scope="module")
def comp():
    return Compressor(default_method="classifier")


def _held_out():
    return nq_items(HELD_OUT.stop)[HELD_OUT]


def test_artifact_is_small_pinned_and_verified():
    spec = STUDENTS["student"]
    path = load_mod.WEIGHTS_DIR / spec.file
    assert path.stat().st_size <= 20 * 2**20
    assert sha256_file(path) == spec.sha256 == verify_student("student")


@pytest.mark.models
def test_a_damaged_artifact_is_a_clear_error(tmp_path, monkeypatch):
    spec = STUDENTS["student"]
    bad = tmp_path / spec.file
    shutil.copy(load_mod.WEIGHTS_DIR / spec.file, bad)
    with open(bad, "r+b") as f:
        f.seek(-1, 2)
        last = f.read(1)
        f.seek(-1, 2)
        f.write(bytes([last[0] ^ 0xFF]))
    monkeypatch.setattr(load_mod, "WEIGHTS_DIR", tmp_path)
    clear_loaded()
    try:
        with pytest.raises(load_mod.ChecksumMismatch, match="does not match the pinned"):
            Compressor(default_method="classifier").compress(context="word " * 400, rate=0.5)
    finally:
        clear_loaded()


@pytest.mark.models
def test_deterministic_and_independent_of_the_batch(comp):
    item = _held_out()[0]
    docs = nq_docs(item)
    a = comp.compress(context=docs, question=item["question"], rate=0.1)
    b = comp.compress(context=docs, question=item["question"], rate=0.1)
    assert a.compressed.encode() == b.compressed.encode()
    assert [d.score for d in a.documents] == [d.score for d in b.documents]
    text = (DATA / "arxiv" / "article_25.txt").read_text()[:3000]
    assert comp.compress(context=text, rate=0.3).compressed == comp.compress(context=text, rate=0.3).compressed


@pytest.fixture
def fp32_student(runtime_with):
    """A ``Classifier`` whose student runs in fp32, where scores do not depend on the batch."""
    from ctxgate.compressor.methods.classifier import Classifier

    runtime_with(student_precision="fp32")
    clear_loaded()
    yield Classifier()
    clear_loaded()


def _segments(item):
    from ctxgate.compressor._units import segment

    return [segment(d) for d in nq_docs(item)]


@pytest.mark.models
def test_fp32_scores_do_not_depend_on_which_documents_share_a_batch(fp32_student):
    item = _held_out()[1]
    segs = _segments(item)
    _, together, rel_all, _ = fp32_student.score(segs, item["question"])
    _, alone, rel_one, _ = fp32_student.score(segs[3:4], item["question"])
    n0 = sum(len(s.units) for s in segs[:3])
    assert np.allclose(together[n0 : n0 + len(segs[3].units)], alone, atol=1e-4)
    assert abs(rel_all[3] - rel_one[0]) < 1e-4


@pytest.mark.models
@pytest.mark.parametrize("rate", [0.5, 0.25, 0.1, 0.05])
def test_budget_is_met_from_2x_to_20x(comp, rate):
    item = _held_out()[2]
    docs = nq_docs(item)
    r = comp.compress(context=docs, question=item["question"], rate=rate)
    assert abs(r.compressed_tokens - rate * r.original_tokens) <= 0.15 * rate * r.original_tokens + 3
    text = (DATA / "arxiv" / "article_26.txt").read_text()[:6000]
    r = comp.compress(context=text, rate=rate)
    assert abs(r.compressed_tokens - rate * r.original_tokens) <= 0.15 * rate * r.original_tokens + 3


@pytest.mark.models
def test_output_is_the_input_words_in_order(comp):
    item = _held_out()[3]
    src = "\n".join(nq_docs(item))
    out = comp.compress(context=src, question=item["question"], rate=0.2).compressed
    words, pos = src.split(), 0
    for w in out.split():
        pos = words.index(w, pos) + 1  # raises ValueError if a word is new or out of order


@pytest.mark.models
@pytest.mark.parametrize("question", [None, "What does the service cost per month?"])
def test_protected_spans_survive_whole(comp, question):
    filler = (DATA / "arxiv" / "article_27.txt").read_text()[:2500]
    r = comp.compress(context=PROTECTED + filler, question=question, rate=0.3)
    check_protected(r.compressed, filler)
    assert r.compressed_tokens < 0.45 * r.original_tokens


@pytest.mark.models
def test_gold_answer_survives_4x_on_held_out_nq(comp):
    items = _held_out()
    kept = [
        answer_kept(comp.compress(context=nq_docs(it), question=it["question"], rate=0.25).compressed, it["answers"])
        for it in items
    ]
    assert sum(kept) >= len(items) - 1, kept


def _squad_unseen(n: int):
    return squad_questions(4)[::7][:n]  # spread over the article's paragraphs


@pytest.mark.models
def test_document_numbers_do_not_move_the_scores(comp):
    """The student must not read "Document [k]": the NQ training rows put the gold passage at fixed
    positions, and a student that read the labels ranked by them. Renumbering the documents (the
    texts otherwise unchanged) gives the same scores and keeps the same documents (the words kept
    may differ by a few: "[10]" and "[3]" cost the budget different token counts)."""
    item = _held_out()[2]
    docs = nq_docs(item)
    n = len(docs)
    renumbered = [re.sub(r"^Document \[\d+\]", f"Document [{(i + 7) % n + 1}]", d) for i, d in enumerate(docs)]
    assert renumbered != docs
    a = comp.compress(context=docs, question=item["question"], rate=0.1)
    b = comp.compress(context=renumbered, question=item["question"], rate=0.1)
    assert [d.score for d in a.documents] == [d.score for d in b.documents]
    assert [bool(d.text.strip()) for d in a.documents] == [bool(d.text.strip()) for d in b.documents]


@pytest.mark.parametrize(
    "text, digits",
    [
        ("Document [12](Title: Paris) Paris is", "12"),
        ("[3] Paris is", "3"),
        ("Passage 4: Paris", "4"),
        ("Doc #5 Paris", "5"),
        ("1991 was a year", None),
        ("Documentary 3 is a film", None),
        ("Paris [3] is", None),
    ],
)
def test_ordinal_labels_are_found_only_at_the_start(text, digits):
    span = ordinal_span(text)
    assert (text[span[0] : span[1]] if span else None) == digits


@pytest.mark.models
def test_one_paragraph_keeps_its_best_sentence_whole(comp):
    """With one paragraph there is no passage to drop: the sentence stage keeps whole sentences,
    best first, so the sentence that matches the question best survives intact where it fits."""
    from ctxgate.compressor._tokens import get_counter
    from ctxgate.compressor._units import segment
    from ctxgate.compressor.structured._rank import bm25

    counter = get_counter(comp.tokenizer)
    fits = whole = 0
    for paragraph, question, _ in _squad_unseen(16):
        seg = segment(paragraph)
        sentences = [paragraph[seg.units[a].start : seg.units[b - 1].end] for a, b in seg.sentences]
        best = sentences[int(np.argmax(bm25(question, sentences)))]
        r = comp.compress(context=paragraph, question=question, rate=0.5)
        if counter.count(best) <= 0.9 * r.compressed_tokens:
            fits += 1
            whole += best in r.compressed
    assert fits >= 10 and whole == fits, (whole, fits)


@pytest.mark.models
def test_gold_answer_survives_2x_in_one_unseen_paragraph(comp):
    items = _squad_unseen(12)
    kept = [answer_kept(comp.compress(context=p, question=q, rate=0.5).compressed, list(a)) for p, q, a in items]
    assert sum(kept) >= len(items) - 1, kept


@pytest.mark.models
def test_rate_auto_decides_the_size_and_reports_it(comp):
    items = _held_out()[:6]
    results = [comp.compress(context=nq_docs(it), question=it["question"], rate="auto") for it in items]
    for r in results:
        assert r.ratio > 2.0 and r.compressed_tokens > 0
        assert r.rate == pytest.approx(r.compressed_tokens / r.original_tokens, abs=1e-3)
    assert sum(answer_kept(r.compressed, it["answers"]) for r, it in zip(results, items)) >= 5
    # no question: a typical passage keeps its better half
    text = (DATA / "arxiv" / "article_28.txt").read_text()[:4000]
    r = comp.compress(context=text, rate="auto")
    assert 1.2 < r.ratio < 5


@pytest.mark.models
def test_rate_auto_needs_a_method_that_can_decide(comp):
    with pytest.raises(InvalidRequest, match="auto"):
        comp.compress(context="some words " * 100, rate="auto", method="truncate")
    with pytest.raises(InvalidRequest, match="auto"):
        comp.compress(context="some words " * 100, rate="most")


def test_batches_group_windows_of_similar_length_and_cover_each_once():
    from ctxgate.compressor.methods.classifier import batches

    lengths = np.array([40, 200, 41, 45, 256, 60, 40, 198])
    got = batches(lengths, max_rows=3, slack=1.3)
    flat = np.concatenate(got).tolist()
    assert sorted(flat) == list(range(len(lengths)))  # every window once
    assert flat == np.lexsort((np.arange(len(lengths)), lengths)).tolist()  # by length, ties by position
    for b in got:
        assert len(b) <= 3 and lengths[b].max() <= 1.3 * lengths[b].min()
    assert [b.tolist() for b in got] == [[0, 6, 2], [3], [5], [7, 1, 4]]
    # one long window no longer pads the short ones: 996 padded pieces, not 8 x 256 = 2,048
    assert sum(len(b) * int(lengths[b].max()) for b in got) == 3 * 41 + 45 + 60 + 3 * 256
    assert [len(b) for b in batches(np.full(70, 100))] == [32, 32, 6]


def test_bm25_scores_the_question_terms_and_nothing_else():
    from ctxgate.compressor.structured._rank import bm25

    texts = ["The Eiffel Tower was completed in 1889.", "A river and a stone.", "Tower records, towers of Eiffel."]
    s = bm25("When was the Eiffel Tower completed?", texts)
    assert s[0] > s[2] > s[1] == 0.0
    assert bm25("what is it?", texts) == [0.0, 0.0, 0.0]  # stop words only: no evidence


@pytest.mark.parametrize("k", range(3))
def test_a_dominant_lexical_weight_keeps_the_best_bm25_document(comp, k):
    from ctxgate.compressor.structured._rank import bm25

    item = nq_items()[k]
    docs, q = nq_docs(item), item["question"]
    scores = bm25(q, docs)
    best = int(np.argmax(scores))
    opts = {"lexical_weight": 100.0, "multi_hop": False}  # BM25 z-scores outweigh any student logit
    out = comp.compress(context=docs, question=q, rate=0.05, method="classifier", options=opts)
    kept = [d for d, doc in enumerate(out.documents) if doc.text.strip()]
    assert best in kept


def test_a_chain_gets_one_sentence_each_right_after_the_best():
    from ctxgate.compressor.methods.classifier import _chain_first

    span_doc = [0, 0, 1, 2, 2, 3]  # document of each sentence
    order = [0, 1, 4, 2, 5, 3]  # best first: document 0's two sentences lead
    assert _chain_first(order, span_doc, [0, 2, 3]) == [0, 4, 5, 1, 2, 3]
    assert _chain_first(order, span_doc, [1, 0]) == [0, 2, 1, 4, 5, 3]  # the best sentence stays first
    assert _chain_first(order, span_doc, [0]) == order


@pytest.mark.models
def test_only_the_windows_asked_for_are_read(fp32_student):
    item = _held_out()[3]
    segs = _segments(item)
    enc, every, rel_all, _ = fp32_student.score(segs, item["question"])
    rows = np.zeros(len(enc.windows), dtype=bool)
    rows[[1, 4, 9]] = True
    _, some, rel_some, _ = fp32_student.score(segs, item["question"], enc, rows=rows)
    assert np.allclose(rel_some[rows], rel_all[rows], atol=1e-4) and not rel_some[~rows].any()
    units = np.zeros(enc.n_units, dtype=bool)
    for w in (1, 4, 9):
        win = enc.windows[w]
        units[enc.unit_offset[win.doc] + win.first : enc.unit_offset[win.doc] + win.last] = True
    assert np.allclose(some[units], every[units], atol=1e-4)
    assert not np.allclose(some[~units], every[~units], atol=1e-4)  # the rest were not read


@pytest.mark.models
def test_the_compressors_embedder_ranks_the_passages(tmp_path):
    """``Compressor(embedder=...)`` (the CLI's ``--embedder``) reaches the classifier's passage
    ranker, as it does hybrid's and extractive's, and is part of its cache identity."""
    from ctxgate.compressor.models import model_dir

    local = tmp_path / "minilm-copy"
    shutil.copytree(model_dir("minilm"), local)
    item = _held_out()[0]
    docs = nq_docs(item)
    default = Compressor(default_method="classifier")
    other = Compressor(default_method="classifier", embedder=str(local))
    default.compress(context=docs, question=item["question"], rate=0.25)
    other.compress(context=docs, question=item["question"], rate=0.25)
    ranker = other._methods["classifier"]._ranker()
    assert ranker.name == str(local) and default._methods["classifier"]._ranker().name == "minilm"
    assert other._methods["classifier"].model_id != default._methods["classifier"].model_id

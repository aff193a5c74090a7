"""Eval dataset loaders read the real shared data; the NQ builder reproduces the derived file."""

import json

import pytest

from ctxgate.eval.datasets import DATASETS, DataError, build_multidoc, data_dir, load_dataset
from ctxgate.eval.datasets._common import read_jsonl
from tests.helpers.data import DATA


@pytest.mark.parametrize("name", [n for n in DATASETS if n != "nq"])
def test_each_loader_yields_items_with_a_filled_prompt(name):
    items = load_dataset(name, limit=2, seed=1)
    assert len(items) == 2 and len({i.id for i in items}) == 2
    for it in items:
        prompt = it.prompt(it.full_context())
        assert "{context}" not in prompt and "{question}" not in prompt
        assert it.question in prompt and len(it.full_context()) > 200
        assert (it.task == "fidelity") == (not it.references)


def test_nq20_keeps_file_order_and_lost_in_the_middle_format():
    items = load_dataset("nq20", limit=5)
    assert [i.meta["gold_index"] for i in items] == [0, 4, 9, 14, 19]
    assert items[0].context[0].startswith("Document [1](Title: List of Nobel laureates in Physics) The first")
    assert len(items[0].context) == 20 and items[0].references == ["Wilhelm Conrad Röntgen"]
    later = load_dataset("nq20", limit=3, offset=100)  # clear of the rows methods were tuned on
    assert [i.id for i in later] == ["nq20-100", "nq20-101", "nq20-102"]
    assert [i.meta["gold_index"] for i in later] == [0, 4, 9]


def test_nq20_rotate_moves_the_gold_off_the_training_positions():
    plain = load_dataset("nq20", limit=5)
    moved = load_dataset("nq20", limit=5, rotate=2)
    assert [i.meta["gold_index"] for i in moved] == [2, 6, 11, 16, 1]
    for a, b in zip(plain, moved):
        gold_a, gold_b = a.context[a.meta["gold_index"]], b.context[b.meta["gold_index"]]
        assert gold_a.split(") ", 1)[1] == gold_b.split(") ", 1)[1]  # the same passage, renumbered
        assert gold_b.startswith(f"Document [{b.meta['gold_index'] + 1}](Title:")
        assert sorted(c.split("](", 1)[1] for c in a.context) == sorted(c.split("](", 1)[1] for c in b.context)
    with pytest.raises(DataError, match="rotate"):
        load_dataset("nq20", limit=1, rotate=20)


def test_builder_follows_the_derived_file_rule():
    """The derived file drew distractors from all 2,655 oracle rows; the shared oracle file holds
    the first 2,000, so the builder matches it closely but not exactly."""
    root = data_dir()
    rows = list(read_jsonl(root / "nq" / "nq-open-oracle-dev.jsonl.gz"))
    built = build_multidoc(rows, 20, limit=3)
    with open(root / "nq" / "nq-open-20docs-derived_first500.jsonl", encoding="utf-8") as f:
        derived = [json.loads(next(f)) for _ in range(3)]
    for qi, (b, d) in enumerate(zip(built, derived)):
        assert b["gold_index"] == d["gold_index"] == [0, 4, 9][qi]
        src = [c["source_question_idx"] for c in b["ctxs"]]
        assert src[b["gold_index"]] == qi and len(set(src)) == 20
        assert len(set(src) & {c["source_question_idx"] for c in d["ctxs"]}) >= 14
        distractors = [c["text"] for i, c in enumerate(b["ctxs"]) if i != b["gold_index"]]
        assert not any(a.lower() in t.lower() for a in b["answers"] for t in distractors)


def test_nq_builder_options():
    items = load_dataset("nq", limit=2, docs=5, gold_position=3)
    assert all(len(i.context) == 5 and i.meta["gold_index"] == 3 for i in items)
    assert "Röntgen" in items[0].context[3]
    with pytest.raises(DataError, match="gold_position"):
        load_dataset("nq", limit=1, docs=5, gold_position=5)


def test_seeded_samples_are_stable_and_seed_dependent():
    a = [i.id for i in load_dataset("squad", limit=5, seed=0)]
    assert a == [i.id for i in load_dataset("squad", limit=5, seed=0)]
    assert a != [i.id for i in load_dataset("squad", limit=5, seed=1)]


def test_squad_articles_option_reports_on_the_article_the_student_never_saw():
    from ctxgate.eval.train.examples import build_examples

    trained = {e.text for e in build_examples(DATA) if e.source == "squad"}
    held = load_dataset("squad", limit=None, articles=4)
    assert len(held) > 50 and not {i.context for i in held} & trained
    both = load_dataset("squad", limit=None, articles="3,4")
    assert {i.id for i in held} < {i.id for i in both}
    with pytest.raises(DataError, match="out of range"):
        load_dataset("squad", articles=5)


def test_squad_skip_gives_the_article_3_questions_past_the_training_cap():
    from ctxgate.eval.train.examples import build_examples

    trained = {e.question for e in build_examples(DATA) if e.key.startswith("squad:")}
    article = load_dataset("squad", limit=None, articles=3)
    tuning = load_dataset("squad", limit=None, articles=3, skip=27)
    assert [i.id for i in tuning] == [i.id for i in article[27:]] and len(tuning) > 50
    assert not {i.question for i in tuning} & trained
    assert {i.question for i in article[:27]} <= trained
    with pytest.raises(DataError, match="negative"):
        load_dataset("squad", skip=-1)


def test_gsm8k_compresses_the_demonstrations_not_the_question():
    it = load_dataset("gsm8k", limit=1)[0]
    # eight demonstrations, as a list (LLMLingua's setup), each one worked example
    assert len(it.context) == 8 and all(d.startswith("Question:") and d.count("Question:") == 1 for d in it.context)
    assert it.compression_question is None
    full = (DATA / "gsm8k" / "cot_prompts" / "prompt_hardest.txt").read_text().strip()
    assert it.separator.join(it.context) == full  # the uncompressed prompt is the file, byte for byte
    assert it.prompt("DEMOS").startswith("DEMOS\n\nQuestion: " + it.question)


def test_kv_subset_keeps_the_gold_pair():
    it = load_dataset("kv", limit=1, keys=10)[0]
    assert it.context.count(": ") == 10 and it.references[0] in it.context and it.question in it.context


def test_clear_errors(tmp_path):
    with pytest.raises(DataError, match="unknown dataset"):
        load_dataset("nope")
    with pytest.raises(DataError, match="holdout"):
        load_dataset("nq20", data=str(tmp_path / "holdout"))
    with pytest.raises(DataError, match="not found"):
        load_dataset("nq20", data=str(tmp_path))


def test_hotpotqa_items_carry_both_hops():
    items = load_dataset("hotpotqa")
    assert len(items) == 23
    for it in items:
        assert len(it.context) == 10 and len(it.meta["gold_docs"]) == 2
        for d, sentence in it.meta["supports"]:
            assert sentence in it.context[d]
    assert sum(it.meta["type"] == "bridge" for it in items) == 17

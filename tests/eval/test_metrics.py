"""Eval metrics on real examples (NQ, SQuAD, GSM8K answers from the shared data), with values
worked out by hand from the official definitions."""

import pytest

from ctxgate.eval import metrics as m

NQ_REFS = ["Wilhelm Conrad Röntgen"]  # nq-open row 0
SQUAD_REFS = ["Battle of Hastings", "the Battle of Hastings"]  # SQuAD v2 dev 56de16ca4396321400ee25c5
GSM8K_REF = "Janet sells 16 - 3 - 4 = <<16-3-4=9>>9 duck eggs a day.\nShe makes 9 * 2 = $<<9*2=18>>18 every day at the farmer’s market.\n#### 18"


def test_nq_best_subspan_match_needs_the_whole_answer_inside_the_prediction():
    assert m.best_subspan_em("Wilhelm Conrad Röntgen, of Germany.", NQ_REFS) == 1.0
    assert m.best_subspan_em("The prize went to wilhelm conrad röntgen", NQ_REFS) == 1.0
    assert m.best_subspan_em("Röntgen", NQ_REFS) == 0.0
    assert m.best_subspan_em("Marie Curie", NQ_REFS) == 0.0


def test_short_answer_tasks_score_the_first_line_only():
    acc, _ = m.score("qa", "Marie Curie\nThe 1901 prize went to Wilhelm Conrad Röntgen.", NQ_REFS)
    assert acc == 0.0
    acc, d = m.score("qa", "\n\nWilhelm Conrad Röntgen\n", NQ_REFS)
    assert acc == 1.0 and d["em"] == 1.0


def test_squad_em_and_f1_follow_the_official_script():
    assert m.exact_match("the Battle of Hastings.", SQUAD_REFS) == 1.0
    assert m.exact_match("at the Battle of Hastings in 1066", SQUAD_REFS) == 0.0
    # [at, battle, of, hastings, in, 1066] vs [battle, of, hastings]: P=3/6, R=1 -> F1=2/3
    assert m.squad_f1("at the Battle of Hastings in 1066", SQUAD_REFS) == pytest.approx(2 / 3)
    assert m.squad_f1("Normandy", SQUAD_REFS) == 0.0


def test_gsm8k_final_number():
    assert m.final_number(GSM8K_REF) == "18"
    cot = "She has 16 - 3 - 4 = 9 eggs left.\nShe makes 9 * 2 = $18.\nThe answer is 18"
    assert m.number_match(cot, "18") == 1.0
    assert m.number_match("So 1,080 - 5 = 1075. The answer is $1,080.", "1080") == 1.0
    assert m.number_match("The answer is 17. Check: 9 * 2 = 18", "18") == 0.0  # the stated answer wins
    # Qwen's style: a boxed answer, then more words with numbers in them
    assert m.number_match("Ann's brother will be \\(\\boxed{21}\\) years old in 3 years.", "21") == 1.0
    assert m.number_match("The answer is \\(\\boxed{10}\\).", "10") == 1.0
    assert m.final_number("\\boxed{\\$1,200} in all, 3 payments") == "1200"
    assert m.number_match("no number here", "18") == 0.0


def test_rouge_l_is_lcs_f1():
    # LCS(the cat sat on the mat, the cat lay on the mat) = 5 of 6 tokens each way
    assert m.rouge_l("The cat sat on the mat.", "the cat lay on the mat") == pytest.approx(5 / 6)
    assert m.rouge_l("", "anything") == 0.0
    assert m.rouge_l("totally different words", "the cat lay on the mat") == 0.0


def test_answer_kept_ignores_accents_and_case_but_exact_kept_does_not():
    assert m.answer_kept("... awarded in 1901 to Wilhelm Conrad ROENTGEN ...", NQ_REFS) == 0.0
    assert m.answer_kept("... awarded in 1901 to wilhelm conrad rontgen ...", NQ_REFS) == 1.0
    uuid = "bb3ba2a5-7de8-434b-a86e-a88bb9fa7289"
    assert m.exact_kept(f'"x": "{uuid}"', [uuid]) == 1.0
    assert m.exact_kept(f'"x": "{uuid.replace("a8", "a9")}"', [uuid]) == 0.0
    assert m.kept("kv", f"{uuid[:-1]}", [uuid]) == 0.0 and m.kept("math", "x", ["1"]) is None


def test_agreement_with_the_full_prompt_answer():
    assert m.agreement("Wilhelm Conrad Röntgen\nmore", "wilhelm conrad röntgen.", "qa") == (1.0, 1.0)
    f1, em = m.agreement("The answer is 18", "Different steps. The answer is 18", "math")
    assert em == 1.0 and f1 < 1.0
    assert m.agreement("Röntgen", "Marie Curie", "qa") == (0.0, 0.0)


def test_report_times_are_medians_so_a_paused_item_does_not_skew_them():
    from ctxgate.eval._types import Row
    from ctxgate.eval.report import aggregate

    def row(item: str, seconds: float) -> Row:
        return Row(
            dataset="nq20",
            item=item,
            method="hybrid",
            rate=0.25,
            task="qa",
            reader="r",
            prediction="a",
            reference_answer="a",
            accuracy=1.0,
            compress_seconds=seconds,
            reader_seconds=seconds,
        )

    cells = aggregate([row("a", 2.0), row("b", 3.0), row("c", 2400.0)])  # c: the run was suspended
    hybrid = [c for c in cells if c.method == "hybrid"][0]
    assert hybrid.reader_s == 3.0 and hybrid.compress_s == 3.0


def test_supports_kept_needs_every_hop():
    from ctxgate.eval.metrics import supports_kept

    supports = [[0, "Poison is an American rock band."], [2, "Shut Up, Make Love was released in 2000."]]
    docs = ["Poison is an American rock band formed in 1983.", "noise", "Shut Up Make Love released 2000."]
    assert supports_kept(supports, docs) == 1.0
    assert supports_kept(supports, [docs[0], "noise", "released"]) == 0.0  # second hop lost
    assert supports_kept(supports, ["", "noise", docs[2]]) == 0.0  # first hop lost
    assert supports_kept(supports, docs[:2]) == 0.0  # a document missing


def test_facts_task_needs_every_fact_anywhere_in_the_answer():
    refs = ["ord_839543 expired_card", "ord_775433 gateway_timeout"]
    listing = "The orders that failed:\n- ord_775433\n- ord_839543\nReasons:\n- Expired_card\n- gateway_timeout"
    assert m.score("facts", listing, refs) == (1.0, {"all_facts": 1.0, "facts_recall": 1.0})
    acc, scores = m.score("facts", "ord_839543 failed: expired_card", refs)
    assert acc == 0.0 and scores["facts_recall"] == 0.5
    assert m.score("facts", "ord_8395430 expired_card ord_775433 gateway_timeout", refs)[0] == 0.0  # whole ids
    assert m.kept("facts", listing, refs) == 1.0 and m.kept("facts", "nothing", refs) == 0.0

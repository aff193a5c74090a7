"""``extractive`` and the embedder under it, on real text with the real MiniLM model."""

import numpy as np
import pytest

from ctxgate.compressor import Compressor, get_counter
from ctxgate.compressor._embed import Embedder, centrality, near_duplicates, rank, similarities
from tests.helpers.data import DATA, PROTECTED, check_protected, nq_docs, nq_items, squad_article

pytestmark = pytest.mark.models  # every test here loads a prepared model


@pytest.fixture(scope="module")
def comp():
    return Compressor(default_method="extractive")


@pytest.fixture(scope="module")
def embedder():
    return Embedder()


@pytest.fixture(scope="module")
def article():
    return (DATA / "arxiv" / "article_3.txt").read_text()[:6000]


def test_embeddings_are_unit_length_and_identical_texts_are_encoded_once(embedder):
    v = embedder.embed(["The Normans lived in France.", "Pizza recipes.", "The Normans lived in France."])
    assert v.shape == (3, 384) and np.allclose(np.linalg.norm(v, axis=1), 1, atol=1e-5)
    assert np.array_equal(v[0], v[2])


def test_ranking_puts_the_relevant_text_first_and_ties_keep_order(embedder):
    texts = ["Bananas are yellow fruit.", "Normandy is a region in northern France.", "Stock prices fell."]
    v = embedder.embed(["In what country is Normandy located?"] + texts)
    sims = similarities(v[0], v[1:])
    assert rank(sims)[0] == 1 and np.allclose(sims, v[1:] @ v[0], atol=1e-5)
    assert rank(np.array([0.5, 0.5, 0.7])).tolist() == [2, 0, 1]
    assert centrality(v[1:]).shape == (3,)


def test_near_duplicates_drop_the_lower_ranked_copy(embedder):
    v = embedder.embed(
        ["The Normans were a people of France.", "Bananas are yellow.", "The Normans were a people of France!"]
    )
    assert near_duplicates(v, [0, 1, 2]) == {2}
    assert near_duplicates(v, [2, 1, 0]) == {0}


@pytest.mark.parametrize("rate", [0.5, 0.2, 0.1, 0.05])
@pytest.mark.parametrize("with_question", [True, False])
def test_budget_is_met_within_15_percent(comp, article, rate, with_question):
    q = "What does the proposed method improve?" if with_question else None
    r = comp.compress(context=article, question=q, rate=rate)
    asked = r.original_tokens * rate
    assert r.original_tokens > 500 and r.method == "extractive"
    assert abs(r.compressed_tokens - asked) / asked <= 0.15, (r.compressed_tokens, asked)
    assert r.compressed_tokens == get_counter().count(r.compressed)


def test_kept_sentences_are_verbatim_and_in_original_order(comp):
    text, qas = squad_article()
    r = comp.compress(context=text, question=qas[0][0], rate=0.3)
    pos = 0
    for piece in r.compressed.split("\n"):
        for sent in filter(None, (s.strip() for s in piece.split(". "))):
            found = text.find(sent, pos)
            assert found >= 0, sent
            pos = found


def test_question_decides_what_is_kept(comp):
    text, qas = squad_article()
    qas = qas[:5]
    kept = sum(ans.lower() in comp.compress(context=text, question=q, rate=0.25).compressed.lower() for q, ans in qas)
    assert kept >= 4, (kept, len(qas))


def test_deterministic(comp, article):
    a = comp.compress(context=article, question="What is evaluated?", rate=0.2)
    b = comp.compress(context=article, question="What is evaluated?", rate=0.2)
    assert a.compressed.encode() == b.compressed.encode()


def test_documents_are_scored_dropped_and_deduplicated(comp):
    item = nq_items(1)[0]
    docs = nq_docs(item)
    docs.append(docs[item["gold_index"]])  # an exact duplicate of the gold document
    r = comp.compress(context=docs, question=item["question"], rate=0.25)
    gold = item["gold_index"]
    scores = [d.score for d in r.documents]
    assert all(s is not None for s in scores) and scores[gold] == max(scores)
    assert not r.documents[gold].dropped and r.documents[-1].dropped  # the copy goes, the original stays
    assert sum(d.dropped for d in r.documents) >= 10
    assert r.compressed == "\n\n".join(d.text for d in r.documents if not d.dropped)


def test_protected_spans_survive_whole(comp, article):
    text = PROTECTED + article[:3000]
    r = comp.compress(context=text, question="What does the service cost?", rate=0.2)
    check_protected(r.compressed, article[:3000])
    assert r.compressed_tokens < 0.4 * r.original_tokens

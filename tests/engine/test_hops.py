"""Multi-hop: the document the best one names by title is ranked second (``_hops``), in the
prose methods' coarse stage and in JSON search results."""

from __future__ import annotations

import json

import numpy as np
import pytest

from ctxgate.compressor import Compressor
from ctxgate.compressor._hops import hops, lifted, name_of, title_of

QUESTION = "In which city was the author of Seven Brief Lessons on Physics born?"
FIRST = (
    "Document [1](Title: Seven Brief Lessons on Physics) Seven Brief Lessons on Physics is a short book "
    "by the physicist Carlo Rovelli, first published in Italian in 2014."
)
BRIDGE = (
    "Document [2](Title: Carlo Rovelli) Carlo Rovelli (3 May 1956) is a theoretical physicist and writer "
    "from Verona who has worked in Italy, the United States and France."
)
DISTRACTORS = [
    f"Document [{i + 3}](Title: {t}) {body}"
    for i, (t, body) in enumerate(
        [
            (
                "Physics (Aristotle)",
                "Physics is a book by Aristotle on lessons of nature and change, written in Athens.",
            ),
            (
                "Brief History of Time",
                "A Brief History of Time is a book on physics by Stephen Hawking, born in Oxford.",
            ),
            (
                "The Feynman Lectures",
                "The Feynman Lectures on Physics are lessons given by Richard Feynman in Pasadena.",
            ),
            ("Seven Pillars", "Seven Pillars of Wisdom is a book by T. E. Lawrence, an author born in Tremadog."),
            ("Lessons in Physics", "Lessons in physics for schools: a city textbook by an author born in London."),
        ]
    )
]


def test_titles_are_read_from_rag_headers_and_named_without_qualifiers():
    text = "Document [6](Title: Poison (American band)) Poison is a band"
    title, at = title_of(text)
    assert (title, text[at:]) == ("Poison (American band)", " Poison is a band")
    assert title_of("Title: Carlo Rovelli\nbody")[0] == "Carlo Rovelli"
    assert title_of("# Release notes\n- fixed")[0] == "Release notes"
    assert title_of("No header here.") == (None, 0)
    assert title_of("(Title: never closed ... ") == (None, 0)
    assert name_of("Poison (American band)") == "Poison"
    assert name_of("lowercase words only") is None  # a common-word title links nothing
    assert name_of(None) is None


def test_the_hop_is_the_document_the_best_one_names():
    docs = [FIRST, BRIDGE, *DISTRACTORS]
    scores = [0.9, 0.1, 0.8, 0.7, 0.6, 0.5, 0.4]  # the bridge shares no words with the question: last
    # "Physics (Aristotle)" is named in the question only inside the first hop's own title
    assert hops(scores, docs, QUESTION) == [1]
    # without a question, without titles, or with too few documents there is no second hop
    assert hops(scores, docs, None) == []
    plain = [d.split(") ", 1)[1] for d in docs]
    assert hops(scores, plain, QUESTION) == []
    assert hops(scores[:2], docs[:2], QUESTION) == []


def test_hops_chain_from_a_distractor_to_both_named_entities():
    docs = [
        "Document [1](Title: Skyscraper National Park) The third album by Canadian singer-songwriter Hayden.",
        "Document [2](Title: Hayden (musician)) Paul Hayden Desser is a Canadian singer-songwriter.",
        "Document [3](Title: Buck-Tick) Buck-Tick is a Japanese rock band formed in Fujioka, Gunma.",
        "Document [4](Title: Atsushi Sakurai) Atsushi Sakurai is the singer of Buck-Tick.",
        "Document [5](Title: Canada) Canada is a country in North America.",
    ]
    q = "Hayden is a singer-songwriter from Canada, but where does Buck-Tick hail from?"
    # Hayden: named by the question and by the best document; then Buck-Tick and Canada, named by
    # the question once each, and Buck-Tick ranks better; the singer is named by nobody taken
    assert hops([0.9, 0.2, 0.1, 0.8, 0.05], docs, q) == [1, 2]
    assert hops([0.9, 0.2, 0.1, 0.8, 0.05], docs, q, n=1) == [1]


def test_hops_prefer_the_longest_name_the_question_uses_and_skips_the_first_hops_own_name():
    docs = [
        "Document [1](Title: Poison (American band)) Poison is an American glam metal band formed in 1983.",
        "Document [2](Title: Make Love) Make Love is a song by another artist.",
        'Document [3](Title: Shut Up, Make Love) "Shut Up, Make Love" is a 2000 song by Poison.',
        "Document [4](Title: Poison (song)) Poison is a 1990 song by Bell Biv DeVoe.",
    ]
    q = 'When was Poison\'s album "Shut Up, Make Love" released?'
    # the best is the band: "Make Love" sits inside the longer "Shut Up, Make Love"; the other
    # "Poison" has the best document's own name
    assert hops([0.9, 0.8, 0.1, 0.7], docs, q, n=1) == [2]
    # the best is the song: its body names "Poison", which the question names too (two links);
    # two documents have that name, and the better ranked of them is taken
    assert hops([0.1, 0.8, 0.9, 0.05], docs, q, n=1) == [0]
    assert hops([0.1, 0.8, 0.9, 0.7], docs, q, n=1) == [3]


def test_two_documents_of_one_name_keep_the_questions_link():
    docs = [
        "Document [1](Title: Eiffel Tower) The tower was designed by Gustave Eiffel's company.",
        "Document [2](Title: Paris (Texas)) Paris is a city in Lamar County, Texas.",
        "Document [3](Title: Paris) Paris is the capital of France, on the Seine.",
        "Document [4](Title: Lyon) Lyon is a city in France.",
    ]
    q = "How many people live in Paris, home of the Eiffel Tower?"
    # the best document's body names no Paris; the question does, for both: the better ranked wins
    assert hops([0.9, 0.1, 0.2, 0.8], docs, q, n=1) == [2]
    assert hops([0.9, 0.3, 0.2, 0.8], docs, q, n=1) == [1]
    # and the second one is not taken as a further hop: it has a taken document's name
    assert 1 not in hops([0.9, 0.1, 0.2, 0.8], docs, q, n=2)


def test_lifted_moves_the_hops_behind_the_best_and_keeps_every_other_order():
    docs = [FIRST, BRIDGE, *DISTRACTORS]
    doc_of = [0, 0, 1, 1, 2, 3, 4, 5, 6]  # chunks: two for each of the first two documents
    scores = np.array([0.9, 0.5, 0.2, 0.1, 0.8, 0.7, 0.6, 0.55, 0.4])
    out = lifted(scores, doc_of, docs, QUESTION)
    order = list(np.argsort(-out, kind="stable"))
    assert order[:2] == [0, 2]  # the best chunk, then the bridge's best chunk
    assert order.index(2) < order.index(3)  # the bridge's own chunks keep their order
    before = [int(i) for i in np.argsort(-scores, kind="stable")]
    assert [i for i in order if doc_of[i] != 1] == [i for i in before if doc_of[i] != 1]
    assert np.array_equal(lifted(scores, doc_of, [d.split(") ", 1)[1] for d in docs], QUESTION), scores)


@pytest.fixture(scope="module")
def comp() -> Compressor:
    return Compressor(default_method="classifier")


def _results(docs: list[str]) -> str:
    rows = []
    for i, d in enumerate(docs):
        title, at = title_of(d)
        rows.append({"rank": i + 1, "id": f"r{i}", "title": title, "snippet": d[at:].strip(), "score": 0.5})
    # the bridge is listed last, and every record is long enough that only a few fit
    rows = [rows[0], *rows[2:], rows[1]]
    filler = " ".join(["Further reading lists editions, translations and reviews of the work."] * 6)
    for r in rows:
        r["snippet"] += " " + filler
    return json.dumps({"query": QUESTION, "results": rows}, indent=2)


@pytest.mark.models
def test_search_results_keep_the_record_the_best_one_names(comp):
    text = _results([FIRST, BRIDGE, *DISTRACTORS, *[d.replace("Document", "Doc") for d in DISTRACTORS]])
    opts = {"structured_dense": False}
    on = comp.compress(context=text, question=QUESTION, rate=0.3, options=opts)
    off = comp.compress(context=text, question=QUESTION, rate=0.3, options={**opts, "multi_hop": False})
    titles_on = {r["title"] for r in json.loads(on.compressed)["results"] if "title" in r}
    titles_off = {r["title"] for r in json.loads(off.compressed)["results"] if "title" in r}
    assert "Seven Brief Lessons on Physics" in titles_on
    assert "Carlo Rovelli" in titles_on
    assert "Carlo Rovelli" not in titles_off  # without the hop the budget goes to lexical matches
    assert comp.compress(context=text, question=QUESTION, rate=0.3, options=opts).compressed == on.compressed


@pytest.mark.models
# rates where two of the seven documents fit beside the first hop (sentence chunks take whole sentences);
# classifier's ranker puts the "Lessons in Physics" distractor first, so its chain is three documents
@pytest.mark.parametrize(("method", "rate"), [("classifier", 0.4), ("extractive", 0.5), ("hybrid", 0.5)])
def test_prose_methods_keep_the_bridge_document(comp, method, rate):
    docs = [*DISTRACTORS[:2], BRIDGE, *DISTRACTORS[2:], FIRST]
    on = comp.compress(context=docs, question=QUESTION, rate=rate, method=method)
    off = comp.compress(context=docs, question=QUESTION, rate=rate, method=method, options={"multi_hop": False})
    assert "Verona" in on.compressed
    assert "Rovelli" in on.documents[len(docs) - 1].text  # the first hop stays
    assert "Verona" not in off.compressed  # the setup is a real second hop: similarity alone drops it

"""The second hop of a multi-hop question: the document that the best one leads to.

"What position was held by the woman who played X in Y?" is answered by two documents: the one
about Y, which names the actress, and the one about her. The second shares no words with the
question, so any ranking by similarity to the question puts it among the distractors. Multi-hop
readers find it the way HotpotQA's paragraph selectors do (Fang et al., "Hierarchical Graph
Network", 2020): by titles. A document whose title the question names is a first hop, and a
document whose title the first hop's text names is the bridge.

``hops`` returns those documents (up to HOPS after the best one) and ``lifted`` moves them
right behind the best in a method's coarse stage.
It only looks where documents carry titles (``Title: ...`` headers as RAG templates write them,
a Markdown heading, or a record's ``title``/``name`` field in JSON) and changes nothing
elsewhere. The rule is the published one, not fitted to our evaluation rows; README, multi-hop.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np

MULTI_HOP = True  # the methods' default for options["multi_hop"]
MIN_DOCUMENTS = 3  # with two documents there is nothing to choose
HOPS = 2  # documents raised after the best: a comparison names two, a bridge needs one more
# possessive blanks: "\s*(...)?(\()?\s*" split a long run of leading spaces every way (quadratic)
_HEADER = re.compile(r"^\s*+(?:Document\s*+\[\d+\]\s*+)?(\()?\s*+Title:\s*", re.IGNORECASE)
_HEADING = re.compile(r"^\s*#{1,3}\s+(\S[^\n]{0,150})")
_QUALIFIER = re.compile(r"\s*\([^()]*\)\s*$")  # "Poison (American band)" is named "Poison"


def title_of(text: str) -> tuple[str | None, int]:
    """(title, where the body starts) of a document's text, or (None, 0). Handles
    ``Document [3](Title: Poison (American band)) ...``, a ``Title: X`` line and ``# X``."""
    m = _HEADER.match(text)
    if m is not None:
        start = m.end()
        if m.group(1):  # "(Title: ...)": up to the parenthesis that closes it
            depth = 1
            for i in range(start, min(len(text), start + 300)):
                ch = text[i]
                if ch == "\n":
                    break
                depth += ch == "("
                depth -= ch == ")"
                if depth == 0:
                    return text[start:i].strip() or None, i + 1
            return None, 0
        end = text.find("\n", start)
        end = len(text) if end < 0 else end
        title = text[start:end].strip()
        return (title, end) if 0 < len(title) <= 150 else (None, 0)
    m = _HEADING.match(text)
    if m is not None:
        return m.group(1).strip(), m.end()
    return None, 0


def name_of(title: str | None) -> str | None:
    """The entity a title stands for, as text would mention it: the qualifier dropped, and only
    a proper name (a capital letter or a digit in it), so common-word titles never link."""
    if not title:
        return None
    name = _QUALIFIER.sub("", title).strip()
    if len(name) < 3 or not any(ch.isupper() or ch.isdigit() for ch in name):
        return None
    return name


def _mentions(name: str, text: str, *, case: bool) -> bool:
    flags = 0 if case else re.IGNORECASE
    return re.search(r"(?<!\w)" + re.escape(name) + r"(?!\w)", text, flags) is not None


def _without(text: str, names: Sequence[str]) -> str:
    for name in names:
        text = re.sub(re.escape(name), " ", text, flags=re.IGNORECASE)
    return text


def hops(
    scores: Sequence[float] | np.ndarray,
    texts: Sequence[str],
    question: str | None,
    titles: Sequence[str | None] | None = None,
    n: int = HOPS,
) -> list[int]:
    """Up to ``n`` documents to rank right after the best one, in order. ``scores`` rank the
    documents (higher first); ``titles`` default to the headers of ``texts`` (else ``texts`` are
    the bodies). Each step takes the document, not yet taken and of another name, that the
    question names (case-insensitive; its longest such name) or that a taken document's body
    names (case-sensitive, as text writes a proper name), not counting mentions inside the taken
    documents' own names; one named by both wins, then the better ranked. Empty when documents
    carry no titles or nothing links."""
    s = np.asarray(scores, dtype=np.float64)
    if question is None or len(texts) < MIN_DOCUMENTS or len(s) != len(texts):
        return []
    finite = np.isfinite(s)
    if not finite.any():
        return []
    if titles is None:
        heads = [title_of(t) for t in texts]
        titles = [t for t, _ in heads]
        bodies = [text[at:] for text, (_, at) in zip(texts, heads)]
    else:
        bodies = list(texts)
    names = [name_of(t) for t in titles]
    lows = [x.lower() if x else "" for x in names]
    if sum(x is not None for x in names) < 2:
        return []
    taken = [int(np.argmax(np.where(finite, s, -np.inf)))]
    for _ in range(n):
        own = [x for x in (names[t] for t in taken) if x]
        own_low = [x.lower() for x in own]
        # a taken document's own name is no link: "Make Love" inside "Shut Up, Make Love" names nothing new
        asked = _without(question, own)
        said = _without(" \n".join(bodies[t] for t in taken), own)
        asked_low = asked.lower()
        candidates = [
            d
            for d, name in enumerate(names)
            if d not in taken and name is not None and finite[d] and not any(lows[d] in o for o in own_low)
        ]
        # a plain substring test first: the word-bounded regex only runs where the name occurs at all,
        # so a 100,000-record array costs a pass of C-speed ``in``, not 100,000 regex compilations
        in_question = {d for d in candidates if lows[d] in asked_low and _mentions(names[d] or "", asked, case=False)}
        # the longest name the question uses wins: "Shut Up, Make Love" over the "Make Love" inside it.
        # Over distinct names: two documents that share a name ("Paris (France)", "Paris (Texas)")
        # both keep the question's link, and the better ranked is taken
        used = {lows[d] for d in in_question}
        inner = {x for x in used if any(x != y and x in y for y in used)}
        in_question = {d for d in in_question if lows[d] not in inner}
        best: tuple[int, float, int] | None = None
        for d in candidates:
            name = names[d] or ""
            links = int(d in in_question) + int(name in said and _mentions(name, said, case=True))
            if links and (best is None or (links, s[d]) > (best[0], best[1])):
                best = (links, float(s[d]), d)
        if best is None:
            break
        taken.append(best[2])
    return taken[1:]


def lifted(
    scores: Sequence[float] | np.ndarray,
    doc_of: Sequence[int] | np.ndarray,
    texts: Sequence[str],
    question: str | None,
    titles: Sequence[str | None] | None = None,
) -> np.ndarray:
    """Per-unit ``scores`` (chunks, windows or whole documents; ``doc_of`` maps each to its
    document) with each hop's units raised by one amount, so that the hops' best units rank
    right below the best unit overall, in hop order, and their other units keep their order."""
    return chain_lifted(scores, doc_of, texts, question, titles)[0]


def chain_lifted(
    scores: Sequence[float] | np.ndarray,
    doc_of: Sequence[int] | np.ndarray,
    texts: Sequence[str],
    question: str | None,
    titles: Sequence[str | None] | None = None,
) -> tuple[np.ndarray, list[int]]:
    """``lifted``'s scores and the chain they encode: [best document, *hops], or [] when
    nothing links (a method's later stages can then keep the chain together)."""
    out = np.asarray(scores, dtype=np.float64).copy()
    doc = np.asarray(doc_of, dtype=np.int64)
    if not len(out):
        return out, []
    best = np.full(len(texts), -np.inf)
    np.maximum.at(best, doc, np.where(np.isfinite(out), out, -np.inf))
    found = hops(best, texts, question, titles)
    if not found:
        return out, []
    top = float(best.max())
    step = 1e-6 * max(1.0, abs(top))
    for k, d in enumerate(found, start=1):
        lift = top - k * step - best[d]
        if lift > 0:
            out[doc == d] += lift
    return out, [int(np.argmax(best)), *found]

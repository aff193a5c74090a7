"""Teacher labels for the student: ``hybrid``'s fine-stage unit scores plus answer supervision.

For each example the teacher scores every unit (word) with ``Hybrid.unit_scores``: LM
self-information, atom and question-word boosts, and the similarity of its sentence to the
question. The target of a unit is its percentile within the example (1.0 = the most worth keeping),
so the student learns a ranking, and 0.5 is "the better half". Where the data knows the answer, the
answer's units are set to 1.0 and its sentence is lifted into the top half. Relevance labels come
from the data alone (NQ ``has answer``, a SQuAD question's own paragraph).

The labels file holds keys, text digests and uint8 targets only; the text is re-read from the
shared data folder (``examples.build_examples``), and a digest mismatch is an error.
"""

from __future__ import annotations

import gzip
import re
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import msgspec
import numpy as np

from ctxgate.compressor.training import Segmented, segment

from .examples import Example

Log = Callable[[str], None]


class Labelled(msgspec.Struct, frozen=True):
    key: str
    digest: str
    targets: bytes  # uint8 per unit, target * 255
    structured: bool = False  # segmented with keep_structures=False (JSON taught word by word)


def segment_example(ex: Example) -> Segmented:
    return segment(ex.text, keep_structures=ex.source != "json")


def percentiles(scores: np.ndarray) -> np.ndarray:
    n = len(scores)
    if n <= 1:
        return np.ones(n)
    order = np.lexsort((np.arange(n), scores))  # ascending, ties by position
    ranks = np.empty(n)
    ranks[order] = np.arange(n)
    return ranks / (n - 1)


def answer_units(seg: Segmented, answers: Sequence[str]) -> np.ndarray:
    """Mask of units overlapping any case-insensitive occurrence of an answer."""
    mask = np.zeros(len(seg.units), dtype=bool)
    if not seg.units:
        return mask
    starts = np.array([u.start for u in seg.units])
    ends = np.array([u.end for u in seg.units])
    low = seg.text.lower()
    for a in answers:
        a = a.strip().lower()
        if not a:
            continue
        for m in re.finditer(re.escape(a), low):
            mask |= (starts < m.end()) & (ends > m.start())
    return mask


def targets_for(seg: Segmented, scores: np.ndarray, answers: Sequence[str]) -> np.ndarray:
    t = percentiles(scores)
    hit = answer_units(seg, answers)
    if hit.any():
        for first, last in seg.sentences:
            if hit[first:last].any():
                t[first:last] = 0.5 + t[first:last] / 2
        t[hit] = 1.0
    for i, u in enumerate(seg.units):
        if u.kind == "keep":
            t[i] = 1.0
    return t


def _groups(examples: Sequence[Example], size: int = 24) -> list[list[int]]:
    """Indices grouped by question (one teacher call per question), question-less ones by ``size``."""
    groups: list[list[int]] = []
    by_q: dict[str, list[int]] = {}
    loose: list[int] = []
    for i, ex in enumerate(examples):
        if ex.question:
            by_q.setdefault(ex.question, []).append(i)
        else:
            loose.append(i)
    groups.extend(by_q.values())
    groups.extend(loose[k : k + size] for k in range(0, len(loose), size))
    return groups


def label(
    examples: Sequence[Example], *, scorer: str = "smollm2", embedder: str = "minilm", log: Log = print
) -> list[Labelled]:
    from ctxgate.compressor.training import Hybrid, get_counter

    teacher = Hybrid(scorer=scorer, embedder=embedder)
    counter = get_counter(None)
    out: dict[int, Labelled] = {}
    groups = _groups(examples)
    t0, words = time.perf_counter(), 0
    for g, idx in enumerate(groups):
        exs = [examples[i] for i in idx]
        segs = [segment_example(e) for e in exs]
        scores = teacher.unit_scores(segs, exs[0].question, counter)
        for i, ex, seg, s in zip(idx, exs, segs, scores):
            t = targets_for(seg, s, ex.answers)
            out[i] = Labelled(ex.key, ex.digest, np.round(t * 255).astype(np.uint8).tobytes(), ex.source == "json")
            words += len(seg.units)
        if g % 50 == 0 or g == len(groups) - 1:
            dt = time.perf_counter() - t0
            log(f"teacher: {g + 1}/{len(groups)} groups, {words} words, {words / max(dt, 1e-9):.0f} words/s")
    return [out[i] for i in range(len(examples))]


def save(path: Path, labelled: Sequence[Labelled], meta: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    blob = msgspec.msgpack.encode({"meta": meta, "rows": list(labelled)})
    with open(path, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", compresslevel=9, mtime=0) as f:
        f.write(blob)  # mtime=0: the same labels give the same bytes


def load(path: Path) -> tuple[dict, list[Labelled]]:
    with gzip.open(path, "rb") as f:
        raw = msgspec.msgpack.decode(f.read())
    rows = [msgspec.convert(r, Labelled) for r in raw["rows"]]
    return raw["meta"], rows

"""Compression methods, built lazily by name so that unused models are never loaded."""

from __future__ import annotations

from ._base import Job, Method, MethodOutput

# name -> one line, shown by `ctxgate compress --help` and the README
METHODS: dict[str, str] = {
    "hybrid": "question-aware default: embedding ranking of documents/sentences, then LM token pruning inside what is kept",
    "classifier": "fast: MiniLM and BM25 rank the passages, then a small trained encoder scores the words of those kept",
    "extractive": "sentence/chunk selection by MiniLM similarity to the question (faiss), near-duplicates dropped",
    "longllmlingua": "llmlingua's own LongLLMLingua (PromptCompressor) with the local causal-LM scorer",
    "truncate": "baseline: keep the first tokens up to the budget",
    "random": "baseline: drop random words (seeded) down to the budget",
    "passthrough": "no compression",
}
METHOD_NAMES: tuple[str, ...] = tuple(METHODS)
# methods that decide how much to keep (rate="auto")
AUTO_RATE_METHODS: tuple[str, ...] = ("classifier",)


def make_method(
    name: str, *, scorer: str, embedder: str, student: str = "student", device: str | None = None
) -> Method:
    if name == "passthrough":
        from .passthrough import Passthrough

        return Passthrough()
    if name == "classifier":
        from .classifier import Classifier

        return Classifier(student=student, device=device, embedder=embedder)
    if name == "extractive":
        from .extractive import Extractive

        return Extractive(embedder=embedder, device=device)
    if name == "hybrid":
        from .hybrid import Hybrid

        return Hybrid(scorer=scorer, embedder=embedder, device=device)
    if name == "longllmlingua":
        from .longllmlingua import LongLLMLingua

        return LongLLMLingua(scorer=scorer, device=device)
    if name in ("truncate", "random"):
        from .baselines import RandomDrop, Truncate

        return Truncate() if name == "truncate" else RandomDrop()
    raise ValueError(f"unknown method {name!r}")


__all__ = ["AUTO_RATE_METHODS", "METHODS", "METHOD_NAMES", "Job", "Method", "MethodOutput", "make_method"]

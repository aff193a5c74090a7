"""What a compression method is: ``run(job) -> MethodOutput``.

The Compressor does everything common (markup, protected spans, token counting, budgets, cache,
timing); a method only decides what to keep. Methods must be deterministic.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

from .._tokens import TokenCounter
from .._units import Segmented


@dataclass
class Job:
    """The compressible documents and the budget for them.

    ``budget`` is in the target tokenizer's tokens (``counter``) and covers all of ``docs``
    together; keep units (``Unit.kind == "keep"``) must survive and count against it.
    ``doc_tokens`` holds each document's full size in the same tokenizer.
    """

    docs: list[Segmented]
    doc_tokens: list[int]
    budget: int
    counter: TokenCounter
    question: str | None = None
    options: dict[str, Any] = field(default_factory=dict)

    @property
    def total_tokens(self) -> int:
        return sum(self.doc_tokens)


@dataclass
class MethodOutput:
    """Per input document: the compressed text, or None when the whole document was dropped;
    plus an optional relevance score per document (higher is more relevant)."""

    texts: list[str | None]
    scores: list[float | None] | None = None
    warnings: list[str] = field(default_factory=list)


class Method(Protocol):
    name: str

    @property
    def model_id(self) -> str | None:
        """Fingerprint of the weights this method uses (part of every cache key)."""
        ...

    def run(self, job: Job) -> MethodOutput: ...

"""What every structured compressor gets (a budget and its tools) and gives back."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from .._hops import MULTI_HOP
from .._tokens import TokenCounter
from ._rank import Relevance

# (texts, rate) -> each text pruned by the text compressor to about ``rate`` of its tokens
Prune = Callable[[Sequence[str], float], list[str]]


@dataclass
class Tools:
    """``budget`` is in ``counter``'s tokens. ``ref``, when set, names the stored original of this
    part: omission markers carry it so that the model can ask for the content back."""

    budget: int
    counter: TokenCounter
    relevance: Relevance
    prune: Prune | None = None
    ref: str | None = None
    multi_hop: bool = MULTI_HOP  # records with titles: the one the best record names ranks second

    def marker(self, what: str) -> str:
        return f"{what}; ctxgate_expand ref={self.ref}" if self.ref else what


@dataclass
class Crushed:
    """The compressed part, and how many units (items, lines, rows, regions) it left out."""

    text: str
    omitted: int = 0
    warnings: list[str] = field(default_factory=list)

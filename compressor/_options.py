"""The per-request ``options`` the engine reads: each known one's type and range, checked once
when the request is built, so a bad value is an ``InvalidRequest`` (a 400), never a crash.

Why: the methods read their knobs with ``int()`` and ``float()``, so ``{"passage_words": "abc"}``
was a 500 ("internal error (ValueError)") and ``{"coarse_factor": "inf"}`` was taken as given
(second audit). Numbers may come as numeric strings (``ctxgate eval --compress-option k=v`` passes
strings); flags as booleans or "true"/"false". Unknown keys pass through untouched: methods and
integrations (``instruction``, headroom-style keys) may carry their own.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from ._errors import InvalidRequest


@dataclass(frozen=True)
class OptionSpec:
    kind: Literal["flag", "int", "float"]
    low: float = -math.inf  # inclusive bounds
    high: float = math.inf
    low_open: bool = False  # the low bound itself is not allowed


OPTIONS: dict[str, OptionSpec] = {
    # flags (the Compressor, the structured compressors, the ranking methods)
    **{
        name: OptionSpec("flag")
        for name in ("expand", "keep_structures", "multi_hop", "structured", "structured_dense", "hop_sentences")
    },
    # classifier knobs (compressor/methods/classifier.py says what each one does)
    "passage_words": OptionSpec("int", 1, 512),
    "coarse_factor": OptionSpec("float", 0, 100, low_open=True),
    "lexical_weight": OptionSpec("float", 0, 100),
    "sentence_factor": OptionSpec("float", 0, 100),
    "auto_passage_z": OptionSpec("float", -100, 100),
    "auto_word_logit": OptionSpec("float", -100, 100),
}


def _number(name: str, value: Any, spec: OptionSpec) -> int | float:
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise InvalidRequest(f"option {name} must be a number, got {type(value).__name__}")
    try:
        number = float(value) if spec.kind == "float" else int(value)
    except (ValueError, OverflowError):
        raise InvalidRequest(f"option {name} must be {'a number' if spec.kind == 'float' else 'an integer'}") from None
    if spec.kind == "int" and isinstance(value, float) and value != number:
        raise InvalidRequest(f"option {name} must be an integer")
    if not math.isfinite(number) or number < spec.low or number > spec.high or (spec.low_open and number == spec.low):
        low = "(" if spec.low_open else "["
        raise InvalidRequest(f"option {name} must be in {low}{spec.low:g}, {spec.high:g}]")
    return number


def _flag(name: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):
        return value.strip().lower() == "true"
    raise InvalidRequest(f"option {name} must be true or false")


def checked_options(options: Mapping[str, Any]) -> dict[str, Any]:
    """``options`` with every known key validated and converted to its type; others unchanged."""
    out = dict(options)
    for name, value in options.items():
        spec = OPTIONS.get(name)
        if spec is None:
            continue
        out[name] = _flag(name, value) if spec.kind == "flag" else _number(name, value, spec)
    return out

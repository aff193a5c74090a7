"""Per-token self-information from a causal LM, fast and in bounded memory.

Texts are cut into windows of ``window`` target tokens, each preceded by up to ``overlap`` tokens
of the text before it (context only, not scored) and by the condition prefix (or BOS). Windows
from all texts are sorted by length and batched up to ``batch_tokens`` tokens, so many short
documents cost one padded forward pass and a 1M-token text never holds more than one batch of
activations. The vocabulary projection is applied only to the positions that predict a target,
``head_rows`` rows at a time, and only the target token's log-probability is kept, so the full
(tokens x vocab) logits tensor never exists.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class TokenScores:
    """Tokens of one text: char spans in that text and -log p(token | everything before it)."""

    offsets: np.ndarray  # (n, 2) int64
    nll: np.ndarray  # (n,) float32, nats


@dataclass(frozen=True)
class _Window:
    text: int  # which text
    first: int  # index of the first target token in that text
    ids: list[int]  # prefix + context + targets
    n_context: int  # prefix + context tokens (not scored)


class LMScorer:
    """A lazily loaded causal LM that scores tokens. Deterministic: batches depend only on input."""

    def __init__(
        self,
        name: str = "smollm2",
        device: str | None = None,
        *,
        window: int = 512,
        overlap: int = 64,
        batch_tokens: int = 4096,
        head_rows: int = 1024,
    ) -> None:
        if window < 1 or overlap < 0:
            raise ValueError("window must be positive and overlap non-negative")
        self.name = name
        self.device = device
        self.window = window
        self.overlap = overlap
        self.batch_tokens = batch_tokens
        self.head_rows = head_rows
        self._model = None
        self._tok = None
        self._resolved: Any = None  # a ResolvedModel once known

    def _load(self):
        if self._model is None:
            from .models import load_causal_lm

            self._model, self._tok, self._resolved = load_causal_lm(self.name, self.device)
        return self._model, self._tok

    @property
    def model_id(self) -> str:
        if self._resolved is None:
            from .models import resolve

            self._resolved = resolve(self.name)
        return self._resolved.fingerprint

    @property
    def model_name(self) -> str:
        return self._resolved.name if self._resolved is not None else self.name

    def score(self, texts: Sequence[str], condition: str | None = None) -> list[TokenScores]:
        """Token scores for each text, each conditioned on ``condition`` (e.g. the question)."""
        model, tok = self._load()
        if not texts:
            return []
        enc = tok(list(texts), add_special_tokens=False, return_offsets_mapping=True)
        prefix = self._prefix(tok, condition)
        windows: list[_Window] = []
        for t, ids in enumerate(enc["input_ids"]):
            for first in range(0, len(ids), self.window):
                ctx = ids[max(0, first - self.overlap) : first]
                windows.append(
                    _Window(t, first, prefix + ctx + ids[first : first + self.window], len(prefix) + len(ctx))
                )
        nll = [np.zeros(len(ids), dtype=np.float32) for ids in enc["input_ids"]]
        for batch in self._batches(windows):
            for w, values in zip(batch, self._forward(model, tok, batch)):
                nll[w.text][w.first : w.first + len(values)] = values
        out = []
        for ids, offs, scores in zip(enc["input_ids"], enc["offset_mapping"], nll):
            if not prefix and len(ids):
                # nothing predicts the very first token: give it the text's mean, not a fake 0
                scores[0] = scores[1:].mean() if len(ids) > 1 else 0.0
            out.append(TokenScores(np.asarray(offs, dtype=np.int64).reshape(-1, 2), scores))
        return out

    @staticmethod
    def _prefix(tok, condition: str | None) -> list[int]:
        ids: list[int] = []
        start = tok.bos_token_id if tok.bos_token_id is not None else tok.eos_token_id
        if start is not None:
            ids.append(int(start))
        if condition:
            ids += tok(condition, add_special_tokens=False)["input_ids"]
        return ids

    def _batches(self, windows: list[_Window]) -> list[list[_Window]]:
        """Longest first, as many per batch as fit in ``batch_tokens`` (padded size)."""
        order = sorted(windows, key=lambda w: (-len(w.ids), w.text, w.first))
        batches: list[list[_Window]] = []
        for w in order:
            if batches and len(batches[-1][0].ids) * (len(batches[-1]) + 1) <= self.batch_tokens:
                batches[-1].append(w)
            else:
                batches.append([w])
        return batches

    def _forward(self, model, tok, batch: list[_Window]) -> list[np.ndarray]:
        import torch

        width = len(batch[0].ids)
        pad = tok.pad_token_id if tok.pad_token_id is not None else 0
        ids = torch.full((len(batch), width), pad, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        rows, cols, targets = [], [], []
        for b, w in enumerate(batch):
            n = len(w.ids)
            ids[b, :n] = torch.tensor(w.ids)
            mask[b, :n] = 1
            # the hidden state at position p predicts token p + 1
            start = max(w.n_context, 1)
            rows.append(np.full(n - start, b))
            cols.append(np.arange(start - 1, n - 1))
            targets.append(w.ids[start:])
        device = next(model.parameters()).device
        with torch.inference_mode():
            hidden = _hidden_states(model, ids.to(device), mask.to(device))
            picked = hidden[
                torch.from_numpy(np.concatenate(rows)).to(device), torch.from_numpy(np.concatenate(cols)).to(device)
            ]
            target = torch.tensor([t for ts in targets for t in ts], dtype=torch.long, device=device)
            head = model.get_output_embeddings()
            cap = getattr(model.config, "final_logit_softcapping", None)
            parts = []
            for s in range(0, len(target), self.head_rows):
                logits = head(picked[s : s + self.head_rows]).float()
                if cap:  # Gemma-style soft-capping happens after the head
                    logits = torch.tanh(logits / cap) * cap
                parts.append(
                    torch.nn.functional.cross_entropy(logits, target[s : s + self.head_rows], reduction="none")
                )
            nll = torch.cat(parts).cpu().numpy().astype(np.float32) if parts else np.zeros(0, np.float32)
        out, pos = [], 0
        for b, w in enumerate(batch):
            n = len(targets[b])
            values = nll[pos : pos + n]
            pos += n
            # a first window without prefix has one target fewer (token 0 has no predictor)
            missing = (len(w.ids) - w.n_context) - n
            out.append(np.concatenate([np.zeros(missing, np.float32), values]) if missing else values)
        return out


def _hidden_states(model, ids, mask):
    """Final (normed) hidden states without the vocabulary projection.

    ``get_decoder()`` is the transformer body of every causal LM in transformers; the LM head is
    then applied only where a target is predicted (soft-capping, where a config has it, is
    applied after the head in ``_forward``).
    """
    body = model.get_decoder()
    return body(input_ids=ids, attention_mask=mask, use_cache=False).last_hidden_state

"""Training the ``classifier`` student on the teacher's labels (``ctxgate train fit``).

Deterministic on one machine (seeded shuffling, fixed batches). Examples whose key hashes to 0 mod
20 are held out as a validation split; its metrics go into the model card. The embeddings stay
frozen; the kept blocks and both heads train with AdamW and a linear warm-up/decay schedule.
Uses the GPU when there is one (or ``--device``).
"""

from __future__ import annotations

import hashlib
import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ctxgate.compressor.training import build_net, encode, trained_state, unit_means

from . import teach
from .examples import Example

Log = Callable[[str], None]
POS_WEIGHT = 3.0  # relevant documents are about 1 in 6 of the labelled ones
LISTWISE_WEIGHT = 1.0


@dataclass
class Row:
    ids: np.ndarray
    types: np.ndarray
    units: np.ndarray  # piece -> unit of this example, -1 outside the chunk
    targets: np.ndarray  # per unit of this example, 0..1
    relevant: float  # 1, 0, or nan (no label)
    example: int
    group: int = -1  # windows of one question share a group (listwise relevance loss)
    soft: float = 0.0  # the group's target distribution at this row (first window of a document)


def is_validation(key: str) -> bool:
    return int(hashlib.sha1(key.encode()).hexdigest(), 16) % 20 == 0


def rows_for(
    examples: list[Example], labelled: list[teach.Labelled | None], tokenizer, max_len: int, offset: int = 0
) -> list[Row]:
    """Rows (windows) of ``labelled`` examples; a None label is a relevance-only example of
    ``examples`` at the same position (no word targets)."""
    by_key = {e.key: e for e in examples}
    out: list[Row] = []
    for k, lab in enumerate(labelled):
        if lab is None:
            ex = examples[k]
            seg = teach.segment_example(ex)
            targets = None
        else:
            ex = by_key.get(lab.key)
            if ex is None or ex.digest != lab.digest:
                raise ValueError(
                    f"labels do not match the data for {lab.key}; regenerate them with `ctxgate train labels`"
                )
            seg = teach.segment_example(ex)
            targets = np.frombuffer(lab.targets, dtype=np.uint8).astype(np.float32) / 255
            if len(targets) != len(seg.units):
                raise ValueError(f"{lab.key}: {len(targets)} targets for {len(seg.units)} units")
        enc = encode(tokenizer, [seg], ex.question, max_len)
        rel = float("nan") if ex.relevant is None else float(ex.relevant)
        for r in range(len(enc.windows)):
            n = int(enc.attention[r].sum())
            units = enc.piece_unit[r, :n] if targets is not None else np.full(n, -1, dtype=np.int64)
            out.append(
                Row(
                    enc.input_ids[r, :n],
                    enc.types[r, :n],
                    units,
                    targets if targets is not None else np.zeros(0, np.float32),
                    rel,
                    offset + k,
                )
            )
    return out


def add_relevance_targets(
    rows: list[Row], examples: list[Example], embedder: str = "minilm", temperature: float = 0.05
) -> None:
    """Groups per question and the listwise target: half the data's label (the documents holding
    the answer), half the hybrid teacher's coarse ranking (softmax of MiniLM question-document
    similarity), which is what ``hybrid`` keeps documents by."""
    from ctxgate.compressor.training import Embedder

    first: dict[int, int] = {}
    for i, r in enumerate(rows):
        first.setdefault(r.example, i)
    by_q: dict[str, list[int]] = {}
    for k in first:
        ex = examples[k]
        if ex.question and ex.relevant is not None:
            by_q.setdefault(ex.question, []).append(k)
    emb = Embedder(embedder)
    questions = list(by_q)
    qv = emb.embed(questions)
    for g, ks in enumerate(by_q.values()):
        if len(ks) < 2:
            continue
        dv = emb.embed([examples[k].text for k in ks])
        sims = dv @ qv[g]
        teacher = np.exp((sims - sims.max()) / temperature)
        teacher /= teacher.sum()
        labels = np.array([float(bool(examples[k].relevant)) for k in ks])
        target = 0.5 * teacher + (0.5 * labels / labels.sum() if labels.sum() else 0.5 * teacher)
        for k, t in zip(ks, target):
            rows[first[k]].group, rows[first[k]].soft = g, float(t)


def _batches(rows: list[Row], batch: int, rng: random.Random) -> list[list[int]]:
    """Whole question groups packed up to ``batch`` rows (the listwise loss needs a group in one
    batch), then the other rows length-bucketed; in a seeded random order."""
    groups: dict[int, list[int]] = {}
    loose: list[int] = []
    for i, r in enumerate(rows):
        (groups.setdefault(r.group, []) if r.group >= 0 else loose).append(i)
    packed: list[list[int]] = []
    cur: list[int] = []
    keys = list(groups)
    rng.shuffle(keys)
    for g in keys:
        if cur and len(cur) + len(groups[g]) > batch:
            packed.append(cur)
            cur = []
        cur = cur + groups[g]
    if cur:
        packed.append(cur)
    order = sorted(loose, key=lambda i: (len(rows[i].ids), rng.random()))
    batches = packed + [order[i : i + batch] for i in range(0, len(order), batch)]
    rng.shuffle(batches)
    return batches


def _tensors(rows: list[Row], idx: list[int], device: str):
    import torch

    width = max(len(rows[i].ids) for i in idx)
    n = len(idx)
    ids = np.zeros((n, width), dtype=np.int64)
    att = np.zeros((n, width), dtype=np.int64)
    typ = np.zeros((n, width), dtype=np.int64)
    tgt = np.full((n, width), -1.0, dtype=np.float32)
    rel = np.array([rows[i].relevant for i in idx], dtype=np.float32)
    group = np.array([rows[i].group for i in idx], dtype=np.int64)
    soft = np.array([rows[i].soft for i in idx], dtype=np.float32)
    for j, i in enumerate(idx):
        r = rows[i]
        k = len(r.ids)
        ids[j, :k], att[j, :k], typ[j, :k] = r.ids, 1, r.types
        inside = r.units >= 0
        tgt[j, :k][inside] = r.targets[r.units[inside]]
    t = lambda a: torch.from_numpy(a).to(device)  # noqa: E731
    return t(ids), t(att), t(typ), t(tgt), t(rel), t(group), t(soft)


def _loss(net, batch):
    import torch
    import torch.nn.functional as F

    ids, att, typ, tgt, rel, group, soft = batch
    tok, doc, _ = net(ids, att, typ)
    mask = tgt >= 0
    loss_tok = (
        F.binary_cross_entropy_with_logits(tok[mask], tgt[mask]) if mask.any() else torch.zeros((), device=ids.device)
    )
    groups = torch.unique(group[group >= 0])
    for g in groups:
        sel = group == g
        # listwise: the group's documents compete for the question, as the coarse stage ranks them
        loss_doc_list = -(soft[sel] * F.log_softmax(doc[sel], dim=0)).sum()
        loss_tok = loss_tok + LISTWISE_WEIGHT * loss_doc_list / len(groups)
    has = ~torch.isnan(rel)
    loss_doc = torch.zeros((), device=ids.device)
    if has.any():
        loss_doc = F.binary_cross_entropy_with_logits(
            doc[has], rel[has], pos_weight=torch.tensor(POS_WEIGHT, device=ids.device)
        )
    return loss_tok + loss_doc, loss_tok.item(), loss_doc.item()


def evaluate(net, rows: list[Row], device: str, batch: int = 64) -> dict[str, float]:
    """Validation: Spearman of unit scores with the teacher's targets, answer-unit recall in the
    student's top half, and relevance AUC."""
    import torch

    per_example: dict[int, list[tuple[np.ndarray, np.ndarray]]] = {}
    rel_scores, rel_labels = [], []
    net.eval()
    with torch.inference_mode():
        for s in range(0, len(rows), batch):
            idx = list(range(s, min(s + batch, len(rows))))
            ids, att, typ, *_ = _tensors(rows, idx, device)
            tok, doc, _ = net(ids, att, typ)
            tok, doc = tok.float().cpu().numpy(), doc.float().cpu().numpy()
            for j, i in enumerate(idx):
                r = rows[i]
                per_example.setdefault(r.example, []).append((tok[j, : len(r.ids)], r.units))
                if not math.isnan(r.relevant):
                    rel_scores.append(doc[j])
                    rel_labels.append(r.relevant)
    spear, top_half = [], []
    for k, parts in per_example.items():
        targets = next(r.targets for r in rows if r.example == k)
        vals = np.concatenate([p[0] for p in parts])
        units = np.concatenate([p[1] for p in parts])
        mean, count = unit_means(vals, units, len(targets))
        seen = count > 0
        if seen.sum() < 3:
            continue
        a, b = _ranks(mean[seen]), _ranks(targets[seen])
        if a.std() > 0 and b.std() > 0:
            spear.append(float(np.corrcoef(a, b)[0, 1]))
        answer = targets[seen] >= 0.999
        if answer.any() and (~answer).any():
            top_half.append(float((a[answer] >= np.median(a)).mean()))
    return {
        "spearman": float(np.mean(spear)) if spear else float("nan"),
        "answer_top_half": float(np.mean(top_half)) if top_half else float("nan"),
        "relevance_auc": _auc(np.array(rel_scores), np.array(rel_labels)),
    }


def _ranks(x: np.ndarray) -> np.ndarray:
    order = np.argsort(x, kind="stable")
    r = np.empty(len(x))
    r[order] = np.arange(len(x))
    return r


def _auc(scores: np.ndarray, labels: np.ndarray) -> float:
    pos, neg = scores[labels == 1], scores[labels == 0]
    if not len(pos) or not len(neg):
        return float("nan")
    return float((pos[:, None] > neg[None, :]).mean() + 0.5 * (pos[:, None] == neg[None, :]).mean())


def fit_student(
    examples: list[Example],
    labelled: list[teach.Labelled],
    out: Path,
    *,
    base_location: str,
    relevance_only: list[Example] = (),
    layers: int = 3,
    max_len: int = 256,
    epochs: int = 3,
    batch: int = 32,
    lr: float = 2e-4,
    seed: int = 0,
    device: str = "cpu",
    log: Log = print,
) -> dict:
    import torch
    from safetensors.torch import save_file
    from transformers import AutoTokenizer

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    tokenizer = AutoTokenizer.from_pretrained(base_location)
    train_lab = [x for x in labelled if not is_validation(x.key)]
    val_lab = [x for x in labelled if is_validation(x.key)]
    by_key = {e.key: e for e in examples}
    train_ex = [by_key[x.key] for x in train_lab] + list(relevance_only)
    train_rows = rows_for(examples, train_lab, tokenizer, max_len)
    train_rows += rows_for(
        list(relevance_only), [None] * len(relevance_only), tokenizer, max_len, offset=len(train_lab)
    )
    val_rows = rows_for(examples, val_lab, tokenizer, max_len)
    add_relevance_targets(train_rows, train_ex)
    log(
        f"relevance: {len({r.group for r in train_rows if r.group >= 0})} question groups, "
        f"{len(relevance_only)} relevance-only documents"
    )
    log(
        f"train: {len(train_lab)} examples, {len(train_rows)} windows, "
        f"{sum(len(r.ids) for r in train_rows)} pieces; validation: {len(val_lab)} examples"
    )
    net = build_net(base_location, layers).to(device)
    for p in net.encoder.embeddings.parameters():
        p.requires_grad_(False)
    heads = [p for n, p in net.named_parameters() if n.startswith(("token_head", "doc_head"))]
    blocks = [p for n, p in net.named_parameters() if p.requires_grad and not n.startswith(("token_head", "doc_head"))]
    opt = torch.optim.AdamW([{"params": blocks, "lr": lr}, {"params": heads, "lr": lr * 5}], weight_decay=0.01)
    rng = random.Random(seed)
    plan = [_batches(train_rows, batch, rng) for _ in range(epochs)]
    steps = sum(len(p) for p in plan)
    warm = max(1, steps // 20)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warm) * max(0.0, (steps - s) / max(1, steps - warm))
    )
    t0, step = time.perf_counter(), 0
    history = []
    for epoch, batches in enumerate(plan):
        net.train()
        for idx in batches:
            loss, lt, ld = _loss(net, _tensors(train_rows, idx, device))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
            opt.step()
            sched.step()
            step += 1
            if step % 25 == 0:
                log(
                    f"step {step}/{steps} loss {float(loss):.4f} (token {lt:.4f}, doc {ld:.4f}) "
                    f"{time.perf_counter() - t0:.0f} s"
                )
        metrics = evaluate(net, val_rows, device)
        history.append({"epoch": epoch + 1, **metrics})
        log(f"epoch {epoch + 1}: {metrics}")
    state = {k: v.detach().to("cpu", torch.float16).contiguous() for k, v in trained_state(net).items()}
    out.parent.mkdir(parents=True, exist_ok=True)
    save_file(state, str(out), metadata={"base": "minilm", "layers": str(layers), "max_len": str(max_len)})
    return {
        "train_examples": len(train_lab),
        "validation_examples": len(val_lab),
        "train_pieces": int(sum(len(r.ids) for r in train_rows)),
        "steps": steps,
        "seconds": round(time.perf_counter() - t0, 1),
        "history": history,
        "layers": layers,
        "max_len": max_len,
        "epochs": epochs,
        "batch": batch,
        "lr": lr,
        "seed": seed,
        "device": device,
    }

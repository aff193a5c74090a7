"""Agent tool outputs built from real data: what a search API, a docs API, a key-value store and a
service log return. Each item's context is one tool result (a single string, as a tool message
carries it) and ``meta["needed"]`` names what must survive compression for the answer.

- ``tools-nq``: NQ rows 100-199 (the rows we report on) as a search API's JSON array of 50 to 500
  results; the 20 retrieved passages of the row plus distractor passages of other rows.
- ``tools-hotpot``: HotpotQA dev (distractor) paragraphs as search results; both supports needed.
- ``tools-squad``: a SQuAD article as a nested docs-API response; the question's paragraph needed.
- ``tools-kv``: the key-value retrieval set as a JSON object; the exact value must come back.
- ``tools-logs``: a service log of 1,000-3,000 lines with planted failures; the question asks which
  orders failed and why, so every failure line is needed. Synthetic by construction (seeded).
"""

from __future__ import annotations

import json
import random
import re
from pathlib import Path
from typing import Any

from .._types import FIRST_LINE, Item
from ..metrics import answer_kept, supports_kept
from ._common import data_file, read_jsonl, sample
from .hotpotqa import load_hotpotqa
from .kv import FILE as KV_FILE
from .nq import template as nq_template
from .squad import FILE as SQUAD_FILE

SYSTEM = "Answer the question from the tool output. Reply with the answer only."
TEMPLATE = "Tool output:\n{context}\n\nQuestion: {question}\nAnswer:"
NQ_FILE = "nq/nq-open-20docs-derived_first500.jsonl"
SIZES = (50, 100, 200, 500)


def _results(question: str, passages: list[dict[str, Any]], rnd: random.Random) -> str:
    rows = [
        {
            "rank": i + 1,
            "id": f"doc-{p['id']}",
            "title": p["title"],
            "url": p["url"],
            "snippet": p["text"],
            "score": round(1 - i / (len(passages) + 1), 4),
        }
        for i, p in enumerate(passages)
    ]
    return json.dumps(
        {"query": question, "total": len(rows), "took_ms": rnd.randint(20, 400), "results": rows},
        indent=2,
        ensure_ascii=False,
    )


def _url(title: str) -> str:
    return "https://en.wikipedia.org/wiki/" + title.replace(" ", "_")


def load_tools_nq(
    root: Path, limit: int | None, seed: int, *, offset: int = 100, results: int | None = None, **_: Any
) -> list[Item]:
    """``results=N`` fixes every item's result count (at least the row's 20 passages) instead of
    drawing it from SIZES: the reader eval uses 50 so the uncompressed output fits a 1.5B reader."""
    rows = list(read_jsonl(data_file(root, NQ_FILE)))
    pool = [dict(c, id=f"{r}-{j}") for r, row in enumerate(rows) for j, c in enumerate(row["ctxs"])]
    chosen = rows[offset : offset + 100]
    items = []
    for k, row in sample(list(enumerate(chosen)), limit, seed):
        idx = offset + k
        rnd = random.Random(seed * 1000 + idx)
        n = rnd.choice(SIZES)
        if results is not None:
            n = max(int(results), len(row["ctxs"]))
        own = [dict(c, id=f"{idx}-{j}") for j, c in enumerate(row["ctxs"])]
        others = [p for p in pool if not p["id"].startswith(f"{idx}-")]
        passages = own + rnd.sample(others, n - len(own))
        rnd.shuffle(passages)
        for p in passages:
            p["url"] = _url(p["title"])
        items.append(
            Item(
                id=f"tools-nq-{idx}",
                dataset="tools-nq",
                task="qa",
                context=_results(row["question"], passages, rnd),
                question=row["question"],
                template=nq_template(root),
                references=list(row["answers"]),
                system=SYSTEM,
                meta={"needed": "answer", "json": True, "results": n},
            )
        )
    return items


_HOTPOT_DOC = re.compile(r"Document \[\d+\]\(Title: (.*?)\) (.*)", re.S)


def load_tools_hotpot(root: Path, limit: int | None, seed: int, **_: Any) -> list[Item]:
    items = []
    for it in load_hotpotqa(root, limit, seed):
        rnd = random.Random(f"{seed}-{it.id}")
        passages = []
        for j, doc in enumerate(it.context):
            m = _HOTPOT_DOC.match(doc)
            title, text = (m.group(1), m.group(2)) if m else ("", doc)
            passages.append({"id": f"{it.id}-{j}", "title": title, "url": _url(title), "text": text})
        items.append(
            Item(
                id=f"tools-{it.id}",
                dataset="tools-hotpot",
                task=it.task,
                context=_results(it.question, passages, rnd),
                question=it.question,
                template=TEMPLATE,
                references=it.references,
                system=SYSTEM,
                meta={"needed": "supports", "json": True, "supports": it.meta.get("supports", [])},
            )
        )
    return items


def load_tools_squad(root: Path, limit: int | None, seed: int, **_: Any) -> list[Item]:
    data = json.loads(data_file(root, SQUAD_FILE).read_text(encoding="utf-8"))["data"]
    rows = []
    for a, article in enumerate(data):
        for p_i, p in enumerate(article["paragraphs"]):
            for qa in p["qas"]:
                if not qa.get("is_impossible") and qa["answers"]:
                    rows.append((a, p_i, qa))
    items = []
    for a, p_i, qa in sample(rows, limit, seed):
        article = data[a]
        sections = [
            {
                "section_id": f"{a}.{j}",
                "position": j,
                "words": len(p["context"].split()),
                "content": {"text": p["context"], "format": "plain"},
                "links": [{"rel": "self", "href": f"https://docs.example.org/articles/{a}/sections/{j}"}],
            }
            for j, p in enumerate(article["paragraphs"])
        ]
        body = {
            "status": "ok",
            "data": {"article": {"id": a, "title": article["title"], "sections": sections}},
            "meta": {"request_id": f"req-{a:04d}-{p_i:03d}", "api_version": "2.3"},
        }
        refs = list(dict.fromkeys(x["text"] for x in qa["answers"]))
        items.append(
            Item(
                id=f"tools-squad-{qa['id']}",
                dataset="tools-squad",
                task="squad",
                context=json.dumps(body, indent=2, ensure_ascii=False),
                question=qa["question"],
                template=TEMPLATE,
                references=refs,
                system=SYSTEM,
                max_new_tokens=48,
                stop=[FIRST_LINE],
                meta={"needed": "answer", "json": True},
            )
        )
    return items


def load_tools_kv(root: Path, limit: int | None, seed: int, **_: Any) -> list[Item]:
    items = []
    for idx, row in sample(list(enumerate(read_jsonl(data_file(root, KV_FILE)))), limit, seed):
        obj = {k: v for k, v in row["ordered_kv_records"]}
        items.append(
            Item(
                id=f"tools-kv-{idx}",
                dataset="tools-kv",
                task="kv",
                context=json.dumps(obj, indent=1),
                question=f'What is the value of key "{row["key"]}"?',
                template=TEMPLATE,
                references=[row["value"]],
                system="Reply with the value only, exactly as written.",
                max_new_tokens=40,
                stop=[FIRST_LINE],
                meta={"needed": "answer", "json": True},
            )
        )
    return items


_REASONS = ["card_declined", "insufficient_funds", "fraud_suspected", "gateway_timeout", "expired_card"]
_SERVICES = ["api", "cart", "search", "auth", "inventory"]


def planted_log(rnd: random.Random, max_lines: int | None = None) -> tuple[str, list[str], list[str]]:
    """(log text, the planted failure lines, their order ids and reasons as references)."""
    n = rnd.randint(1000, 3000)
    if max_lines is not None:
        n = max(min(n, int(max_lines)), 40)
    fails = sorted(rnd.sample(range(10, n - 10), rnd.randint(2, 6)))
    lines, planted, refs = [], [], []
    t = rnd.randint(0, 3600)
    for i in range(n):
        t += rnd.randint(0, 3)
        ts = f"2026-11-30T{10 + t // 3600 % 10:02d}:{t // 60 % 60:02d}:{t % 60:02d}.{rnd.randint(0, 999):03d}Z"
        if i in fails:
            order, reason = f"ord_{rnd.randint(100000, 999999)}", rnd.choice(_REASONS)
            line = f"{ts} ERROR payments charge failed order={order} reason={reason} attempt={rnd.randint(1, 3)}"
            planted.append(line)
            refs.append(f"{order} {reason}")
        elif rnd.random() < 0.03:
            line = f"{ts} WARN {rnd.choice(_SERVICES)} slow response {rnd.randint(800, 3000)}ms from upstream"
        elif rnd.random() < 0.3:
            line = (
                f"{ts} INFO payments charge ok order=ord_{rnd.randint(100000, 999999)} amount={rnd.randint(5, 500)}.00"
            )
        else:
            line = (
                f"{ts} INFO {rnd.choice(_SERVICES)} GET /v1/{rnd.choice(['items', 'users', 'carts'])}/"
                f"{rnd.randint(1, 99999)} 200 {rnd.randint(2, 90)}ms"
            )
        lines.append(line)
    return "\n".join(lines), planted, refs


def load_tools_logs(root: Path, limit: int | None, seed: int, *, lines: int | None = None, **_: Any) -> list[Item]:
    """``lines=N`` caps each log at N lines (at least 40) so the uncompressed log fits a small reader."""
    items = []
    for idx in range(limit or 20):
        rnd = random.Random(seed * 7919 + idx)
        text, planted, refs = planted_log(rnd, lines)
        items.append(
            Item(
                id=f"tools-logs-{idx}",
                dataset="tools-logs",
                task="facts",  # every failed order and its reason (eval.metrics.facts_found)
                context=text,
                question="Which orders failed to be charged, and why?",
                template=TEMPLATE,
                references=refs,
                system=SYSTEM,
                max_new_tokens=120,
                meta={"needed": "lines", "json": False, "lines": planted},
            )
        )
    return items


def needed_kept(item: Item, compressed: str) -> float:
    """1.0 when what the item's answer needs (``meta["needed"]``) survived in ``compressed``: the
    answer string, every planted failure line, or both supporting paragraphs."""
    need = item.meta.get("needed")
    if need == "lines":
        out = set(compressed.split("\n"))
        return float(all(ln in out for ln in item.meta["lines"]))
    if need == "supports":
        return _supports(item, compressed)
    return answer_kept(compressed, item.references)


def _supports(item: Item, compressed: str) -> float:
    """Both supporting paragraphs survive: their results are still in the JSON with the sentence."""
    try:
        kept = {r.get("id"): r.get("snippet", "") for r in json.loads(compressed)["results"] if isinstance(r, dict)}
    except (ValueError, KeyError, TypeError):
        return 0.0
    prefix = item.id.removeprefix("tools-")
    docs = [kept.get(f"doc-{prefix}-{d}", "") for d in range(max(int(d) for d, _ in item.meta["supports"]) + 1)]
    return supports_kept(item.meta["supports"], docs)


def valid_json(text: str) -> bool:
    try:
        json.loads(text)
        return True
    except ValueError:
        return False

"""Synthetic tool outputs with planted needles: a 200-result search API response."""

from __future__ import annotations

import json
import random


def records(n: int = 200, seed: int = 0) -> list[dict]:
    rnd = random.Random(seed)
    words = "alpha beta gamma delta omega river stone bridge market garden".split()
    return [
        {
            "id": i,
            "title": f"Result {i}",
            "url": f"https://example.com/r/{i}",
            "snippet": " ".join(rnd.choice(words) for _ in range(30)),
            "status": "ok",
            "latency_ms": rnd.randint(10, 30),
            "score": float(f"{rnd.random():.3f}"),
        }
        for i in range(n)
    ]


def search_payload() -> tuple[str, list[dict]]:
    items = records()
    items[137]["snippet"] = "The Eiffel Tower was completed in 1889 by the company of Gustave Eiffel."
    items[50]["status"] = "error"
    items[90]["latency_ms"] = 9000
    return json.dumps({"query": "tower", "total": 200, "results": items}, indent=2), items

"""The segment cache backends behind the proxy: SQLite survives a restart, Redis is shared by two
instances, and a hit sends the same bytes without model work."""

from __future__ import annotations

import httpx
import pytest

from tests.helpers.clients import oai, rag_prompt
from tests.helpers.metrics import value


def _send(url: str, prompt: str):
    return oai(url).chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": prompt}]
    )


@pytest.mark.models
def test_sqlite_cache_survives_a_restart(sidecar, upstream, nq_item, tmp_path):
    prompt = rag_prompt(nq_item, 10)
    path = str(tmp_path / "segments.sqlite")
    with sidecar(cache={"backend": "sqlite", "path": path}) as url:
        assert _send(url, prompt).headers["x-ctxgate-cache"] == "miss"
        first = upstream.last().raw
    with sidecar(cache={"backend": "sqlite", "path": path}) as url:
        r = _send(url, prompt)
        assert r.headers["x-ctxgate-cache"] == "hit" and upstream.last().raw == first
        m = httpx.get(url + "/metrics").text
        assert value(m, "ctxgate_cache_hits_total") == 1 and value(m, "ctxgate_cache_misses_total") == 0


@pytest.mark.models
def test_redis_cache_is_shared_by_two_instances(sidecar, upstream, nq_item, redis_url):
    import redis

    prompt = rag_prompt(nq_item, 12)
    cache = {"backend": "redis", "url": redis_url, "ttl": 3600}
    with sidecar(cache=cache) as a, sidecar(cache=cache) as b:
        assert _send(a, prompt).headers["x-ctxgate-cache"] == "miss"
        from_a = upstream.last().raw
        assert _send(b, prompt).headers["x-ctxgate-cache"] == "hit"
        assert upstream.last().raw == from_a
        assert value(httpx.get(b + "/metrics").text, "ctxgate_cache_misses_total") == 0
    client = redis.Redis.from_url(redis_url)
    keys = client.keys("ctxgate:c:*")
    assert keys and all(0 < client.ttl(k) <= 3600 for k in keys)  # bounded by TTL


@pytest.mark.models
def test_redis_down_degrades_to_misses_not_errors(sidecar, upstream, nq_item):
    from tests.helpers.servers import free_port

    cache = {"backend": "redis", "url": f"redis://127.0.0.1:{free_port()}/0", "memory_entries": 0}
    with sidecar(cache=cache) as url:
        r = _send(url, rag_prompt(nq_item, 6))
        assert r.status_code == 200 and r.headers["x-ctxgate-cache"] == "miss"
        assert value(httpx.get(url + "/metrics").text, "ctxgate_cache_errors_total", op="get") >= 1


@pytest.mark.models
def test_cache_off_compresses_every_time(sidecar, upstream, nq_item):
    prompt = rag_prompt(nq_item, 6)
    with sidecar(cache={"backend": "off"}) as url:
        assert [_send(url, prompt).headers["x-ctxgate-cache"] for _ in range(2)] == ["miss", "miss"]


def test_redis_cache_unit(redis_url):
    from ctxgate.compressor._cache_redis import RedisCache

    c = RedisCache(redis_url, ttl=60, prefix="ctxgate:unit:")
    assert c.get("nope") is None
    c.set("k", b"\x00bytes")
    assert c.get("k") == b"\x00bytes" and c.ping()
    with pytest.raises(Exception, match="ttl"):
        RedisCache(redis_url, ttl=0)
    c.close()


@pytest.mark.models
def test_concurrent_real_compressions_stay_apart_and_a_twin_miss_compresses_alike(sidecar, upstream):
    """Ten requests at once, each a real 20-document RAG prompt compressed by the CPU default
    (``classifier``), two of them the very same fresh prompt: every upstream body carries its own
    question and documents, compressed, and the twins reach upstream byte for byte the same."""
    import json
    import threading

    from tests.helpers.data import nq_items

    items = nq_items(9)
    jobs = [(f"m{i}", rag_prompt(item, 20)) for i, item in enumerate(items)] + [("twin", rag_prompt(items[0], 20))]
    jobs[0] = ("twin", jobs[0][1])
    heads: dict[int, dict] = {}
    errors: list[str] = []

    def one(n: int, model: str, prompt: str) -> None:
        try:
            r = oai(url).chat.completions.with_raw_response.create(
                model=model, messages=[{"role": "user", "content": prompt}], extra_headers={"x-ctxgate-rate": "0.25"}
            )
            heads[n] = dict(r.headers)
        except Exception as exc:  # reported below with the request it belongs to
            errors.append(f"{n}: {type(exc).__name__}: {exc}")

    with sidecar(default_method="classifier", compress_timeout=120) as url:
        threads = [threading.Thread(target=one, args=(n, m, p)) for n, (m, p) in enumerate(jobs)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(180)
        m = httpx.get(url + "/metrics").text
    assert errors == [] and len(heads) == len(jobs) == 10
    for h in heads.values():
        assert int(h["x-ctxgate-tokens-after"]) < 0.4 * int(h["x-ctxgate-tokens-before"]), h
    bodies = [json.loads(c.raw) for c in upstream.calls]
    assert len(bodies) == 10
    by_model: dict[str, list[str]] = {}
    for b in bodies:
        by_model.setdefault(b["model"], []).append(b["messages"][0]["content"])
    for i, item in enumerate(items[1:], start=1):
        (content,) = by_model[f"m{i}"]
        others = [x["question"] for j, x in enumerate(items) if j != i]
        assert item["question"] in content and not any(q in content for q in others)
    twins = by_model["twin"]
    assert len(twins) == 2 and twins[0] == twins[1] and items[0]["question"] in twins[0]
    assert sorted(h["x-ctxgate-cache"] for n, h in heads.items() if jobs[n][0] == "twin") in (
        ["hit", "miss"],
        ["miss", "miss"],
    )
    assert value(m, "ctxgate_cache_hits_total") + value(m, "ctxgate_cache_misses_total") >= 10

"""A small, real RAG pipeline with ctxgate in the middle: retrieve, compress, answer.

    .venv/bin/python examples/rag_nq.py --question "who got the first nobel prize in physics"

- corpus: the gold Wikipedia passages of the first --passages NQ-Open questions (../shared/data/nq)
- retriever: MiniLM embeddings (compressor.models.load_embedder) in a faiss inner-product index, top --k
- compressor: ctxgate.rag.RAGCompressor, in-process, or a sidecar with --url (same code path)
- reader: a local causal LM, SmolLM2-135M by default (fast, weak) or --reader qwen-1.5b

Token counts are in the reader's tokenizer, so "before/after" are the tokens the reader was spared.
Passage embeddings are cached in ~/.cache/ctxgate/examples so the second run starts fast.
"""

from __future__ import annotations

import argparse
import gzip
import json
import time
from pathlib import Path

import numpy as np

from ctxgate.compressor.models import home, load_causal_lm, load_embedder
from ctxgate.rag import RAGCompressor, RAGResult

NQ = Path(__file__).resolve().parents[2] / "shared" / "data" / "nq" / "nq-open-oracle-dev.jsonl.gz"
PROMPT = (NQ.parent / "qa.prompt").read_text().strip()


def load_corpus(n: int) -> tuple[list[dict], dict[str, list[str]]]:
    """The first n gold passages (title, text) and the gold answers of their questions."""
    passages, answers = [], {}
    with gzip.open(NQ, "rt", encoding="utf-8") as f:
        for line, _ in zip(f, range(n)):
            row = json.loads(line)
            ctx = row["ctxs"][0]
            passages.append({"id": f"nq-{len(passages)}", "text": ctx["text"], "metadata": {"title": ctx["title"]}})
            answers[row["question"]] = row["answers"]
    return passages, answers


def build_index(passages: list[dict]):
    """A faiss inner-product index over normalised MiniLM embeddings (cosine similarity)."""
    import faiss

    model, resolved = load_embedder("minilm")
    cache = home() / "examples" / f"nq_{len(passages)}_{resolved.fingerprint}.npy"
    if cache.exists():
        vecs = np.load(cache)
    else:
        vecs = model.encode(
            [f"{p['metadata']['title']}: {p['text']}" for p in passages], batch_size=32, normalize_embeddings=True
        ).astype("float32")
        cache.parent.mkdir(parents=True, exist_ok=True)
        np.save(cache, vecs)
    index = faiss.IndexFlatIP(vecs.shape[1])
    index.add(vecs)
    return index, model


def retrieve(index, model, passages: list[dict], question: str, k: int) -> list[dict]:
    q = model.encode([question], normalize_embeddings=True).astype("float32")
    scores, ids = index.search(q, k)
    return [
        dict(passages[i], metadata={**passages[i]["metadata"], "similarity": round(float(s), 4)})
        for s, i in zip(scores[0], ids[0])
    ]


def answer(reader: str, context: str, question: str, max_new_tokens: int) -> tuple[str, int, float]:
    """Greedy answer from a local causal LM; returns (answer, prompt tokens, seconds)."""
    import torch

    model, tok, _ = load_causal_lm(reader)
    prompt = PROMPT.format(search_results=context, question=question)
    ids = tok.apply_chat_template(
        [{"role": "user", "content": prompt}], add_generation_prompt=True, return_tensors="pt", return_dict=True
    ).to(model.device)
    t0 = time.perf_counter()
    with torch.inference_mode():
        out = model.generate(
            **ids, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tok.pad_token_id or tok.eos_token_id
        )
    text = tok.decode(out[0, ids["input_ids"].shape[1] :], skip_special_tokens=True).strip()
    return text.split("\n")[0], int(ids["input_ids"].shape[1]), time.perf_counter() - t0


def format_docs(docs) -> str:
    return "\n".join(f"Document [{i}](Title: {d.metadata['title']}) {d.text}" for i, d in enumerate(docs, 1))


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--question", default="who got the first nobel prize in physics")
    p.add_argument("--passages", type=int, default=300, help="corpus size (gold passages of the first N questions)")
    p.add_argument("--k", type=int, default=10, help="documents retrieved")
    p.add_argument("--rate", type=float, default=0.25, help="fraction of tokens to keep")
    p.add_argument("--method", default="auto", help="compression method (auto = the engine's default)")
    p.add_argument("--order", choices=["original", "relevance"], default="relevance")
    p.add_argument("--reader", default="smollm2", help="smollm2 (default, fast) or qwen-1.5b")
    p.add_argument("--url", help="use a ctxgate sidecar at this URL instead of compressing in-process")
    p.add_argument("--max-new-tokens", type=int, default=32)
    p.add_argument("--compare", action="store_true", help="also answer from the uncompressed documents")
    args = p.parse_args(argv)

    t0 = time.perf_counter()
    passages, gold = load_corpus(args.passages)
    index, embedder = build_index(passages)
    t_index = time.perf_counter() - t0

    t0 = time.perf_counter()
    docs = retrieve(index, embedder, passages, args.question, args.k)
    t_retrieve = time.perf_counter() - t0

    rag = RAGCompressor(
        mode="remote" if args.url else "local",
        url=args.url,
        method=args.method,
        rate=args.rate,
        order=args.order,
        tokenizer=args.reader,
    )
    result: RAGResult = rag.compress(docs, question=args.question)
    reply, prompt_tokens, t_answer = answer(
        args.reader, format_docs(result.documents), args.question, args.max_new_tokens
    )

    print(f"question:   {args.question}")
    if args.question in gold:
        print(f"gold:       {' | '.join(gold[args.question])}")
    print(f"answer:     {reply}")
    print(
        f"retrieved:  {len(docs)} of {len(passages)} passages (index {t_index:.1f}s, search {t_retrieve * 1e3:.0f} ms)"
    )
    print(
        f"compressed: {result.original_tokens} -> {result.compressed_tokens} tokens ({result.ratio:.1f}x, "
        f"{result.tokenizer} tokenizer{', estimated' if result.tokens_estimated else ''}) by {result.method} "
        f"[{result.mode}] in {result.seconds:.2f}s; kept {len(result.documents)} documents, "
        f"dropped {len(result.dropped)}"
    )
    print(f"reader:     {args.reader}, {prompt_tokens} prompt tokens, answered in {t_answer:.1f}s")
    for w in result.warnings:
        print(f"warning:    {w}")
    if args.compare:
        full, full_tokens, t_full = answer(
            args.reader,
            format_docs(RAGCompressor(method="passthrough", rate=1.0).compress(docs).documents),
            args.question,
            args.max_new_tokens,
        )
        print(f"uncompressed answer: {full} ({full_tokens} prompt tokens, {t_full:.1f}s)")


if __name__ == "__main__":
    main()

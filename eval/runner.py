"""``run_eval(config) -> EvalResults``: the matrix of methods x rates over one dataset.

Every condition goes through ``Compressor.compress``. The full-prompt answer (``passthrough`` at
rate 1) is computed once per item and is the reference for fidelity. Rows stream to
``results.jsonl`` as they finish, item by item, so an interrupted run resumes where it stopped and
a method added later (``--resume --methods ...``) is filled in for the items already done.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec

from ctxgate.compressor import CtxgateError
from ctxgate.compressor.methods import AUTO_RATE_METHODS

from . import metrics
from ._types import AUTO_RATE, EvalConfig, Item, Row
from .datasets import load_dataset
from .datasets.tools import needed_kept, valid_json
from .readers import NO_READER, Ask, make_reader

log = logging.getLogger("ctxgate.eval")

FULL = ("passthrough", 1.0)
RESULTS = "results.jsonl"
CONFIG = "config.json"
MACHINE = "machine.json"
_SHORT_DTYPE = {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16"}


class EvalError(CtxgateError, ValueError):
    """A run cannot start as asked (one clear line)."""


@dataclass
class EvalResults:
    out: Path
    rows: list[Row]
    report: Path | None = None
    plots: list[Path] = field(default_factory=list)
    skipped_methods: dict[str, str] = field(default_factory=dict)
    new_rows: int = 0


def conditions(config: EvalConfig) -> list[tuple[str, float]]:
    """(method, rate) pairs, the full prompt first; passthrough only at rate 1."""
    out = [FULL]
    for m in config.methods:
        if m == "passthrough":
            continue
        out.extend((m, float(r)) for r in config.rates if r != AUTO_RATE or m in AUTO_RATE_METHODS)
    return list(dict.fromkeys(out))


def load_rows(path: Path) -> list[Row]:
    if not path.exists():
        return []
    rows = []
    dec = msgspec.json.Decoder(Row)
    for line in path.read_bytes().splitlines():
        if line.strip():
            try:
                rows.append(dec.decode(line))
            except msgspec.DecodeError:  # a line cut by a kill mid-write: redo that row
                continue
    return rows


def _check_out(config: EvalConfig, out: Path) -> None:
    """Refuse to mix runs: resuming needs the same dataset and reader."""
    cfg_path, res_path = out / CONFIG, out / RESULTS
    if res_path.exists() and res_path.stat().st_size and not config.resume:
        raise EvalError(f"{res_path} already has results; pass --resume to continue it or choose another --out")
    if cfg_path.exists() and config.resume:
        old = json.loads(cfg_path.read_text())
        for key in ("dataset", "reader", "reader_url", "seed", "tokenizer", "data_dir", "compress_options"):
            if old.get(key) != msgspec.to_builtins(config).get(key):
                raise EvalError(
                    f"{out} was run with {key}={old.get(key)!r}, not {getattr(config, key)!r}; use another --out"
                )
        was = old.get("batch", 1)  # runs from before --batch decoded one answer at a time
        if config.reader_url is None and was != config.batch:
            raise EvalError(
                f"{out} was run with --batch {was}, not {config.batch} (padded batches are not "
                f"bit-identical to one at a time); pass --batch {was} to continue it"
            )
        how = old.get("batching", "grouped")  # runs from before continuous batching
        if config.reader_url is None and was > 1 and how != config.batching:
            raise EvalError(
                f"{out} was decoded in {how} batches by an earlier ctxgate, and this one decodes in "
                f"{config.batching} batches (not bit-identical in bf16); use another --out"
            )


def load_sessions(out: Path) -> list[dict]:
    """Every session that ran rows into ``out``, oldest first, each with the row it started at.

    A long run is resumed across machines; the report must say which rows ran where. A file from
    before the history was kept is one session that started at row 0.
    """
    path = out / MACHINE
    if not path.exists():
        return []
    data = json.loads(path.read_text())
    sessions = data["sessions"] if isinstance(data, dict) and "sessions" in data else [data]
    return [{"first_row": 0, **s} if i == 0 else s for i, s in enumerate(sessions)]


def session_dtype(session: dict) -> str | None:
    """A session's precision; files from before ``compute_dtype`` only have the local reader's."""
    return session.get("compute_dtype") or session.get("dtype")


def compute_dtype() -> str:
    """The dtype the scorer and a local reader load in here (``CTXGATE_DTYPE`` or the CPU's)."""
    from ctxgate.compressor.models import pick_device, pick_dtype

    return str(pick_dtype(pick_device())).removeprefix("torch.")


def _check_dtype(out: Path, sessions: list[dict], dtype: str) -> None:
    """Refuse to resume in another precision: bf16 and fp32 rows are different experiments.

    The default dtype follows the CPU (bf16 where it is native), so resuming on another machine
    kind would otherwise switch precision silently, for the scorer and the reader both.
    """
    was = next((session_dtype(s) for s in sessions if session_dtype(s)), None)
    if was is not None and was != dtype:
        raise EvalError(
            f"{out} was run in {was} (scorer and reader); this machine would use {dtype}. "
            f"Set CTXGATE_DTYPE={_SHORT_DTYPE.get(was, was)} to continue it, or use another --out"
        )


def _save_config(config: EvalConfig, out: Path) -> None:
    cfg_path = out / CONFIG
    data = msgspec.to_builtins(config)
    commands = []
    if cfg_path.exists():
        commands = json.loads(cfg_path.read_text()).get("commands", [])
    if config.command and config.command not in commands:
        commands.append(config.command)
    data["commands"] = commands
    cfg_path.write_text(json.dumps(data, indent=2))


def _available(compressor, names: list[str]) -> tuple[list[str], dict[str, str]]:
    """Methods that load; the rest are skipped with their reason (e.g. not written yet)."""
    ok, skipped = [], {}
    for name in names:
        try:
            compressor.method(name)
            ok.append(name)
        except Exception as exc:  # ImportError, ModelNotPrepared, ...: report and go on
            skipped[name] = f"{type(exc).__name__}: {exc}".splitlines()[0][:200]
            log.warning("method %s skipped: %s", name, skipped[name])
    return ok, skipped


class _Fidelity:
    """MiniLM cosine between an answer and the full-prompt answer (loaded on first use)."""

    def __init__(self, embedder: str) -> None:
        self.embedder = embedder
        self._model = None

    def cosine(self, a: str, b: str) -> float:
        if not a.strip() or not b.strip():  # before the model loads: it is not needed for these
            return float(a.strip() == b.strip())
        if self._model is None:
            from ctxgate.compressor.models import load_embedder

            self._model = load_embedder(self.embedder)[0]
        return metrics.embedding_cosine(self._model, a, b)


def _rescore(out: Path, saved: dict) -> None:
    """Recompute each row's accuracy, metrics and agreement from its stored answer (after a metric
    fix), with the items reloaded as the run loaded them. The old file is kept as .bak."""
    items = load_dataset(
        saved["dataset"],
        limit=saved["limit"],
        seed=saved["seed"],
        data=saved.get("data_dir"),
        **saved.get("dataset_options", {}),
    )
    by_id = {it.id: it for it in items}
    path = out / RESULTS
    rows = load_rows(path)
    missing = sorted({r.item for r in rows} - set(by_id))
    if missing:
        raise EvalError(
            f"--rescore: {len(missing)} items of {path} are not in the dataset as configured (first: {missing[0]})"
        )
    fixed = []
    for r in rows:
        task = by_id[r.item].task  # the dataset's task now: a fix may be to which metric applies
        acc, scores = metrics.score(task, r.prediction, by_id[r.item].references)
        f1, em = metrics.agreement(r.prediction, r.reference_answer, task)
        fixed.append(
            msgspec.structs.replace(r, task=task, accuracy=acc, metrics=scores, fidelity_f1=f1, fidelity_em=em)
        )
    changed = sum(a.accuracy != b.accuracy or a.fidelity_em != b.fidelity_em for a, b in zip(rows, fixed))
    path.replace(path.with_name(RESULTS + ".bak"))
    path.write_bytes(b"".join(msgspec.json.encode(r) + b"\n" for r in fixed))
    log.warning("rescored %d rows of %s: %d changed accuracy or agreement", len(rows), path, changed)


def _compress(item: Item, method: str, rate: float, compressor, extra: dict[str, Any] | None = None):
    options = {"separator": item.separator} if isinstance(item.context, list) else {}
    options.update(extra or {})
    return compressor.compress(
        context=item.context,
        question=item.compression_question,
        rate="auto" if rate == AUTO_RATE else rate,
        method=method,
        options=options,
    )


def _row(
    item: Item, method: str, rate: float, result, ans, reader_name: str, reference: Row | None, fidelity: _Fidelity
) -> Row:
    answered = reader_name != NO_READER
    acc, scores = metrics.score(item.task, ans.text, item.references) if answered else (None, {})
    kept = metrics.kept(item.task, result.compressed, item.references)
    if item.meta.get("needed"):  # a tool output: one string, checked the way ``ctxgate bench tools`` does
        need = needed_kept(item, result.compressed)
        scores["needed_kept"] = need
        if item.meta["needed"] == "supports":
            scores["supports_kept"] = need
        elif item.meta["needed"] == "lines":
            kept = need
        if item.meta.get("json"):
            scores["valid_json"] = float(valid_json(result.compressed))
    elif item.meta.get("supports"):
        scores["supports_kept"] = metrics.supports_kept(item.meta["supports"], [d.text for d in result.documents])
    ref_text = ans.text if reference is None else reference.prediction
    f1: float | None
    em: float | None
    cos: float | None
    if not answered:
        f1 = em = cos = None
    else:
        f1, em = metrics.agreement(ans.text, ref_text, item.task)
        if item.task in ("qa", "squad", "kv"):
            cos = fidelity.cosine(metrics.first_line(ans.text), metrics.first_line(ref_text))
        else:
            cos = fidelity.cosine(ans.text, ref_text)
    return Row(
        dataset=item.dataset,
        item=item.id,
        method=method,
        rate=rate,
        task=item.task,
        reader=reader_name,
        prediction=ans.text,
        reference_answer=ref_text,
        accuracy=acc,
        metrics=scores,
        fidelity_cosine=cos,
        fidelity_f1=f1,
        fidelity_em=em,
        answer_kept=kept,
        original_tokens=result.original_tokens,
        compressed_tokens=result.compressed_tokens,
        ratio=result.ratio,
        prompt_tokens=ans.prompt_tokens,
        new_tokens=ans.new_tokens,
        hit_cap=ans.hit_cap,
        compress_seconds=result.seconds,
        compress_cache=result.cache,
        reader_seconds=ans.seconds,
        reader_batch=ans.batch,
        warnings=list(result.warnings),
    )


# a chunk (compressed, then answered, then written) holds whole items up to this many batches' worth
# of conditions: the reader's continuous batching keeps its batch full until a chunk's queue runs dry
CHUNK_BATCHES = 4


def _chunks(todo: list, size: int) -> list[list]:
    """Consecutive runs of at most ``CHUNK_BATCHES * size`` conditions, whole items where they fit.

    An item's full prompt comes first in ``todo``, so the rows of an item can take their fidelity
    reference from the same chunk; an item larger than a chunk spans several.
    """
    size = CHUNK_BATCHES * max(1, size)
    per_item = Counter(item.id for item, _, _ in todo)
    chunks: list[list] = []
    for entry in todo:
        same_item = chunks and chunks[-1][-1][0].id == entry[0].id
        if chunks and len(chunks[-1]) < size and (same_item or len(chunks[-1]) + per_item[entry[0].id] <= size):
            chunks[-1].append(entry)
        else:
            chunks.append([entry])
    return chunks


def run_eval(config: EvalConfig) -> EvalResults:
    """Run (or resume) the matrix, then write report.md and the plots."""
    from ctxgate.compressor import Compressor, MemoryCache

    out = Path(config.out)
    if config.report_only:
        if not (out / RESULTS).exists():
            raise EvalError(f"{out / RESULTS} not found; nothing to report")
        if (out / CONFIG).exists():  # describe the run as it was made, not this command's defaults
            saved = json.loads((out / CONFIG).read_text())
            config = msgspec.structs.replace(
                config,
                **{k: saved[k] for k in ("dataset", "methods", "reader", "scorer", "embedder") if k in saved},
                batch=saved.get("batch", 1),
                batching=saved.get("batching", "grouped"),
            )
            if config.rescore:
                _rescore(out, saved)
        elif config.rescore:
            raise EvalError(f"{out / CONFIG} not found; --rescore needs it to reload the items")
        rows = [r for r in load_rows(out / RESULTS) if r.error is None]
        results = EvalResults(out=out, rows=rows)
        from .report import write_report

        results.report, results.plots = write_report(out, config, rows, plots=config.plots)
        return results
    out.mkdir(parents=True, exist_ok=True)
    _check_out(config, out)
    sessions = load_sessions(out)
    dtype = compute_dtype()
    _check_dtype(out, sessions, dtype)
    items = load_dataset(
        config.dataset, limit=config.limit, seed=config.seed, data=config.data_dir, **config.dataset_options
    )
    _save_config(config, out)
    res_path = out / RESULTS
    rows = load_rows(res_path)
    done = {r.key: r for r in rows if r.error is None}
    wanted = conditions(config)
    todo = [(it, m, r) for it in items for (m, r) in wanted if (it.id, m, round(r, 6)) not in done]
    skipped: dict[str, str] = {}
    new_rows = 0
    if todo:
        reader = make_reader(config.reader, config.reader_url, config.reader_api_key)
        reader_name = reader.name
        local = config.reader_url is None and reader_name != NO_READER
        tokenizer = config.tokenizer or (reader_name if local else "smollm2")
        # the cache only hits where items share a context compressed the same way (GSM8K's demos,
        # which are not compressed question-aware): one compression serves every question, as in use
        compressor = Compressor(
            scorer=config.scorer,
            embedder=config.embedder,
            student=config.student,
            tokenizer=tokenizer,
            default_method="passthrough",
            cache=MemoryCache(256),
        )
        ok, skipped = _available(compressor, list(dict.fromkeys(m for m, _ in wanted)))
        todo = [t for t in todo if t[1] in ok]
        fidelity = _Fidelity(config.embedder)
        # written before the first row, so a run killed mid-way still says where its rows ran
        sessions.append({**machine_info(), **reader.describe(), "compute_dtype": dtype, "first_row": len(rows)})
        _write_sessions(out, sessions)
        bar = _progress(len(todo), config.progress)
        size = config.batch if config.reader_url is None else 1
        with res_path.open("ab") as sink:
            for chunk in _chunks(todo, size):
                results = [
                    _compress(item, method, rate, compressor, config.compress_options) for item, method, rate in chunk
                ]
                asks = [
                    Ask(
                        item.system,
                        item.prompt(res.compressed),
                        config.max_new_tokens or item.max_new_tokens,
                        item.stop,
                    )
                    for (item, _, _), res in zip(chunk, results)
                ]
                answers = reader.answer_many(asks, size)
                for (item, method, rate), res, ans in zip(chunk, results, answers):
                    row = _row(item, method, rate, res, ans, reader_name, done.get((item.id, *FULL)), fidelity)
                    sink.write(msgspec.json.encode(row) + b"\n")
                    sink.flush()
                    done[row.key] = row
                    rows.append(row)
                    new_rows += 1
                    bar.set_postfix_str(f"{method}@{rate:g} acc={row.accuracy}", refresh=False)
                    bar.update(1)
        bar.close()
        if hasattr(reader, "close"):
            reader.close()
        sessions[-1]["peak_rss_mib"] = str(_peak_rss_mib())
        _write_sessions(out, sessions)
    results = EvalResults(out=out, rows=[r for r in done.values()], skipped_methods=skipped, new_rows=new_rows)
    from .report import write_report

    results.report, results.plots = write_report(out, config, results.rows, skipped, plots=config.plots)
    return results


def _write_sessions(out: Path, sessions: list[dict]) -> None:
    (out / MACHINE).write_text(json.dumps({"sessions": sessions}, indent=2))


def _progress(total: int, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, desc="eval", unit="run", disable=not enabled, file=sys.stderr, smoothing=0.1)


def _peak_rss_mib() -> int:
    import resource

    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)


def machine_info() -> dict[str, str]:
    """What the numbers were measured on; they mean little without it."""
    import platform

    cpu = platform.processor() or ""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
            f.seek(0)
            flags = next((ln for ln in f if ln.startswith("flags")), "")
    except OSError:
        flags = ""
    simd = [f for f in ("avx512_bf16", "amx_bf16", "avx512f", "avx2") if f in flags.split()]
    info = {
        "cpu": cpu,
        "cores": str(os.cpu_count()),
        "simd": ",".join(simd) or "?",
        "python": platform.python_version(),
        "date": time.strftime("%Y-%m-%d %H:%M"),
    }
    try:
        import torch
        import transformers

        info["torch"] = torch.__version__
        info["transformers"] = transformers.__version__
        info["torch_threads"] = str(torch.get_num_threads())
        info["cuda"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
    except ImportError:
        pass
    return info

"""report.md and plots from results.jsonl: one table per dataset, method x rate.

Each row also shows the full prompt's accuracy on the *same items*, so rows with different n (a
method added later, a run stopped early) are still compared fairly.
"""

from __future__ import annotations

import json
import math
import statistics
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from ._types import AUTO_RATE, EvalConfig, Row
from .runner import RESULTS, load_rows, load_sessions, session_dtype

HEADLINE = {
    "qa": "subspan EM",
    "squad": "F1",
    "math": "final-number acc",
    "summary": "ROUGE-L",
    "kv": "exact value",
    "facts": "all facts named",
    "fidelity": "(no reference)",
}


@dataclass
class Cell:
    dataset: str
    method: str
    rate: float
    n: int
    accuracy: float | None
    accuracy_ci: float | None
    full_same_items: float | None
    fidelity_cosine: float | None
    fidelity_f1: float | None
    fidelity_em: float | None
    kept: float | None
    ratio: float
    prompt_tokens: float
    compress_s: float
    reader_s: float
    cap_hits: int
    cache_hits: int = 0
    supports_kept: float | None = None  # multi-hop datasets: both hops survived
    valid_json: float | None = None  # JSON tool outputs: the compressed output still parses


def _mean(xs: list[float | None]) -> float | None:
    vals = [x for x in xs if x is not None]
    return sum(vals) / len(vals) if vals else None


def _ci(xs: list[float | None]) -> float | None:
    """Half-width of a normal-approximation 95% interval of the mean."""
    vals = [x for x in xs if x is not None]
    if len(vals) < 2:
        return None
    return 1.96 * statistics.stdev(vals) / math.sqrt(len(vals))


def aggregate(rows: list[Row], method_order: list[str] | None = None) -> list[Cell]:
    groups: dict[tuple[str, str, float], list[Row]] = defaultdict(list)
    full: dict[tuple[str, str], Row] = {}
    for r in rows:
        if r.error is not None:
            continue
        groups[(r.dataset, r.method, round(r.rate, 6))].append(r)
        if r.method == "passthrough" and r.rate == 1.0:
            full[(r.dataset, r.item)] = r
    order = {m: i for i, m in enumerate(["passthrough", *(method_order or [])])}
    cells = []
    for (ds, method, rate), rs in sorted(
        groups.items(), key=lambda kv: (kv[0][0], order.get(kv[0][1], 99), kv[0][1], -kv[0][2])
    ):
        same = [full[(ds, r.item)].accuracy for r in rs if (ds, r.item) in full]
        orig, comp = sum(r.original_tokens for r in rs), sum(r.compressed_tokens for r in rs)
        cells.append(
            Cell(
                dataset=ds,
                method=method,
                rate=rate,
                n=len(rs),
                accuracy=_mean([r.accuracy for r in rs]),
                accuracy_ci=_ci([r.accuracy for r in rs]),
                full_same_items=_mean(same),
                fidelity_cosine=_mean([r.fidelity_cosine for r in rs]),
                fidelity_f1=_mean([r.fidelity_f1 for r in rs]),
                fidelity_em=_mean([r.fidelity_em for r in rs]),
                kept=_mean([r.answer_kept for r in rs]),
                ratio=orig / comp if comp else 1.0,
                prompt_tokens=statistics.mean(r.prompt_tokens for r in rs),
                # medians: wall-clock times include anything that paused or starved the run (another job,
                # a suspended process), and one such item would skew a mean
                compress_s=statistics.median(r.compress_seconds for r in rs),
                reader_s=statistics.median(r.reader_seconds for r in rs),
                cap_hits=sum(r.hit_cap for r in rs),
                cache_hits=sum(r.compress_cache == "hit" for r in rs),
                supports_kept=_mean([r.metrics.get("supports_kept") for r in rs]),
                valid_json=_mean([r.metrics.get("valid_json") for r in rs]),
            )
        )
    return cells


def _f(x: float | None, digits: int = 3) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


def table(cells: list[Cell]) -> str:
    """A Markdown table for the cells of one dataset."""
    task_metric = "accuracy"
    hops = any(c.supports_kept is not None for c in cells)
    js = any(c.valid_json is not None for c in cells)
    lines = [
        f"| method | rate | n | {task_metric} (±95%) | full prompt, same items | fidelity cos | fidelity F1 "
        "| agrees w/ full | answer kept |"
        + (" both hops kept |" if hops else "")
        + (" valid JSON |" if js else "")
        + " achieved ratio | prompt tok | compress s p50 | reader s p50 | cap hits |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|" + ("---|" if hops else "") + ("---|" if js else ""),
    ]
    for c in cells:
        acc = "-" if c.accuracy is None else f"{c.accuracy:.3f}" + (f" ±{c.accuracy_ci:.2f}" if c.accuracy_ci else "")
        lines.append(
            f"| {'full prompt' if c.method == 'passthrough' else c.method} | {_rate(c.rate)} | {c.n} | {acc} "
            f"| {_f(c.full_same_items)} | {_f(c.fidelity_cosine)} | {_f(c.fidelity_f1)} | {_f(c.fidelity_em)} "
            f"| {_f(c.kept, 2)} |"
            + (f" {_f(c.supports_kept, 2)} |" if hops else "")
            + (f" {_f(c.valid_json, 2)} |" if js else "")
            + f" {c.ratio:.2f}x | {c.prompt_tokens:.0f} | {c.compress_s:.2f}"
            + (f" ({c.cache_hits} cached)" if c.cache_hits else "")
            + f" | {c.reader_s:.2f} "
            f"| {c.cap_hits}/{c.n} |"
        )
    return "\n".join(lines)


def write_report(
    out: Path, config: EvalConfig, rows: list[Row], skipped: dict[str, str] | None = None, *, plots: bool = True
) -> tuple[Path, list[Path]]:
    cells = aggregate(rows, config.methods)
    sessions = _sessions_with_rows(out)
    machine = sessions[-1] if sessions else {}
    commands = []
    if (out / "config.json").exists():
        commands = json.loads((out / "config.json").read_text()).get("commands", [])
    tasks = {r.dataset: r.task for r in rows}
    parts = [f"# ctxgate eval: {', '.join(sorted(tasks)) or config.dataset}", ""]
    parts += [
        "Commands (first run, then resumes):",
        "",
        "```",
        *(commands or [config.command or "(library call)"]),
        "```",
        "",
    ]
    parts += [
        f"Reader: {machine.get('reader', config.reader)} ({machine.get('reader_kind', '?')}"
        + (
            f", {machine['reader_url']}"
            if machine.get("reader_url")
            else f", device {machine.get('device', '?')}, dtype {machine.get('dtype', '?')}"
        )
        + "), greedy. "
        f"Scorer: {config.scorer}; embedder: {config.embedder}.",
        *_machine_lines(sessions),
        "",
        "Columns: accuracy is the task's headline metric; `full prompt, same items` is the uncompressed "
        "accuracy on exactly this row's items; fidelity compares each answer with the same reader's "
        "full-prompt answer (MiniLM cosine, token F1, normalized agreement); answer kept = the gold string "
        "is still in the compressed context; achieved ratio = sum of original / sum of compressed context "
        "tokens; cap hits = answers that hit the max-new-tokens limit without stopping.",
        "",
    ]
    batched = sorted(r.reader_batch for r in rows if r.reader_batch > 1)
    if batched and config.batching == "continuous":
        parts += [
            f"{len(batched)} of {len(rows)} answers were decoded with continuous batching (`--batch "
            f"{config.batch}`: up to {config.batch} at once, a finished answer's place taken by the next prompt; "
            f"median {batched[len(batched) // 2]} rows per step): reader seconds are each answer's share of "
            "the steps and the prefill it took part in.",
            "",
        ]
    elif batched:
        parts += [
            f"{len(batched)} of {len(rows)} answers were decoded in batches (`--batch`, prompts of similar "
            f"length together; median {batched[len(batched) // 2]} per generate call): their reader seconds "
            "are the batch's time divided by its size.",
            "",
        ]
    if skipped:
        parts += ["Skipped methods: " + "; ".join(f"`{m}` ({why})" for m, why in skipped.items()), ""]
    for ds in sorted({c.dataset for c in cells}):
        parts += [
            f"## {ds} ({HEADLINE.get(tasks.get(ds, ''), '?')})",
            "",
            table([c for c in cells if c.dataset == ds]),
            "",
        ]
    errors = [r for r in rows if r.error]
    if errors:
        parts += [f"{len(errors)} rows failed; first: {errors[0].error}", ""]
    images = _plots(out, cells, tasks) if plots else []
    parts += [f"![{p.stem}]({p.name})" for p in images]
    report = out / "report.md"
    report.write_text("\n".join(parts) + "\n")
    return report, images


def _sessions_with_rows(out: Path) -> list[dict]:
    """The sessions that added rows, each with its ``last_row`` (sessions killed before a row drop out)."""
    sessions = load_sessions(out)
    total = len(load_rows(out / RESULTS))
    kept = []
    for i, s in enumerate(sessions):
        end = sessions[i + 1]["first_row"] if i + 1 < len(sessions) else total
        if end > s["first_row"]:
            kept.append({**s, "last_row": end - 1})
    return kept


def _machine(m: dict) -> str:
    return (
        f"{m.get('cpu', '?')}, {m.get('cores', '?')} cores ({m.get('simd', '?')}), torch {m.get('torch', '?')}, "
        f"transformers {m.get('transformers', '?')}, {session_dtype(m) or '?'}, "
        f"peak RSS {m.get('peak_rss_mib', '?')} MiB, {m.get('date', '')}"
    )


def _machine_lines(sessions: list[dict]) -> list[str]:
    """One line for a run made in one go; for a resumed run, which rows ran on which machine."""
    merged: list[dict] = []
    for s in sessions:  # resumed on the same kind of machine: one range, the latest date
        if merged and _same_machine(merged[-1], s):
            merged[-1] = {**s, "first_row": merged[-1]["first_row"]}
        else:
            merged.append(s)
    if len(merged) <= 1:
        return [f"Machine: {_machine(merged[0]) if merged else '?'}."]
    lines = ["Machines (the run was resumed; rows of results.jsonl counted from 1):", ""]
    lines += [f"- rows {s['first_row'] + 1}-{s['last_row'] + 1}: {_machine(s)}" for s in merged]
    return lines


def _same_machine(a: dict, b: dict) -> bool:
    keys = ("cpu", "cores", "simd", "torch", "transformers", "device", "cuda")
    return all(a.get(k) == b.get(k) for k in keys) and session_dtype(a) == session_dtype(b)


def _plots(out: Path, cells: list[Cell], tasks: dict[str, str]) -> list[Path]:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return []
    paths = []
    for ds in sorted({c.dataset for c in cells}):
        cs = [c for c in cells if c.dataset == ds]
        use_fidelity = tasks.get(ds) == "fidelity"
        y = (lambda c: c.fidelity_cosine) if use_fidelity else (lambda c: c.accuracy)
        fig, ax = plt.subplots(figsize=(6.4, 4.2))
        for method in dict.fromkeys(c.method for c in cs):
            mc = sorted((c for c in cs if c.method == method), key=lambda c: c.ratio)
            if method == "passthrough":
                if y(mc[0]) is not None:
                    ax.axhline(y(mc[0]), ls="--", color="gray", label=f"full prompt (n={mc[0].n})")
                continue
            ax.plot([c.ratio for c in mc], [y(c) for c in mc], marker="o", label=method)
        ax.set_xscale("log")
        ticks = [
            t for t in (1, 2, 4, 10, 20, 50) if min(c.ratio for c in cs) / 1.5 <= t <= max(c.ratio for c in cs) * 1.5
        ]
        ax.set_xticks(ticks, [f"{t}x" for t in ticks])
        ax.minorticks_off()
        ax.set_xlabel("achieved compression ratio (x)")
        ax.set_ylabel("fidelity to full-prompt answer (cosine)" if use_fidelity else "accuracy")
        ax.set_title(f"{ds}: {'fidelity' if use_fidelity else 'accuracy'} vs compression")
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
        fig.tight_layout()
        p = out / f"{ds}_accuracy_vs_ratio.png"
        fig.savefig(p, dpi=110)
        plt.close(fig)
        paths.append(p)

        fig, ax = plt.subplots(figsize=(6.4, 0.4 * len(cs) + 1.5))
        labels = ["full prompt" if c.method == "passthrough" else f"{c.method}@{_rate(c.rate)}" for c in cs]
        comp = [c.compress_s for c in cs]
        read = [c.reader_s for c in cs]
        ax.barh(labels, comp, label="compress")
        ax.barh(labels, read, left=comp, label="reader")
        ax.invert_yaxis()
        ax.set_xlabel("seconds per item (median)")
        ax.set_title(f"{ds}: latency breakdown")
        ax.legend(fontsize=8)
        fig.tight_layout()
        p = out / f"{ds}_latency.png"
        fig.savefig(p, dpi=110)
        plt.close(fig)
        paths.append(p)
    return paths


def _rate(rate: float) -> str:
    return "auto" if rate == AUTO_RATE else f"{rate:g}"

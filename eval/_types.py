"""Typed eval structures: what a dataset yields, what a run is asked to do, what one row records.

msgspec Structs so that rows stream to ``results.jsonl`` and read back without a second schema.
"""

from __future__ import annotations

from typing import Any, Literal

import msgspec

# The first line with content, then its newline: short-answer QA stops there.
FIRST_LINE = r"\S[^\n]*\n"

# Which metric family scores an item; "fidelity" means no reference: compare to the full-prompt answer.
Task = Literal["qa", "squad", "math", "summary", "kv", "fidelity"]

# ``--rates auto``: rows store rate 0, which no numeric rate can be; the method chose the size
AUTO_RATE = 0.0

CONTEXT_SLOT = "{context}"
QUESTION_SLOT = "{question}"


class Item(msgspec.Struct, kw_only=True):
    """One eval example.

    ``context`` is the compressible part: a list of documents (RAG) or one text. ``template`` holds
    ``{context}`` and ``{question}`` slots; everything else in it is kept verbatim. ``question`` is
    also given to question-aware compressors (``compress_question`` can override it, e.g. empty for
    GSM8K, whose demonstrations do not depend on the test question).
    """

    id: str
    dataset: str
    task: Task
    context: str | list[str]
    question: str
    template: str
    references: list[str] = msgspec.field(default_factory=list)
    compress_question: str | None = None
    system: str | None = None
    separator: str = "\n\n"
    max_new_tokens: int = 64
    stop: list[str] = msgspec.field(default_factory=list)  # regexes on the generated text
    meta: dict[str, Any] = msgspec.field(default_factory=dict)

    def prompt(self, context: str) -> str:
        """The reader prompt with ``context`` (compressed or not) in place; no str.format, because
        documents contain braces."""
        return self.template.replace(CONTEXT_SLOT, context).replace(QUESTION_SLOT, self.question)

    def full_context(self) -> str:
        return self.context if isinstance(self.context, str) else self.separator.join(self.context)

    @property
    def compression_question(self) -> str | None:
        """What question-aware compressors see: None when the item says compression is not
        question-aware (``compress_question=""``)."""
        q = self.question if self.compress_question is None else self.compress_question
        return q or None


class EvalConfig(msgspec.Struct, kw_only=True):
    """Everything a run depends on; ``run_eval(config)`` takes exactly this."""

    dataset: str = "nq20"
    limit: int = 25
    seed: int = 0
    data_dir: str | None = None
    # the CLI's default matrix too; longllmlingua and random on request (longllmlingua costs ~4x the rest on CPU)
    methods: list[str] = msgspec.field(default_factory=lambda: ["hybrid", "extractive", "truncate"])
    rates: list[float] = msgspec.field(default_factory=lambda: [0.25, 0.1])
    reader: str = "qwen-1.5b"
    reader_url: str | None = None
    reader_api_key: str | None = None
    max_new_tokens: int | None = None  # None: the dataset's own default
    batch: int = 8  # answers decoded at once (local readers); 1: one at a time
    # "continuous": a finished answer's place is taken by the next prompt (eval._batching);
    # "grouped": fixed batches of similar-length prompts per generate call (runs before continuous)
    batching: str = "continuous"
    tokenizer: str | None = None  # token accounting; None: the reader's (or smollm2 for URLs)
    scorer: str = "smollm2"
    embedder: str = "minilm"
    student: str = "student"
    out: str = "eval-results/run"
    resume: bool = True
    report_only: bool = False  # rebuild report.md and plots from results.jsonl, run nothing
    rescore: bool = False  # with report_only: recompute the metrics from the stored answers
    plots: bool = True
    progress: bool = True
    command: str = ""  # the exact command line, for the report
    dataset_options: dict[str, Any] = msgspec.field(default_factory=dict)
    compress_options: dict[str, Any] = msgspec.field(default_factory=dict)  # e.g. multi_hop=false


class Row(msgspec.Struct, kw_only=True, omit_defaults=False):
    """One (item, method, rate) result, as streamed to results.jsonl."""

    dataset: str
    item: str
    method: str
    rate: float
    task: str
    reader: str
    prediction: str
    reference_answer: str  # the full-prompt answer of the same reader
    accuracy: float | None  # task metric (None: no reference, e.g. arxiv)
    metrics: dict[str, float] = msgspec.field(default_factory=dict)
    fidelity_cosine: float | None = None
    fidelity_f1: float | None = None
    fidelity_em: float | None = None
    answer_kept: float | None = None
    original_tokens: int = 0
    compressed_tokens: int = 0
    ratio: float = 1.0
    prompt_tokens: int = 0
    new_tokens: int = 0
    hit_cap: bool = False
    compress_seconds: float = 0.0
    compress_cache: str = "off"  # "hit" when the same context was compressed before (GSM8K demos)
    reader_seconds: float = 0.0  # in a batch: its share of each step (and prefill) it took part in
    reader_batch: int = 1  # answers decoded together: mean rows per step (grouped: per call)
    error: str | None = None
    warnings: list[str] = msgspec.field(default_factory=list)

    @property
    def key(self) -> tuple[str, str, float]:
        return (self.item, self.method, round(self.rate, 6))

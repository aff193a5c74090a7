"""GSM8K with the 8-shot chain-of-thought prompt that LLMLingua compresses 20x.

Only the demonstrations are compressed; the test question is appended verbatim. As in LLMLingua's
GSM8K setup, the eight demonstrations go to the compressor as a list (split on blank lines, joined
back the same way, so the uncompressed prompt is byte for byte the file), and compression is not
question-aware, so one compressed prompt serves every question.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .._types import Item
from ._common import data_file, read_jsonl, sample

PROMPT = "gsm8k/cot_prompts/prompt_hardest.txt"
TEST = "gsm8k/test.jsonl"
DEMO_SEPARATOR = "\n\n"
TEMPLATE = "{context}\n\nQuestion: {question}\nLet's think step by step\n"
SYSTEM = "Solve the last question step by step, like the worked examples, and end with a line 'The answer is N'."
# stop once the final answer line is complete, or when the model starts a new question
STOP = [r"The answer is[^\n]*\d[^\n]*\n", r"\n\s*Question:"]


def reference_number(answer: str) -> str:
    """GSM8K answers end with '#### N'."""
    return answer.rsplit("####", 1)[-1].strip().replace(",", "")


def load_gsm8k(root: Path, limit: int | None, seed: int, *, prompt: str = PROMPT, **_: Any) -> list[Item]:
    demos = data_file(root, prompt).read_text(encoding="utf-8").strip().split(DEMO_SEPARATOR)
    rows = list(read_jsonl(data_file(root, TEST)))
    out = []
    for idx, row in sample(list(enumerate(rows)), limit, seed):
        out.append(
            Item(
                id=f"gsm8k-{idx}",
                dataset="gsm8k",
                task="math",
                context=list(demos),
                separator=DEMO_SEPARATOR,
                question=row["question"],
                compress_question="",
                template=TEMPLATE,
                references=[reference_number(row["answer"])],
                system=SYSTEM,
                max_new_tokens=320,
                stop=STOP,
            )
        )
    return out

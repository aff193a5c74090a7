"""Embedded models from PyPI, HF ids and local paths; SHA-256 checks; device choice."""

from ._cache import home, model_dir, models_dir, offline_env
from ._device import bf16_is_fast, cpu_prefers_bf16, pick_device, pick_dtype
from ._load import (
    LoadedStudent,
    ResolvedModel,
    clear_loaded,
    load_causal_lm,
    load_embedder,
    load_student,
    load_tokenizer,
    rerank_precision,
    resolve,
    student_file,
    verify_student,
)
from ._prepare import is_prepared, missing_packages, prepare, sha256_file, verify
from ._registry import ALIASES, MODELS, STUDENTS, ModelSpec, StudentSpec, lookup

__all__ = [
    "ALIASES",
    "MODELS",
    "STUDENTS",
    "LoadedStudent",
    "ModelSpec",
    "ResolvedModel",
    "StudentSpec",
    "clear_loaded",
    "bf16_is_fast",
    "cpu_prefers_bf16",
    "home",
    "is_prepared",
    "load_causal_lm",
    "load_embedder",
    "load_student",
    "load_tokenizer",
    "lookup",
    "rerank_precision",
    "missing_packages",
    "model_dir",
    "models_dir",
    "offline_env",
    "pick_device",
    "pick_dtype",
    "prepare",
    "resolve",
    "sha256_file",
    "student_file",
    "verify",
    "verify_student",
]

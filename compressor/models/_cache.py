"""Where things live. State (caches, the fidelity store) goes under the runtime's ``home``
(``$CTXGATE_HOME``, default ``~/.cache/ctxgate``); prepared models under its ``models``
(``$CTXGATE_MODELS``, default ``$CTXGATE_HOME/models``), so that a deployment can keep read-only
models and writable state apart, and tests can give each test its own state over one shared
model cache."""

from __future__ import annotations

import os
from pathlib import Path

from .._runtime import runtime

MANIFEST = "ctxgate-model.json"


def home() -> Path:
    return runtime().home


def models_dir() -> Path:
    return runtime().models


def model_dir(name: str) -> Path:
    return models_dir() / name


def offline_env() -> None:
    """Keep Hugging Face libraries inside our cache and off the network unless asked otherwise.

    Users who do have the Hub set ``CTXGATE_ALLOW_HUB=1`` (or HF_HUB_OFFLINE=0 themselves).
    """
    os.environ.setdefault("HF_HOME", str(home() / "hf"))
    if not runtime().allow_hub:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

"""Where things live. State (caches, the fidelity store) goes under ``$CTXGATE_HOME`` (default
``~/.cache/ctxgate``); prepared models under ``$CTXGATE_MODELS`` (default ``$CTXGATE_HOME/models``),
so that a deployment can keep read-only models and writable state apart, and tests can give each
test its own state over one shared model cache."""

from __future__ import annotations

import os
from pathlib import Path

MANIFEST = "ctxgate-model.json"


def home() -> Path:
    return Path(os.environ.get("CTXGATE_HOME") or Path.home() / ".cache" / "ctxgate").expanduser()


def models_dir() -> Path:
    explicit = os.environ.get("CTXGATE_MODELS")
    return Path(explicit).expanduser() if explicit else home() / "models"


def model_dir(name: str) -> Path:
    return models_dir() / name


def offline_env() -> None:
    """Keep Hugging Face libraries inside our cache and off the network unless asked otherwise.

    Users who do have the Hub set ``CTXGATE_ALLOW_HUB=1`` (or HF_HUB_OFFLINE=0 themselves).
    """
    os.environ.setdefault("HF_HOME", str(home() / "hf"))
    if os.environ.get("CTXGATE_ALLOW_HUB", "") not in ("1", "true", "yes"):
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

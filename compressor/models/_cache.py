"""Where prepared models live: ``$CTXGATE_HOME/models`` (default ``~/.cache/ctxgate``)."""

from __future__ import annotations

import os
from pathlib import Path

MANIFEST = "ctxgate-model.json"


def home() -> Path:
    return Path(os.environ.get("CTXGATE_HOME") or Path.home() / ".cache" / "ctxgate").expanduser()


def models_dir() -> Path:
    return home() / "models"


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

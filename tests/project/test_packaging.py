"""The installed wheel: one top-level name (``ctxgate``), its data files, and imports that do not
collide with an application's own ``service`` or ``eval`` package. Built and installed for real
(``pip wheel``, then ``pip install --target``, not editable), imported from another directory."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile

from tests.helpers.data import ROOT

_PROBE = r"""
import json, sys
# the checkout's editable install must not answer for ctxgate: only the target directory may
sys.meta_path[:] = [f for f in sys.meta_path if "editable" not in type(f).__module__.lower()]
import service, eval as app_eval  # the application's own packages
import ctxgate, ctxgate.compressor, ctxgate.service, ctxgate.eval
from ctxgate.compressor import Compressor
from ctxgate.compressor.models import student_file
from importlib.resources import files
out = Compressor(default_method="truncate").compress(context="one two three four five six seven eight", rate=0.5, tokenizer="estimate")
print(json.dumps({
    "app_service": service.WHO, "app_eval": app_eval.WHO,
    "files": {m.__name__: m.__file__ for m in (ctxgate, ctxgate.compressor, ctxgate.service, ctxgate.eval)},
    "student": str(student_file("student")[0]),
    "static": files("ctxgate.service").joinpath("static").is_dir(),
    "example": files("ctxgate.service").joinpath("ctxgate.example.yaml").is_file(),
    "compressed": out.compressed,
}))
"""


def test_the_wheel_installs_one_namespace_and_imports_beside_an_apps_own_service_package(tmp_path):
    dist = tmp_path / "dist"
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", str(ROOT), "--no-deps", "--no-build-isolation", "-q", "-w", str(dist)],
        capture_output=True,
        text=True,
        env={**os.environ, "PIP_NO_INDEX": "1"},
    )
    assert build.returncode == 0, build.stderr[-2000:]
    (wheel,) = dist.glob("ctxgate-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/", 1)[0] for n in names if not n.split("/", 1)[0].endswith(".dist-info")}
    assert tops == {"ctxgate"}, tops  # no bare compressor/, service/ or eval/
    for data in ("ctxgate/compressor/models/weights/student-v2.safetensors", "ctxgate/service/ctxgate.example.yaml"):
        assert data in names, data
    assert any(n.startswith("ctxgate/service/static/") for n in names)
    assert not any(n.startswith("ctxgate/tests/") or "/tests/" in n for n in names)

    site = tmp_path / "site"
    install = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "--no-index", "-q", "--target", str(site), str(wheel)],
        capture_output=True,
        text=True,
    )
    assert install.returncode == 0, install.stderr[-2000:]

    app = tmp_path / "app"  # an application with packages named like our folders
    for pkg in ("service", "eval"):
        (app / pkg).mkdir(parents=True)
        (app / pkg / "__init__.py").write_text(f"WHO = 'the app {pkg}'\n")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PYTHONPATH"] = os.pathsep.join([str(app), str(site)])
    probe = subprocess.run([sys.executable, "-c", _PROBE], cwd=app, capture_output=True, text=True, env=env)
    assert probe.returncode == 0, probe.stderr[-3000:]
    got = json.loads(probe.stdout.strip().splitlines()[-1])
    assert got["app_service"] == "the app service" and got["app_eval"] == "the app eval"
    for name, path in got["files"].items():
        assert path.startswith(str(site)), (name, path)  # the installed copy, not the checkout
    assert got["student"].startswith(str(site)) and got["static"] and got["example"]
    assert got["compressed"] and len(got["compressed"]) < len("one two three four five six seven eight")

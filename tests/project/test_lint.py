"""pyflakes over every package: undefined names and unused imports or variables.

An undefined name only fails when its line runs; a refactor that removed a helper still called from
one rarely used route got as far as a clean-clone CI run before a test happened to reach it."""

import subprocess
import sys

from tests.helpers.data import ROOT


def test_pyflakes_finds_nothing():
    out = subprocess.run(
        [sys.executable, "-m", "pyflakes", "compressor", "service", "eval", "ctxgate", "tests"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.stdout + out.stderr == "", out.stdout + out.stderr

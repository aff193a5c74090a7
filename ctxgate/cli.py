"""``ctxgate``: the one console script. Subcommands live in their own layer and take argv:
compress and models here, ``serve`` in service/, ``eval`` and ``bench`` in eval/.
Heavy imports happen inside each subcommand so ``ctxgate --help`` is instant.
"""

from __future__ import annotations

import os
import sys

# Before torch is imported: busy-waiting OpenMP workers starve the event loop and the other
# threads of a 2-core box (measured ~9x slower scoring under load with the default policy).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from ctxgate.compressor import CtxgateError  # noqa: E402

USAGE = """ctxgate <command> [options]

commands:
  compress   compress a file, stdin, RAG documents, or a JSONL batch
  serve      run the OpenAI/Anthropic-compatible sidecar proxy
  models     list | prepare | verify the embedded models
  eval       measure answer quality under compression on real datasets
  train      rebuild the classifier student: teacher labels, then training
  bench      measure compression speed (ctxgate bench), proxy latency (bench proxy), faults (bench chaos),
             tool outputs (bench tools), JSONL batches on one process and on Ray (bench batch)

Run 'ctxgate <command> --help' for a command's options."""


def _dispatch(cmd: str, rest: list[str]) -> int:
    if cmd == "compress":
        from ._compress_cli import main as run
    elif cmd == "models":
        from ._models_cli import main as run
    elif cmd == "serve":
        from ctxgate.service.serve import main as run
    elif cmd == "eval":
        from ctxgate.eval.cli import main as run
    elif cmd == "train":
        from ctxgate.eval.train.cli import main as run
    elif cmd == "bench":
        if rest[:1] == ["proxy"]:
            from ctxgate.eval.bench_proxy import main as run

            rest = rest[1:]
        elif rest[:1] == ["chaos"]:
            from ctxgate.eval.bench_chaos import main as run

            rest = rest[1:]
        elif rest[:1] == ["tools"]:
            from ctxgate.eval.bench_tools import main as run

            rest = rest[1:]
        elif rest[:1] == ["batch"]:
            from ctxgate.eval.bench_batch import main as run

            rest = rest[1:]
        else:
            from ctxgate.eval.bench import main as run

            if rest[:1] == ["engine"]:
                rest = rest[1:]
    else:
        print(f"ctxgate: unknown command {cmd!r}\n\n{USAGE}", file=sys.stderr)
        return 2
    return int(run(rest) or 0)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(USAGE)
        return 0 if argv else 2
    if argv[0] == "--version":
        from importlib.metadata import version

        print(version("ctxgate"))
        return 0
    try:
        return _dispatch(argv[0], argv[1:])
    except CtxgateError as exc:
        print(f"ctxgate: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""``python -m ctxgate.eval ...`` is ``ctxgate eval ...``."""

from .cli import main

raise SystemExit(main())

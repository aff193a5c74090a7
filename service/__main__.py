"""``python -m ctxgate.service`` is ``ctxgate serve``."""

from .serve import main

raise SystemExit(main())

"""Online answer fidelity for the sidecar: sampled shadow calls with the uncompressed request, their
comparison (MiniLM cosine, token F1, exact agreement), a SQLite store, the adaptive keep-rate per
(route, model), and the ``/v1/fidelity`` + ``/dashboard`` routes.

``Fidelity`` is opened and closed by the app's lifespan; handlers call ``policy`` (the rate to
use), ``candidate`` (record savings, draw a sample) and ``watch`` (start the check off-path).
"""

from ._controller import Change, Controller
from ._routes import ROUTES
from ._shadow import Candidate, Fidelity
from ._store import Store

__all__ = ["ROUTES", "Candidate", "Change", "Controller", "Fidelity", "Store"]

"""State files hold prompt text (cached compressions, fidelity samples): owner-only permissions."""

from __future__ import annotations

import os
from pathlib import Path


def private_dir(path: str | Path) -> Path:
    """Create ``path`` (and parents) as needed; the directory itself is made mode 0700."""
    p = Path(path)
    p.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(p, 0o700)
    return p


def private(path: str | Path) -> Path:
    """Create ``path`` empty with mode 0600 if it is missing, else narrow it to 0600.

    Called before SQLite opens a file, so the database never exists with wider permissions; SQLite
    gives its -wal and -shm files the database's mode."""
    p = Path(path)
    private_dir(p.parent)
    fd = os.open(p, os.O_CREAT | os.O_WRONLY, 0o600)
    os.close(fd)
    os.chmod(p, 0o600)
    return p

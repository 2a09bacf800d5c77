"""Helpers of the suites that exercise the model registry's lock."""

from __future__ import annotations

import fcntl
from pathlib import Path

from recsvc.registry import LOCK


def lock_is_held(root: Path) -> bool:
    """Whether someone holds the registry lock, asked as another process would (a new open file)."""
    with open(root / LOCK, "a") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(lock, fcntl.LOCK_UN)
        return False

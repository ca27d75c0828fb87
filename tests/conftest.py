"""Shared test helpers. In CI (``CI`` set) a missing prerequisite fails instead of skipping."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
IN_CI = bool(os.environ.get("CI"))


def require(condition: bool, reason: str) -> None:
    """Skip when a prerequisite is missing, but fail in CI, where everything must run."""
    if condition:
        return
    if IN_CI:
        pytest.fail(f"prerequisite missing in CI: {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def vectors_dir() -> Path:
    """``../shared/vectors`` beside the project, or ``$HOTLINE_VECTORS``."""
    path = Path(os.environ.get("HOTLINE_VECTORS", ROOT.parent / "shared" / "vectors"))
    require(path.is_dir(), f"test vectors not found at {path}")
    return path

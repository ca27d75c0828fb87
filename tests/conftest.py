"""Shared test helpers. In CI (``CI`` set) a missing prerequisite fails instead of skipping."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from tests.netlab import Lab

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


@pytest.fixture
def netlab() -> Iterator[Lab]:
    """An empty network lab (add hosts with ``netlab.add_host(name)``), closed after the test.
    Needs root and /dev/net/tun: skips without them, fails in CI. Its random choices follow
    ``$NETLAB_SEED`` (default 1), so a run replays."""
    from tests.netlab import Lab, prerequisites

    problem = prerequisites()
    require(problem is None, problem or "")
    with Lab(seed=int(os.environ.get("NETLAB_SEED", "1"))) as lab:
        print(f"netlab seed {lab.seed}, namespaces {lab.prefix}*")
        yield lab


@pytest.fixture
def fast_path(tmp_path: Path) -> Iterator[Path]:
    """A folder on tmpfs (``/dev/shm``) when there is one, else ``tmp_path``: for tests that
    write thousands of call log entries, each a durable SQLite commit, which on a disk costs
    an fsync apiece."""
    shm = Path("/dev/shm")
    if not shm.is_dir() or not os.access(shm, os.W_OK):
        yield tmp_path
        return
    path = Path(tempfile.mkdtemp(prefix="hotline-", dir=shm))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)

"""A real Janus (VideoRoom + HTTP on loopback) per test module: see ``tests.janus.server``."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.janus.server import JanusServer, running_janus


@pytest.fixture(scope="module")
def janus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[JanusServer]:
    with running_janus(tmp_path_factory.mktemp("janus")) as server:
        yield server

from __future__ import annotations

from tests.exchange.conftest import harness

__all__ = ["harness"]

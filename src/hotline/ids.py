"""Identifiers, one type and one rule per kind (placeholder, completed below)."""

from __future__ import annotations

from typing import NewType

TerminalId = NewType("TerminalId", str)
LineId = NewType("LineId", str)
CallId = NewType("CallId", str)
SiteId = NewType("SiteId", str)

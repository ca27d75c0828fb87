"""The one loader for the JSON test vectors under ``../shared/vectors``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

SFRAME_FILE = "sframe-rfc9605.json"
HPKE_FILE = "hpke-rfc9180-subset.json"


def load(vectors_dir: Path, name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((vectors_dir / name).read_text(encoding="utf-8"))
    return data


def h(text: str) -> bytes:
    return bytes.fromhex(text)

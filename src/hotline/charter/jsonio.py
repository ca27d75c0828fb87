"""Strict reading of the small JSON files of provisioning: charters and public records.

Files are read whole, up to a size limit; JSON is parsed strictly (UTF-8, no duplicate keys,
no floats, no NaN). Every problem is one :class:`CharterFormatError` naming the file or field.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from hotline.encoding import Value
from hotline.errors import CharterFormatError


def read_limited(path: Path, limit: int, what: str) -> bytes:
    """Read a whole file of at most ``limit`` bytes, with one-line errors naming it."""
    try:
        with path.open("rb") as fh:
            data = fh.read(limit + 1)
    except FileNotFoundError as exc:
        raise CharterFormatError(f"{path}: no such {what}") from exc
    except IsADirectoryError as exc:
        raise CharterFormatError(f"{path}: is a folder, not a {what}") from exc
    except OSError as exc:
        raise CharterFormatError(f"{path}: cannot read the {what}: {exc.strerror}") from exc
    if len(data) > limit:
        raise CharterFormatError(f"{path}: over the {limit}-byte limit for a {what}")
    if not data:
        raise CharterFormatError(f"{path}: the {what} is empty")
    return data


def parse_json_document(data: bytes, what: str) -> Any:
    """Parse strict UTF-8 JSON: no duplicate keys, no floats, no NaN."""

    def pairs(items: list[tuple[str, Any]]) -> dict[str, Any]:
        result: dict[str, Any] = {}
        for key, value in items:
            if key in result:
                raise CharterFormatError(f"{what}: duplicate JSON key {key!r}")
            result[key] = value
        return result

    def no_float(text: str) -> Any:
        raise CharterFormatError(f"{what}: a number that is not an integer: {text}")

    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise CharterFormatError(f"{what}: not UTF-8 (byte {exc.start})") from exc
    try:
        doc = json.loads(
            text, object_pairs_hook=pairs, parse_float=no_float, parse_constant=no_float
        )
    except json.JSONDecodeError as exc:
        raise CharterFormatError(
            f"{what}: not valid JSON, truncated or damaged ({exc.msg}: "
            f"line {exc.lineno} column {exc.colno})"
        ) from exc
    except RecursionError as exc:
        raise CharterFormatError(f"{what}: JSON nested too deeply") from exc
    except ValueError as exc:  # e.g. an integer of more digits than Python will convert
        raise CharterFormatError(f"{what}: not valid JSON ({exc})") from exc
    _check_strings(doc, what)
    return doc


def _check_strings(value: Any, what: str) -> None:
    """Refuse strings that are not Unicode text (JSON escapes of lone surrogates)."""
    stack = [value]
    while stack:
        item = stack.pop()
        texts: list[str] = []
        if isinstance(item, str):
            texts.append(item)
        elif isinstance(item, list):
            stack.extend(item)
        elif isinstance(item, dict):
            texts.extend(item)
            stack.extend(item.values())
        for text in texts:
            try:
                text.encode("utf-8")
            except UnicodeEncodeError as exc:
                raise CharterFormatError(f"{what}: a string is not valid Unicode text") from exc


def to_json(value: Value) -> Any:
    if isinstance(value, bytes):
        return value.hex()
    if isinstance(value, list):
        return [to_json(v) for v in value]
    if isinstance(value, dict):
        return {k: to_json(v) for k, v in value.items()}
    return value


def unhex(text: object, where: str) -> bytes:
    if not isinstance(text, str):
        raise CharterFormatError(f"{where}: expected hex digits")
    try:
        return bytes.fromhex(text)
    except ValueError as exc:
        raise CharterFormatError(f"{where}: not valid hex") from exc


def unhex_field(item: object, key: str, where: str) -> None:
    if isinstance(item, dict) and key in item:
        item[key] = unhex(item[key], f"{where}.{key}")


def list_or_empty(value: object) -> list[object]:
    return value if isinstance(value, list) else []

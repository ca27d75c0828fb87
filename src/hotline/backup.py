"""Consistent backups of a terminal folder, an exchange folder or a site folder, and their
restore, without stopping anything.

A live SQLite database in WAL mode is two files: what the last checkpoint wrote to
``exchange.db``, and everything since in ``exchange.db-wal``. A plain ``cp`` of the first
loses the second: undelivered envelopes, and a charter version accepted since the
checkpoint, so that restoring such a copy silently rolls the charter back. A backup here
copies every SQLite file with SQLite's online backup API (a consistent snapshot, taken
while the exchange or terminal keeps writing), every other file as it is (keys keep mode
0600), and writes ``BACKUP.json``: what it holds, each file's SHA-256 and the charter
version of every line in it.

A restore checks the backup against its manifest, refuses while the target runs (its lock
is held), and refuses to roll a charter back: if the target's charter store has accepted a
newer version of a line than the backup holds, it stops, unless told to keep the newer
charters (``keep_newer_charters``), which then go into the restored store.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sqlite3
import stat
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hotline import __version__, pidlock
from hotline.errors import StateError, UsageError
from hotline.logs import rfc3339

MANIFEST = "BACKUP.json"
SCHEMA = 1
KINDS = ("terminal", "exchange", "site")
_SQLITE_HEADER = b"SQLite format 3\x00"
#: what is never copied: SQLite's side files (the backup API replaces them), locks, and the
#: terminal's control file (a running process's URL and token)
_SKIP_SUFFIXES = ("-wal", "-shm", "-journal", ".lock", ".tmp")
_SKIP_NAMES = {"control.json", MANIFEST}


@dataclass(frozen=True)
class Manifest:
    kind: str
    source: str
    taken_at: str
    files: dict[str, dict[str, Any]]
    #: per SQLite file holding a charter store: line id -> version
    charters: dict[str, dict[str, int]]

    def to_json(self) -> dict[str, Any]:
        return {
            "schema": SCHEMA,
            "kind": self.kind,
            "source": self.source,
            "taken_at": self.taken_at,
            "hotline_version": __version__,
            "files": self.files,
            "charters": self.charters,
        }


def lock_files(kind: str, folder: Path) -> list[Path]:
    """The lock a running terminal or exchange holds on ``folder``."""
    if kind == "terminal":
        return [folder / "state" / "terminal.lock"]
    if kind == "exchange":
        return sorted(set(folder.glob("*.lock")) | {folder / "exchange.db.lock"})
    return []


def is_sqlite(path: Path) -> bool:
    with path.open("rb") as fh:
        return fh.read(len(_SQLITE_HEADER)) == _SQLITE_HEADER


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _walk(folder: Path) -> list[Path]:
    out: list[Path] = []
    for path in sorted(folder.rglob("*")):
        if path.is_symlink() or not path.is_file():
            continue
        if path.name in _SKIP_NAMES or path.name.endswith(_SKIP_SUFFIXES):
            continue
        out.append(path)
    return out


def charter_versions(path: Path) -> dict[str, int]:
    """``{line id: version}`` of the charter store in the SQLite file ``path`` ({} if none)."""
    try:
        db = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
        try:
            db.execute("PRAGMA busy_timeout=5000")
            has = db.execute(
                "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'charters'"
            ).fetchone()
            if not has:
                return {}
            rows = db.execute("SELECT line_id, version FROM charters").fetchall()
        finally:
            db.close()
    except sqlite3.Error as exc:
        raise StateError(f"{path}: cannot read its charter store: {exc}") from exc
    return {str(r[0]): int(r[1]) for r in rows}


def _online_copy(source: Path, dest: Path) -> None:
    """SQLite's online backup: a consistent snapshot even while another process writes."""
    try:
        src = sqlite3.connect(str(source), timeout=10)
        try:
            dst = sqlite3.connect(str(dest))
            try:
                src.backup(dst, pages=1024)
                check = dst.execute("PRAGMA integrity_check").fetchone()
                if check is None or check[0] != "ok":
                    raise StateError(f"{source}: the copy fails SQLite's integrity check")
            finally:
                dst.close()
        finally:
            src.close()
    except sqlite3.Error as exc:
        raise StateError(f"{source}: cannot back up this database: {exc}") from exc
    for side in ("-wal", "-shm"):  # a closed WAL copy is checkpointed: no side files
        Path(str(dest) + side).unlink(missing_ok=True)


#: where, in a backup, an exchange store kept outside the exchange's folder goes
STORE_DIR = "store"


def take_backup(
    kind: str,
    folder: Path,
    out: Path,
    *,
    outside_store: Path | None = None,
    now: float | None = None,
) -> Manifest:
    """Back ``folder`` (a terminal, exchange or site folder) up into the new folder ``out``.
    ``outside_store``: an exchange's database kept outside its folder (``exchange.db`` in
    ``exchange.toml``), backed up too, as ``store/NAME``."""
    if kind not in KINDS:
        raise UsageError(f"unknown kind {kind!r}")
    if not folder.is_dir():
        raise UsageError(f"{folder}: no such folder")
    if out.exists():
        raise UsageError(f"{out}: already exists; give a new folder for the backup")
    out.mkdir(mode=0o700, parents=True)
    files: dict[str, dict[str, Any]] = {}
    charters: dict[str, dict[str, int]] = {}
    sources = [(path, path.relative_to(folder)) for path in _walk(folder)]
    if outside_store is not None:
        if not outside_store.is_file():
            raise UsageError(f"{outside_store}: the exchange's store is not there")
        sources.append((outside_store, Path(STORE_DIR) / outside_store.name))
    for path, rel in sources:
        dest = out / rel
        dest.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        mode = stat.S_IMODE(path.stat().st_mode)
        database = is_sqlite(path)
        if database:
            _online_copy(path, dest)
            versions = charter_versions(dest)
            if versions:
                charters[str(rel)] = versions
        else:
            shutil.copyfile(path, dest)
        os.chmod(dest, mode)
        files[str(rel)] = {
            "sha256": _sha256(dest),
            "size": dest.stat().st_size,
            "mode": f"{mode:04o}",
            "sqlite": database,
            "store": path == outside_store,
        }
    manifest = Manifest(
        kind=kind,
        source=str(folder.resolve()),
        taken_at=rfc3339(time.time() if now is None else now),
        files=files,
        charters=charters,
    )
    path = out / MANIFEST
    path.write_text(json.dumps(manifest.to_json(), indent=2, sort_keys=True) + "\n")
    path.chmod(0o600)
    return manifest


def read_manifest(backup: Path) -> Manifest:
    """The backup's manifest, with every file checked against it."""
    path = backup / MANIFEST
    try:
        doc = json.loads(path.read_text())
    except FileNotFoundError:
        raise UsageError(f"{backup}: not a Hotline backup (no {MANIFEST})") from None
    except (OSError, ValueError) as exc:
        raise StateError(f"{path}: unreadable: {exc}") from None
    if not isinstance(doc, dict) or doc.get("schema") != SCHEMA or doc.get("kind") not in KINDS:
        raise StateError(f"{path}: not a backup manifest this release reads")
    files: dict[str, dict[str, Any]] = doc["files"]
    for rel, entry in files.items():
        file = backup / rel
        if Path(rel).is_absolute() or ".." in Path(rel).parts:
            raise StateError(f"{path}: a file outside the backup: {rel!r}")
        if not file.is_file():
            raise StateError(f"{backup}: {rel} is missing from the backup")
        if _sha256(file) != entry["sha256"]:
            raise StateError(f"{backup}: {rel} was changed or damaged since the backup")
    return Manifest(
        kind=str(doc["kind"]),
        source=str(doc["source"]),
        taken_at=str(doc["taken_at"]),
        files=files,
        charters={k: {str(a): int(b) for a, b in v.items()} for k, v in doc["charters"].items()},
    )


@dataclass(frozen=True)
class Rollback:
    """A line whose charter the target holds in a newer version than the backup."""

    database: str
    line_id: str
    held: int
    in_backup: int | None


def _destination(rel: str, entry: dict[str, Any], target: Path, store: Path | None) -> Path:
    if entry.get("store"):
        if store is None:
            raise UsageError(
                f"the backup holds an exchange store kept outside its folder ({rel}); "
                "name the target's store in its exchange.toml (exchange.db) first"
            )
        return store
    return target / rel


def rollbacks(manifest: Manifest, target: Path, store: Path | None = None) -> list[Rollback]:
    """What restoring ``manifest`` over ``target`` would roll back."""
    found: list[Rollback] = []
    for rel, entry in manifest.files.items():
        current = _destination(rel, entry, target, store)
        if not entry["sqlite"] or not current.is_file() or not is_sqlite(current):
            continue
        backed = manifest.charters.get(rel, {})
        for line_id, held in sorted(charter_versions(current).items()):
            if held > backed.get(line_id, 0):
                found.append(Rollback(rel, line_id, held, backed.get(line_id)))
    return found


def restore(
    backup: Path,
    kind: str,
    target: Path,
    *,
    keep_newer_charters: bool = False,
    store: Path | None = None,
) -> tuple[Manifest, list[Rollback]]:
    """Restore ``backup`` (of ``kind``) into ``target``. Returns the manifest and the newer
    charters kept. ``store``: where the target exchange keeps a store outside its folder.
    Raises :class:`StateError` while the target runs, or if it would roll a charter back
    and ``keep_newer_charters`` is not given."""
    manifest = read_manifest(backup)
    if manifest.kind != kind:
        raise UsageError(f"{backup}: a backup of a {manifest.kind}, not of a {kind}")
    target.mkdir(mode=0o700, parents=True, exist_ok=True)
    locks = lock_files(kind, target)
    if store is not None:
        locks.append(store.with_name(store.name + ".lock"))
    for lock in locks:
        pid = pidlock.holder(lock)
        if pid is not None:
            raise StateError(f"{target}: the {kind} is running (pid {pid}); stop it first")
    if kind == "terminal":
        (target / "state").mkdir(mode=0o700, exist_ok=True)
    # held until the restore is done: a terminal or exchange started meanwhile is refused
    held = [
        pidlock.hold(lock, f"{target}: the {kind} started during the restore") for lock in locks
    ]
    try:
        back = rollbacks(manifest, target, store)
        if back and not keep_newer_charters:
            first = back[0]
            was = f"version {first.in_backup}" if first.in_backup else "no charter"
            where = _destination(first.database, manifest.files[first.database], target, store)
            raise StateError(
                f"{where}: holds charter version {first.held} of line "
                f"{first.line_id!r} and the backup has {was}: restoring would roll the charter "
                "back. Give --keep-newer-charters to restore everything else and keep the "
                "newer charters"
            )
        lines = {r.line_id for r in back}
        newer: dict[Path, list[tuple[str, int, bytes, bytes]]] = {}
        for r in back:
            path = _destination(r.database, manifest.files[r.database], target, store)
            newer[path] = _charter_rows(path, lines)
        for rel, entry in manifest.files.items():
            dest = _destination(rel, entry, target, store)
            dest.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            tmp = dest.with_name(dest.name + ".restore.tmp")
            shutil.copyfile(backup / rel, tmp)
            os.chmod(tmp, int(entry["mode"], 8))
            if entry["sqlite"]:  # a stale WAL would be replayed onto the restored file
                for side in ("-wal", "-shm"):
                    Path(str(dest) + side).unlink(missing_ok=True)
            os.replace(tmp, dest)
        for path, rows in newer.items():
            _put_charter_rows(path, rows)
    finally:
        for fd in held:
            os.close(fd)
    return manifest, back


def _charter_rows(path: Path, lines: set[str]) -> list[tuple[str, int, bytes, bytes]]:
    db = sqlite3.connect(str(path))
    try:
        rows = db.execute("SELECT line_id, version, digest, signed FROM charters").fetchall()
    finally:
        db.close()
    return [(str(r[0]), int(r[1]), bytes(r[2]), bytes(r[3])) for r in rows if r[0] in lines]


def _put_charter_rows(path: Path, rows: list[tuple[str, int, bytes, bytes]]) -> None:
    db = sqlite3.connect(str(path), isolation_level=None)
    try:
        db.execute("BEGIN IMMEDIATE")
        db.executemany(
            "INSERT OR REPLACE INTO charters (line_id, version, digest, signed) "
            "VALUES (?, ?, ?, ?)",
            rows,
        )
        db.execute("COMMIT")
    finally:
        db.close()

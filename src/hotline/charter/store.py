"""CharterStore: per line, the highest valid charter version ever accepted (SQLite).

Anything that holds a charter (terminal, exchange) keeps it here, so that a charter can never
be rolled back to an older version, not even across restarts.
"""

from __future__ import annotations

import hmac
import logging
import sqlite3
import threading
from collections import Counter
from pathlib import Path
from types import TracebackType

from hotline.charter.model import Charter, SignedCharter
from hotline.errors import CharterError, CharterRollback, SignatureError, StateError

logger = logging.getLogger(__name__)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS charters (
    line_id TEXT PRIMARY KEY,
    version INTEGER NOT NULL,
    digest  BLOB NOT NULL,
    signed  BLOB NOT NULL
)
"""


class CharterStore:
    """Per line, the highest valid charter version ever accepted, in a SQLite file.

    :meth:`accept` refuses a lower version (:class:`CharterRollback`), a different charter
    under the same version, and, unless ``reanchor`` is given, a new version that drops a
    site of the current one or changes its operator key without a :class:`Handover` signed
    by the key it replaces (the keys that were trusted must be the ones that signed the
    change). Rejections are counted in :attr:`rejected`.
    """

    def __init__(self, path: Path | str) -> None:
        self.path = path
        self.rejected: Counter[str] = Counter()
        self._lock = threading.Lock()
        try:
            self._db = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.execute(_SCHEMA)
        except sqlite3.Error as exc:
            raise StateError(f"{path}: cannot open the charter store: {exc}") from exc

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def __enter__(self) -> CharterStore:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _refuse(self, error: CharterError | SignatureError) -> CharterError | SignatureError:
        self.rejected[error.reason] += 1
        logger.warning("charter refused (%s): %s", error.reason, error)
        return error

    def accept(self, signed: SignedCharter, *, reanchor: bool = False) -> SignedCharter:
        """Verify ``signed`` and keep it if it is newer; return the line's current charter.

        ``reanchor=True`` is for a charter the local operator installs by hand: it lifts
        only the continuity rule (same sites, same operator keys), never the rollback rule.
        """
        try:
            signed.verify()
        except (CharterError, SignatureError) as exc:
            raise self._refuse(exc) from None
        line_id, version, digest = signed.line_id, signed.version, signed.charter.digest()
        with self._lock:
            try:
                self._db.execute("BEGIN IMMEDIATE")
                try:
                    row = self._db.execute(
                        "SELECT version, digest, signed FROM charters WHERE line_id = ?",
                        (line_id,),
                    ).fetchone()
                    if row is not None:
                        current = SignedCharter.from_wire(bytes(row[2]))
                        if version < int(row[0]):
                            raise self._refuse(
                                CharterRollback(
                                    f"line {line_id!r}: version {version} is older than "
                                    f"version {row[0]} already accepted"
                                )
                            )
                        if version == int(row[0]):
                            if not hmac.compare_digest(bytes(row[1]), digest):
                                raise self._refuse(
                                    CharterError(
                                        f"line {line_id!r}: a different charter with the same "
                                        f"version {version} was already accepted"
                                    )
                                )
                            self._db.execute("ROLLBACK")
                            return current
                        if not reanchor:
                            self._check_continuity(current.charter, signed)
                    self._db.execute(
                        "INSERT OR REPLACE INTO charters (line_id, version, digest, signed) "
                        "VALUES (?, ?, ?, ?)",
                        (line_id, version, digest, signed.to_wire()),
                    )
                    self._db.execute("COMMIT")
                except BaseException:
                    if self._db.in_transaction:
                        self._db.execute("ROLLBACK")
                    raise
            except sqlite3.Error as exc:
                raise StateError(f"{self.path}: charter store failed: {exc}") from exc
        logger.info("charter accepted: line %s version %d", line_id, version)
        return signed

    def _check_continuity(self, old: Charter, signed: SignedCharter) -> None:
        """Every site of ``old`` is in the new version with the same operator key, or with
        a new key and the handover signed by the key ``old`` lists (already verified)."""
        new = signed.charter
        new_sites = {s.site_id: s for s in new.sites}
        for s in old.sites:
            successor = new_sites.get(s.site_id)
            handover = signed.handovers.get(s.site_id)
            handed_over = handover is not None and handover.previous_key == s.operator_key
            if successor is None:
                problem = f"drops site {s.site_id!r}"
            elif successor.operator_key == s.operator_key or handed_over:
                continue
            elif handover is not None:
                problem = (
                    f"changes the operator key of site {s.site_id!r} with a handover by "
                    f"another key than the one version {old.version} lists"
                )
            else:
                problem = (
                    f"changes the operator key of site {s.site_id!r} without a handover "
                    "signed by its previous key"
                )
            raise self._refuse(
                CharterError(
                    f"line {new.line_id!r}: version {new.version} {problem}; every site of "
                    f"version {old.version} must sign the next one with its key "
                    "(an operator can install such a charter by hand with reanchor)"
                )
            )

    def current(self, line_id: str) -> SignedCharter | None:
        """The highest accepted charter of ``line_id`` (re-verified), or None."""
        with self._lock:
            try:
                row = self._db.execute(
                    "SELECT signed FROM charters WHERE line_id = ?", (line_id,)
                ).fetchone()
            except sqlite3.Error as exc:
                raise StateError(f"{self.path}: charter store failed: {exc}") from exc
        if row is None:
            return None
        signed = SignedCharter.from_wire(bytes(row[0]))
        try:
            signed.verify()
        except (CharterError, SignatureError) as exc:
            raise CharterError(
                f"{self.path}: stored charter of {line_id!r} is damaged: {exc}"
            ) from exc
        return signed

    def lines(self) -> list[str]:
        with self._lock:
            rows = self._db.execute("SELECT line_id FROM charters ORDER BY line_id").fetchall()
        return [str(r[0]) for r in rows]

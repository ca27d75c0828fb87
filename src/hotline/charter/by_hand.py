"""A charter installed by hand by the local operator, lifting the continuity rule.

Every charter store accepts a new version only if it keeps every site of the one it holds
with the same operator key, or a new key with a handover signed by the old one
(:meth:`CharterStore.accept`). When a site's operator key is lost or stolen there is nothing
to sign a handover with, and removing a site drops it: the line is re-commissioned, and each
operator installs that charter on their own equipment, after the voice check, with
``hotline terminal install-charter --reanchor`` or ``hotline exchange install-charter
--reanchor``. Never through the exchange (which could otherwise slip in any key) and never
on a running terminal or exchange: the store is written while its lock is held here, so one
started meanwhile is refused. Rollback protection stays: the version must still be newer.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from hotline import pidlock
from hotline.charter.model import SignedCharter
from hotline.charter.store import CharterStore
from hotline.errors import StateError

log = logging.getLogger("hotline.charter")


@dataclass(frozen=True)
class Installed:
    line_id: str
    version: int
    previous_version: int | None


@contextlib.contextmanager
def _stopped(what: str, locks: list[Path]) -> Iterator[None]:
    """Hold ``locks`` (``what`` is not running) for the duration."""
    held: list[int] = []
    try:
        for lock in locks:
            pid = pidlock.holder(lock)
            if pid is not None:
                raise StateError(
                    f"{what} is running (pid {pid}); stop it first: a charter is re-anchored "
                    "by hand on stopped equipment",
                    reason="locked",
                )
            lock.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            held.append(pidlock.hold(lock, f"{what} started during the re-anchoring"))
        yield
    finally:
        for fd in held:
            os.close(fd)


def install_by_hand(
    what: str,
    locks: list[Path],
    open_store: Callable[[], contextlib.AbstractContextManager[CharterStore]],
    signed: SignedCharter,
) -> Installed:
    """Verify ``signed`` and, holding ``locks`` (``what`` must be stopped), give it to the
    store ``open_store`` opens with the continuity rule lifted. Raises what the store
    raises (a rollback, a different charter under the same version) and
    :class:`StateError` while ``what`` runs."""
    signed.verify()
    line_id = signed.charter.line_id
    with _stopped(what, locks), open_store() as store:
        current = store.current(line_id)
        previous = current.charter.version if current is not None else None
        store.accept(signed, reanchor=True)
    log.warning(
        "charter re-anchored by hand: line %s version %d (was %s)",
        line_id,
        signed.charter.version,
        previous if previous is not None else "none",
    )
    return Installed(line_id, signed.charter.version, previous)

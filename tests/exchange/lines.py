"""Real lines for the exchange tests, provisioned with ``hotline.provision``: site folders,
enrolled terminals with their identity keys, and a charter signed by every site."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from hotline.charter import Charter, Role, SignedCharter, load_charter
from hotline.keys import SigningKey
from hotline.provision import (
    LINE_SITES_DIR,
    LINE_TERMINALS_DIR,
    create_line,
    enroll_terminal,
    load_terminal,
    propose_line,
    sign_charter,
    write_draft,
)

SITES = ("east", "west")


@dataclass
class Line:
    root: Path
    path: Path
    signed: SignedCharter
    keys: dict[str, SigningKey]

    @property
    def line_id(self) -> str:
        return self.signed.line_id

    @property
    def charter(self) -> Charter:
        return self.signed.charter

    @property
    def terminals(self) -> list[str]:
        return [t.terminal_id for t in self.charter.terminals]

    def with_version(
        self, version: int, *, drop: Sequence[str] = (), add: Sequence[str] = ()
    ) -> Line:
        """The next charter of this line, signed by both sites: minus ``drop``, plus newly
        enrolled terminals ``add`` (at the first site)."""
        site_dirs = [self.root / LINE_SITES_DIR / s for s in SITES]
        for name in add:
            enroll_terminal(site_dirs[0], name, Role.AIDE, self.root / LINE_TERMINALS_DIR / name)
        keep = [t for t in self.terminals if t not in drop] + list(add)
        charter = propose_line(
            self.line_id,
            site_dirs,
            [self.root / LINE_TERMINALS_DIR / t for t in keep],
            self.charter.exchanges,
            version=version,
        )
        path = self.root / f"{self.line_id}.v{version}.charter.json"
        write_draft(path, charter)
        for site_dir in site_dirs:
            sign_charter(path, site_dir)
        return _load(self.root, path)


def _load(root: Path, path: Path) -> Line:
    signed = load_charter(path)
    signed.verify()
    keys = {
        t.terminal_id: load_terminal(root / LINE_TERMINALS_DIR / t.terminal_id)[1]
        for t in signed.charter.terminals
    }
    return Line(root, path, signed, keys)


def make_line(
    root: Path,
    n: int = 2,
    line_id: str = "line-1",
    *,
    exchanges: Sequence[str] = (),
    prefix: str = "t",
) -> Line:
    """A line of ``n`` terminals named ``t0 .. t{n-1}``, alternately enrolled by two sites."""
    members: dict[str, list[tuple[str, Role]]] = {s: [] for s in SITES}
    for i in range(n):
        members[SITES[i % 2]].append((f"{prefix}{i}", Role.AIDE))
    folder = root / line_id
    path = create_line(folder, line_id, members, list(exchanges))
    return _load(folder, path)

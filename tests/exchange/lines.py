"""Lines for the exchange tests: a charter body and its terminals' identity keys.

(Until the charter module lands this builds a minimal membership with real Ed25519 keys;
it is replaced by real signed charters from ``hotline.provision``.)"""

from __future__ import annotations

from dataclasses import dataclass, field

from hotline.errors import UnknownMember
from hotline.keys import PublicKey, SigningKey


@dataclass(frozen=True)
class FakeTerminal:
    terminal_id: str
    identity_key: PublicKey


@dataclass(frozen=True)
class FakeCharter:
    line_id: str
    version: int
    terminals: tuple[FakeTerminal, ...]

    def terminal(self, terminal_id: str) -> FakeTerminal:
        for t in self.terminals:
            if t.terminal_id == terminal_id:
                return t
        raise UnknownMember(f"no terminal {terminal_id}")


@dataclass
class Line:
    charter: FakeCharter
    keys: dict[str, SigningKey] = field(default_factory=dict)

    @property
    def line_id(self) -> str:
        return self.charter.line_id

    def with_version(self, version: int, *, drop: tuple[str, ...] = (), add: int = 0) -> Line:
        keys = {k: v for k, v in self.keys.items() if k not in drop}
        for i in range(add):
            keys[f"{self.line_id}-new{version}-{i}"] = SigningKey.generate()
        terminals = tuple(FakeTerminal(t, k.public) for t, k in keys.items())
        return Line(FakeCharter(self.line_id, version, terminals), keys)


def make_line(n: int = 2, line_id: str = "line-1", version: int = 1) -> Line:
    keys = {f"t{i}": SigningKey.generate() for i in range(n)}
    terminals = tuple(FakeTerminal(t, k.public) for t, k in keys.items())
    return Line(FakeCharter(line_id, version, terminals), keys)

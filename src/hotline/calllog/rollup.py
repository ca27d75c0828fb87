"""Bounded storage for readiness checks: old results roll up into signed summaries.

An hourly check writes a dozen entries to each end's call log (ring, answer, epochs,
security codes, statistics, hang-up, both co-signatures, the result); four idle years would be
half a million entries. :func:`roll_up` keeps the individual entries of the last
``Retention.days`` days, replaces those of each older UTC day with one ``check_rollup``
entry (a *daily summary*), and, older than ``Retention.months`` months, replaces the daily
summaries of each month with a *monthly summary*. Real calls are never touched: only calls
that hold a ``check_result`` or ``check_report`` entry (and the ``check-…`` results of
checks that could not call at all).

A summary is an ordinary entry: hash-chained and signed by the terminal's identity key. It
says, per caller and callee, how many checks there were, how many green, amber and red, and
the count, minimum, maximum and sum of each figure (set-up, one-way delay, loss, jitter,
MOS, frame rates: sums add up exactly from days to months); how many of the replaced calls
carried the peer's co-signature; the index ranges it replaced (``replaces``) and a digest
over the replaced entry hashes (``digest``; for a monthly summary, the hashes of the daily
summaries it replaced, which commit to theirs), so that anyone holding an older copy of
the log can check the summary against it.

The chain stays verifiable after pruning: each run of removed entries leaves a row in
``pruned`` with the hash the run followed, its last entry's hash and that entry's signature.
``CallLog.verify`` links across the run, checks the signature, and requires every removed
index to be claimed by a summary still in the log: entries cut out by anyone else fail.
What cannot be checked after pruning is the content of the removed entries — that is what
the summary replaces.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import sqlite3
from collections.abc import Iterable
from dataclasses import dataclass, field

from hotline.calllog.log import CallLog, _transaction
from hotline.calllog.records import (
    _ENTRY_COLUMNS,
    EVENT_CHECK_ROLLUP,
    EVENT_COSIGN,
    MAX_PAYLOAD_SIZE,
    LogEntry,
    _cosign_payload,
    rollup_claims,
)
from hotline.encoding import Value, decode, encode, expect_dict
from hotline.errors import EncodingError, HotlineError, UsageError

ROLLUP_DIGEST_CTX = "hotline/calllog/rollup-digest/v1"
DAY_S = 86_400
PERIOD_DAY, PERIOD_MONTH = "day", "month"
#: the events that make a call a readiness check
CHECK_EVENTS = ("check_result", "check_report")
#: figures summarised (count, minimum, maximum, sum)
FIGURES = (
    "setup_ms",
    "one_way_ms",
    "loss_permille",
    "jitter_ms",
    "mos_x100",
    "pesq_x100",
    "video_fps",
    "audio_fps",
)
VERDICTS = ("green", "amber", "red")


@dataclass(frozen=True)
class Retention:
    """How long individual results and daily summaries are kept."""

    #: individual check entries are kept this many whole UTC days
    days: int = 7
    #: daily summaries are kept this many whole months; older ones become monthly
    months: int = 3

    def __post_init__(self) -> None:
        if self.days < 1 or self.months < 1:
            raise UsageError("retention: days and months must be at least 1")


@dataclass
class _Pair:
    by: str
    peer: str
    checks: int = 0
    verdicts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(VERDICTS, 0))
    figures: dict[str, list[int]] = field(default_factory=dict)  #: name -> [n, min, max, sum]

    def add_figure(self, name: str, value: int) -> None:
        f = self.figures.get(name)
        if f is None:
            self.figures[name] = [1, value, value, value]
        else:
            f[0], f[1], f[2], f[3] = f[0] + 1, min(f[1], value), max(f[2], value), f[3] + value

    def merge(self, other: _Pair) -> None:
        self.checks += other.checks
        for v in VERDICTS:
            self.verdicts[v] += other.verdicts.get(v, 0)
        for name, (n, lo, hi, total) in other.figures.items():
            f = self.figures.get(name)
            if f is None:
                self.figures[name] = [n, lo, hi, total]
            else:
                f[0], f[1], f[2], f[3] = f[0] + n, min(f[1], lo), max(f[2], hi), f[3] + total

    def to_value(self) -> dict[str, Value]:
        return {
            "by": self.by,
            "peer": self.peer,
            "checks": self.checks,
            "verdicts": dict[str, Value](self.verdicts),
            "figures": {k: list[Value](v) for k, v in sorted(self.figures.items())},
        }

    @classmethod
    def from_value(cls, v: Value) -> _Pair:
        obj = expect_dict(v, "rollup pair")
        pair = cls(str(obj["by"]), str(obj["peer"]), int(str(obj["checks"])))
        verdicts = expect_dict(obj["verdicts"], "rollup verdicts")
        pair.verdicts = {k: int(str(verdicts.get(k, 0))) for k in VERDICTS}
        figures = expect_dict(obj["figures"], "rollup figures")
        for name, f in figures.items():
            if not isinstance(f, list) or len(f) != 4 or not all(isinstance(x, int) for x in f):
                raise EncodingError("rollup figures: [n, min, max, sum] each")
            pair.figures[name] = [int(str(x)) for x in f]
        return pair


def _ranges(indices: Iterable[int]) -> list[tuple[int, int]]:
    out: list[list[int]] = []
    for i in sorted(indices):
        if out and i <= out[-1][1] + 1:
            out[-1][1] = max(out[-1][1], i)
        else:
            out.append([i, i])
    return [(a, b) for a, b in out]


def _digest(entries: Iterable[LogEntry]) -> bytes:
    h = hashlib.sha256(ROLLUP_DIGEST_CTX.encode())
    for e in sorted(entries, key=lambda e: e.index):
        h.update(e.entry_hash)
    return h.digest()


def _day(t: float) -> int:
    return int(t // DAY_S)


def _month_start(t: float, back: int = 0) -> int:
    d = dt.datetime.fromtimestamp(t, dt.UTC)
    index = d.year * 12 + d.month - 1 - back
    return int(dt.datetime(index // 12, index % 12 + 1, 1, tzinfo=dt.UTC).timestamp())


def _month_end(start: int) -> int:
    return _month_start(start + 32 * DAY_S)


def _result_pair(self_id: str, e: LogEntry) -> tuple[_Pair, dict[str, Value]] | None:
    """A check entry as (pair, figures): the caller's ``check_result``, or the callee's
    ``check_report`` (the caller's view of the call)."""
    try:
        obj = expect_dict(decode(e.payload_bytes), e.event)
    except (EncodingError, ValueError):
        return None
    if e.event == "check_result":
        return _Pair(str(obj.get("by") or self_id), str(obj.get("peer"))), obj
    view = obj.get("view")
    return _Pair(str(obj.get("from")), self_id), (view if isinstance(view, dict) else {})


class _Summary:
    def __init__(self) -> None:
        self.pairs: dict[tuple[str, str], _Pair] = {}
        self.calls = 0
        self.cosigned = 0

    def pair(self, by: str, peer: str) -> _Pair:
        key = (by, peer)
        if key not in self.pairs:
            self.pairs[key] = _Pair(by, peer)
        return self.pairs[key]

    def payload(
        self,
        period: str,
        start: int,
        end: int,
        removed: list[LogEntry],
        claims: Iterable[tuple[int, int]],
    ) -> dict[str, Value]:
        return {
            "period": period,
            "start": start,
            "end": end,
            "pairs": [self.pairs[k].to_value() for k in sorted(self.pairs)],
            "calls": self.calls,
            "cosigned": self.cosigned,
            "entries": len(removed),
            "replaces": [[a, b] for a, b in _ranges(_expand(claims))],
            "digest": _digest(removed),
        }


def _expand(ranges: Iterable[tuple[int, int]]) -> Iterable[int]:
    for a, b in ranges:
        yield from range(a, b + 1)


def roll_up(log: CallLog, now: float, retention: Retention | None = None) -> list[LogEntry]:
    """Write the daily and monthly summaries due at ``now`` and remove what they replace
    (each summary and its removals in one transaction). Returns the summaries written."""
    retention = retention or Retention()
    written = _roll_up_days(log, now, retention)
    months = _roll_up_months(log, now, retention)
    if months:
        log._conn.execute("VACUUM")  # give the freed pages back (a few per month)
    return written + months


def _check_calls(log: CallLog) -> dict[str, int]:
    """Check call id -> time (µs) of its result or report."""
    marks = ",".join("?" for _ in CHECK_EVENTS)
    rows = log._conn.execute(
        f"SELECT call_id, MAX(time_us) FROM entries WHERE event IN ({marks}) GROUP BY call_id",  # noqa: S608
        CHECK_EVENTS,
    ).fetchall()
    return {str(c): int(t) for c, t in rows}


def _entries_of(log: CallLog, call_ids: list[str]) -> list[LogEntry]:
    out: list[LogEntry] = []
    for k in range(0, len(call_ids), 500):
        chunk = call_ids[k : k + 500]
        marks = ",".join("?" for _ in chunk)
        rows = log._conn.execute(
            f"SELECT {_ENTRY_COLUMNS} FROM entries WHERE call_id IN ({marks}) ORDER BY idx",  # noqa: S608
            chunk,
        ).fetchall()
        out.extend(log._entry(r) for r in rows)
    return sorted(out, key=lambda e: e.index)


def _roll_up_days(log: CallLog, now: float, retention: Retention) -> list[LogEntry]:
    cutoff_day = _day(now) - retention.days
    by_day: dict[int, list[str]] = {}
    for call_id, t_us in _check_calls(log).items():
        day = _day(t_us / 1e6)
        if day < cutoff_day:
            by_day.setdefault(day, []).append(call_id)
    written = []
    for day in sorted(by_day):
        entries = _entries_of(log, sorted(by_day[day]))
        summary = _Summary()
        # a caller's check call holds its result and the callee's report: the result counts
        with_result = {e.call_id for e in entries if e.event == "check_result"}
        for e in entries:
            if e.event == "check_report" and e.call_id in with_result:
                continue
            if e.event in CHECK_EVENTS:
                got = _result_pair(log.terminal_id, e)
                if got is None:
                    continue
                key, figures = got
                pair = summary.pair(key.by, key.peer)
                pair.checks += 1
                verdict = figures.get("verdict")
                if isinstance(verdict, str) and verdict in VERDICTS:
                    pair.verdicts[verdict] += 1
                for name in FIGURES:
                    value = figures.get(name)
                    if isinstance(value, int) and not isinstance(value, bool):
                        pair.add_figure(name, value)
            elif e.event == EVENT_COSIGN:
                try:
                    if _cosign_payload(e).signer_id != log.terminal_id:
                        summary.cosigned += 1
                except HotlineError:
                    pass
        summary.calls = len(by_day[day])
        start = day * DAY_S
        payload = summary.payload(
            PERIOD_DAY, start, start + DAY_S, entries, [(e.index, e.index) for e in entries]
        )
        day_id = dt.datetime.fromtimestamp(start, dt.UTC).strftime("%Y-%m-%d")
        written.append(_replace(log, f"rollup-day-{day_id}", payload, entries, now))
    return written


def _roll_up_months(log: CallLog, now: float, retention: Retention) -> list[LogEntry]:
    cutoff = _month_start(now, retention.months)
    by_month: dict[int, list[LogEntry]] = {}
    # daily summaries are named by their day: only those before the cutoff are read
    below = "rollup-day-" + dt.datetime.fromtimestamp(cutoff, dt.UTC).strftime("%Y-%m-%d")
    for e in log.entries_of_event(EVENT_CHECK_ROLLUP, call_below=below):
        obj = expect_dict(decode(e.payload_bytes), EVENT_CHECK_ROLLUP)
        start = obj.get("start")
        if obj.get("period") == PERIOD_DAY and isinstance(start, int) and start < cutoff:
            by_month.setdefault(_month_start(start), []).append(e)
    written = []
    for month in sorted(by_month):
        days = by_month[month]
        summary = _Summary()
        claims: list[tuple[int, int]] = []
        for e in days:
            obj = expect_dict(decode(e.payload_bytes), EVENT_CHECK_ROLLUP)
            for v in obj.get("pairs") or []:  # type: ignore[union-attr]
                p = _Pair.from_value(v)
                summary.pair(p.by, p.peer).merge(p)
            summary.calls += int(str(obj.get("calls") or 0))
            summary.cosigned += int(str(obj.get("cosigned") or 0))
            claims.extend(rollup_claims(e))
            claims.append((e.index, e.index))
        payload = summary.payload(PERIOD_MONTH, month, _month_end(month), days, claims)
        month_id = dt.datetime.fromtimestamp(month, dt.UTC).strftime("%Y-%m")
        written.append(_replace(log, f"rollup-month-{month_id}", payload, days, now))
    return written


def _replace(
    log: CallLog, call_id: str, payload: dict[str, Value], removed: list[LogEntry], now: float
) -> LogEntry:
    """Append the summary, then remove what it replaces, keeping the chain's links."""
    data = encode(payload)
    if len(data) > MAX_PAYLOAD_SIZE:
        raise UsageError(f"rollup {call_id}: {len(data)} bytes exceeds the entry limit")
    conn = log._conn
    with _transaction(conn):
        entry = log._append_locked(call_id, EVENT_CHECK_ROLLUP, data, now)
        by_index = {e.index: e for e in removed}
        for a, b in _ranges(by_index):
            _prune_run(conn, by_index[a], by_index[b])
        for k in range(0, len(removed), 500):
            chunk = [e.index for e in removed[k : k + 500]]
            marks = ",".join("?" for _ in chunk)
            conn.execute(f"DELETE FROM entries WHERE idx IN ({marks})", chunk)  # noqa: S608
    return entry


def _prune_run(conn: sqlite3.Connection, first: LogEntry, last: LogEntry) -> None:
    """Record the run first..last as removed, joined with removed runs next to it."""
    a, prev_hash = first.index, first.prev_hash
    b, last_hash, last_sig = last.index, last.entry_hash, last.signature
    before = conn.execute("SELECT first, prev_hash FROM pruned WHERE last = ?", (a - 1,)).fetchone()
    if before is not None:
        conn.execute("DELETE FROM pruned WHERE first = ?", (before[0],))
        a, prev_hash = int(before[0]), bytes(before[1])
    after = conn.execute(
        "SELECT last, last_hash, last_sig FROM pruned WHERE first = ?", (b + 1,)
    ).fetchone()
    if after is not None:
        conn.execute("DELETE FROM pruned WHERE first = ?", (b + 1,))
        b, last_hash, last_sig = int(after[0]), bytes(after[1]), bytes(after[2])
    conn.execute(
        "INSERT INTO pruned (first, last, prev_hash, last_hash, last_sig) VALUES (?, ?, ?, ?, ?)",
        (a, b, prev_hash, last_hash, last_sig),
    )


def history_rows(e: LogEntry) -> list[dict[str, object]]:
    """A summary entry as rows of ``hotline check history`` (one per caller and callee)."""
    obj = expect_dict(decode(e.payload_bytes), EVENT_CHECK_ROLLUP)
    rows: list[dict[str, object]] = []
    for v in obj.get("pairs") or []:  # type: ignore[union-attr]
        p = _Pair.from_value(v)
        verdict = next((k for k in ("red", "amber", "green") if p.verdicts[k]), None)
        row: dict[str, object] = {
            "kind": obj.get("period"),
            "time": obj.get("start"),
            "end": obj.get("end"),
            "by": p.by,
            "peer": p.peer,
            "checks": p.checks,
            "verdicts": dict(p.verdicts),
            "verdict": verdict,
            "calls": obj.get("calls"),
            "cosigned": obj.get("cosigned"),
            "entry": e.index,
        }
        for name, (n, lo, hi, total) in p.figures.items():
            row[name] = {"n": n, "min": lo, "max": hi, "mean": round(total / n) if n else None}
        rows.append(row)
    return rows

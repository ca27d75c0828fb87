"""The call log: chain, signatures, head, tampering in the SQLite file, co-signed summaries."""

from __future__ import annotations

import itertools
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hotline.calllog import (
    EVENT_COSIGN,
    CallLog,
    LogEntry,
    entry_hash,
    sign_summary,
    verify_summary_signature,
)
from hotline.encoding import decode
from hotline.errors import (
    BadLogEntry,
    LogIntegrityError,
    SignatureError,
    StateError,
    SummaryMismatch,
    UsageError,
)
from hotline.keys import SigningKey

T0 = 1_765_000_000.0
LINE = {"line_id": "sochi-washington", "charter_version": 3}


@pytest.fixture(scope="module")
def key() -> SigningKey:
    return SigningKey.generate()


@pytest.fixture(scope="module")
def peer_key() -> SigningKey:
    return SigningKey.generate()


def fill(log: CallLog, n: int = 6, call_id: str = "call-1") -> list[LogEntry]:
    events = ["ring", "answer", "epoch", "rekey", "transport_failure", "hangup", "stats_summary"]
    out = []
    for i in range(n):
        event = events[i % len(events)]
        payload: dict[str, object]
        if event in ("ring", "answer"):
            payload = dict(LINE)
        elif event == "epoch":
            payload = {"epoch": i, "roster": ["sochi", "washington"], "security_code": "12345"}
        else:
            payload = {"n": i, "blob": bytes([i]) * 4}
        out.append(log.append(call_id, event, payload, T0 + i))  # type: ignore[arg-type]
    return out


@pytest.fixture
def filled(tmp_path: Path, key: SigningKey) -> Iterator[Path]:
    path = tmp_path / "calllog.sqlite"
    with CallLog.open(path, "sochi", key) as log:
        fill(log)
    yield path


def sql(path: Path, statement: str, *args: object) -> None:
    conn = sqlite3.connect(path)
    with conn:
        conn.execute(statement, args)
    conn.close()


def verify_fails(path: Path, key: SigningKey) -> BadLogEntry:
    with CallLog.open(path) as log, pytest.raises(BadLogEntry) as info:
        log.verify(key.public)
    return info.value


# --- the happy path -------------------------------------------------------------------------


def test_append_read_verify_round_trip(tmp_path: Path, key: SigningKey) -> None:
    path = tmp_path / "log.sqlite"
    with CallLog.open(path, "sochi", key) as log:
        written = fill(log, 7)
        assert [e.index for e in written] == list(range(7))
        assert written[0].prev_hash == bytes(32)
        assert all(b.prev_hash == a.entry_hash for a, b in itertools.pairwise(written))
        assert len(log) == 7
    with CallLog.open(path) as log:  # read-only, as an auditor
        assert log.terminal_id == "sochi"
        assert not log.writable
        assert log.entries() == written
        assert log.entries()[3].payload == {"n": 3, "blob": b"\x03" * 4}
        assert log.entries()[2].time == T0 + 2
        report = log.verify(key.public)
        assert report.entries == 7
        assert report.head_hash == written[-1].entry_hash
        assert report.calls == 1


def test_entry_hash_covers_every_field(key: SigningKey) -> None:
    base: dict[str, object] = {
        "terminal_id": "sochi",
        "index": 4,
        "time_us": 10,
        "call_id": "c",
        "event": "ring",
        "payload": b"N",
        "prev_hash": bytes(32),
    }
    h = entry_hash(**base)  # type: ignore[arg-type]
    for name, v in base.items():
        bumped = v + 1 if isinstance(v, int) else (v + "x" if isinstance(v, str) else v + b"x")  # type: ignore[operator]
        assert entry_hash(**{**base, name: bumped}) != h  # type: ignore[arg-type]


def test_entries_filtered_by_call_and_persisted_across_reopen(
    tmp_path: Path, key: SigningKey
) -> None:
    path = tmp_path / "log.sqlite"
    with CallLog.open(path, "sochi", key) as log:
        fill(log, 3, "call-a")
    with CallLog.open(path, "sochi", key) as log:  # reopened for writing: continues the chain
        fill(log, 2, "call-b")
        assert [e.index for e in log.entries("call-b")] == [3, 4]
        assert log.calls() == ["call-a", "call-b"]
        assert log.verify(key.public).calls == 2


def test_read_only_log_refuses_writes_and_missing_file(tmp_path: Path, filled: Path) -> None:
    with CallLog.open(filled) as log, pytest.raises(StateError):
        log.append("call-1", "hangup", {}, T0)
    with pytest.raises(UsageError, match="no such call log"):
        CallLog.open(tmp_path / "absent.sqlite")


def test_open_refuses_another_terminals_log(filled: Path, key: SigningKey) -> None:
    with pytest.raises(UsageError, match="'sochi', not 'washington'"):
        CallLog.open(filled, "washington", key)


def test_not_a_sqlite_file_is_refused(tmp_path: Path, key: SigningKey) -> None:
    bad = tmp_path / "junk.sqlite"
    bad.write_bytes(b"this is not a database at all" * 40)
    with pytest.raises(LogIntegrityError, match="not a call log"):
        CallLog.open(bad)
    with pytest.raises(LogIntegrityError, match="not a call log"):
        CallLog.open(bad, "sochi", key)


def test_append_validates_input(tmp_path: Path, key: SigningKey) -> None:
    with CallLog.open(tmp_path / "l.sqlite", "sochi", key) as log:
        with pytest.raises(UsageError):
            log.append("call 1", "ring", dict(LINE), T0)  # space in id
        with pytest.raises(UsageError):
            log.append("c", "Ring!", {}, T0)
        with pytest.raises(UsageError):
            log.append("c", "ring", {"line_id": "x"}, T0)  # no charter_version
        with pytest.raises(UsageError):
            log.append("c", "epoch", {"epoch": 1, "roster": ["a", "a"]}, T0)
        with pytest.raises(UsageError):
            log.append("c", EVENT_COSIGN, {}, T0)
        with pytest.raises(UsageError):
            log.append("c", "stats_summary", {"big": b"x" * 70_000}, T0)
        assert len(log) == 0
        log.append("c", "custom.event-1", {"free": True}, T0)  # unknown names are allowed
        log.verify(key.public)


# --- tampering in the SQLite file -------------------------------------------------------------


def test_changed_payload_byte_is_a_hash_mismatch(filled: Path, key: SigningKey) -> None:
    conn = sqlite3.connect(filled)
    (payload,) = conn.execute("SELECT payload FROM entries WHERE idx = 3").fetchone()
    conn.close()
    changed = bytearray(payload)
    changed[-1] ^= 0x01
    sql(filled, "UPDATE entries SET payload = ? WHERE idx = 3", bytes(changed))
    err = verify_fails(filled, key)
    assert (err.index, err.reason) == (3, "hash_mismatch")
    assert "entry 3" in str(err)


def test_changed_time_is_a_hash_mismatch(filled: Path, key: SigningKey) -> None:
    sql(filled, "UPDATE entries SET time_us = time_us + 1 WHERE idx = 2")
    err = verify_fails(filled, key)
    assert (err.index, err.reason) == (2, "hash_mismatch")


def test_rehashed_change_is_a_bad_signature(filled: Path, key: SigningKey) -> None:
    with CallLog.open(filled) as log:
        e = log.entries()[1]
    forged = LogEntry(1, e.time_us, e.call_id, "decline", e.payload_bytes, e.prev_hash, b"", b"")
    new_hash = forged.hash_as("sochi", 1)
    sql(filled, "UPDATE entries SET event = 'decline', entry_hash = ? WHERE idx = 1", new_hash)
    err = verify_fails(filled, key)
    assert (err.index, err.reason) == (1, "bad_signature")


def test_deleted_middle_row_is_a_gap(filled: Path, key: SigningKey) -> None:
    sql(filled, "DELETE FROM entries WHERE idx = 2")
    err = verify_fails(filled, key)
    assert (err.index, err.reason) == (2, "gap")


def test_deleted_row_with_renumbering_is_detected(filled: Path, key: SigningKey) -> None:
    sql(filled, "DELETE FROM entries WHERE idx = 2")
    sql(filled, "UPDATE entries SET idx = idx - 1 WHERE idx > 2")
    err = verify_fails(filled, key)
    assert err.index == 2
    assert err.reason == "reordered"
    assert "written as entry 3" in str(err)


def test_swapped_rows_are_reordering(filled: Path, key: SigningKey) -> None:
    sql(filled, "UPDATE entries SET idx = -1 WHERE idx = 2")
    sql(filled, "UPDATE entries SET idx = 2 WHERE idx = 4")
    sql(filled, "UPDATE entries SET idx = 4 WHERE idx = -1")
    err = verify_fails(filled, key)
    assert (err.index, err.reason) == (2, "reordered")
    assert "written as entry 4" in str(err)


def test_truncated_tail_is_detected_by_the_signed_head(filled: Path, key: SigningKey) -> None:
    sql(filled, "DELETE FROM entries WHERE idx >= 4")
    err = verify_fails(filled, key)
    assert (err.index, err.reason) == (4, "truncated")
    assert "records 6 entries" in str(err)


def test_truncated_tail_refuses_further_appends(filled: Path, key: SigningKey) -> None:
    sql(filled, "DELETE FROM entries WHERE idx = 5")
    with pytest.raises(BadLogEntry) as info:
        CallLog.open(filled, "sochi", key)
    assert info.value.reason == "tail_mismatch"


def test_truncated_tail_with_a_forged_head_needs_the_key(
    filled: Path, key: SigningKey, peer_key: SigningKey
) -> None:
    with CallLog.open(filled) as log:
        e3 = log.entries()[3]
    forged = peer_key.sign(b"anything")
    sql(filled, "DELETE FROM entries WHERE idx >= 4")
    sql(filled, "UPDATE head SET count = 4, head_hash = ?, signature = ?", e3.entry_hash, forged)
    err = verify_fails(filled, key)
    assert (err.index, err.reason) == (None, "head_signature")


def test_deleted_head_row_is_detected(filled: Path, key: SigningKey) -> None:
    sql(filled, "DELETE FROM head")
    assert verify_fails(filled, key).reason == "head_missing"


def test_replaced_signature_is_detected(
    filled: Path, key: SigningKey, peer_key: SigningKey
) -> None:
    with CallLog.open(filled) as log:
        e = log.entries()[4]
    sql(filled, "UPDATE entries SET signature = ? WHERE idx = 4", peer_key.sign(e.entry_hash))
    err = verify_fails(filled, key)
    assert (err.index, err.reason) == (4, "bad_signature")


def test_verify_with_the_wrong_key_fails(filled: Path, peer_key: SigningKey) -> None:
    assert verify_fails(filled, peer_key).reason == "head_signature"


def test_entry_appended_without_the_key_is_beyond_head(filled: Path, key: SigningKey) -> None:
    with CallLog.open(filled) as log:
        last = log.entries()[-1]
    h = entry_hash(
        terminal_id="sochi",
        index=6,
        time_us=1,
        call_id="call-1",
        event="hangup",
        payload=b"N",
        prev_hash=last.entry_hash,
    )
    sql(
        filled,
        "INSERT INTO entries VALUES (6, 1, 'call-1', 'hangup', ?, ?, ?, ?)",
        b"N",
        last.entry_hash,
        h,
        key.sign(b"\x00"),
    )
    err = verify_fails(filled, key)
    assert err.index == 6
    assert err.reason == "bad_signature"


def test_wrong_column_type_is_reported_not_crashed(filled: Path, key: SigningKey) -> None:
    sql(filled, "UPDATE entries SET payload = 'text' WHERE idx = 1")
    err = verify_fails(filled, key)
    assert (err.index, err.reason) == (1, "malformed")


_MUTABLE_COLUMNS = (
    "time_us",
    "call_id",
    "event",
    "payload",
    "prev_hash",
    "entry_hash",
    "signature",
)


def _mutate(value: object, data: st.DataObject) -> object:
    if isinstance(value, int):
        return value + data.draw(st.integers(-(10**9), 10**9).filter(bool), label="delta")
    if isinstance(value, str):
        new = data.draw(st.text("abcdefghijklmnopqrstuvwxyz_-0123456789", min_size=1, max_size=12))
        return value + new if new == value else new
    assert isinstance(value, bytes)
    pos = data.draw(st.integers(0, len(value) - 1), label="byte")
    bit = data.draw(st.integers(0, 7), label="bit")
    out = bytearray(value)
    out[pos] ^= 1 << bit
    return bytes(out)


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(data=st.data())
def test_any_single_field_mutation_is_detected(
    data: st.DataObject, tmp_path_factory: pytest.TempPathFactory, key: SigningKey
) -> None:
    path = tmp_path_factory.mktemp("prop") / "log.sqlite"
    n = 5
    with CallLog.open(path, "sochi", key) as log:
        fill(log, n)
    index = data.draw(st.integers(0, n - 1), label="index")
    column = data.draw(st.sampled_from((*_MUTABLE_COLUMNS, "idx")), label="column")
    if column == "idx":
        new_index = data.draw(st.sampled_from([i for i in range(-3, n + 3) if i != index]))
        if 0 <= new_index < n:  # a swap: the other row takes this one's place
            sql(path, "UPDATE entries SET idx = -100 WHERE idx = ?", new_index)
            sql(path, "UPDATE entries SET idx = ? WHERE idx = ?", new_index, index)
            sql(path, "UPDATE entries SET idx = ? WHERE idx = -100", index)
        else:
            sql(path, "UPDATE entries SET idx = ? WHERE idx = ?", new_index, index)
        expected_index = min(index, new_index) if 0 <= new_index < n else index
    else:
        conn = sqlite3.connect(path)
        (old,) = conn.execute(f"SELECT {column} FROM entries WHERE idx = ?", (index,)).fetchone()
        conn.close()
        sql(path, f"UPDATE entries SET {column} = ? WHERE idx = ?", _mutate(old, data), index)
        expected_index = index
    with CallLog.open(path) as log, pytest.raises(BadLogEntry) as info:
        log.verify(key.public)
    # a changed hash also breaks the next entry's link, but the FIRST bad entry is named
    assert info.value.index == expected_index, str(info.value)


# --- call summaries and cosignatures -----------------------------------------------------------


def call_events(log: CallLog, peer: str, *, t: float, extra: bool) -> None:
    """The same agreed facts, logged by one side with its own times and extra events."""
    cid = "call-42"
    log.append(cid, "ring", {**LINE, "direction": "incoming" if extra else "outgoing"}, t)
    log.append(cid, "answer", dict(LINE), t + 1)
    log.append(cid, "epoch", {"epoch": 0, "roster": [log.terminal_id, peer]}, t + 2)
    if extra:  # codes logged in another order and form, plus per-side events
        log.append(cid, "transport_failure", {"reason": "ice"}, t + 2.5)
        log.append(cid, "security_code", {"epoch": 0, "security_code": "31415"}, t + 3)
        log.append(
            cid,
            "epoch",
            {
                "epoch": 1,
                "roster": [peer, "interpreter", log.terminal_id],
                "security_code": "27182",
            },
            t + 4,
        )
    else:
        log.append(
            cid,
            "epoch",
            {"epoch": 1, "roster": [log.terminal_id, "interpreter", peer]},
            t + 3,
        )
        log.append(cid, "security_code", {"epoch": 1, "security_code": "27182"}, t + 4)
        log.append(cid, "security_code", {"epoch": 0, "security_code": "31415"}, t + 4.5)
    # an epoch the peer was not in does not belong to the pair's summary
    log.append(cid, "epoch", {"epoch": 2, "roster": [log.terminal_id, "interpreter"]}, t + 5)
    log.append(cid, "hangup", {"reason": "local"}, t + 6)
    log.append(cid, "stats_summary", {"frames_sent": 1000 if extra else 999}, t + 7)


@pytest.fixture
def pair(
    tmp_path: Path, key: SigningKey, peer_key: SigningKey
) -> Iterator[tuple[CallLog, CallLog]]:
    a = CallLog.open(tmp_path / "a.sqlite", "sochi", key)
    b = CallLog.open(tmp_path / "b.sqlite", "washington", peer_key)
    call_events(a, "washington", t=T0, extra=False)
    call_events(b, "sochi", t=T0 + 0.37, extra=True)
    yield a, b
    a.close()
    b.close()


def test_summary_is_identical_on_both_sides(pair: tuple[CallLog, CallLog]) -> None:
    a, b = pair
    sa = a.call_summary("call-42", "washington")
    sb = b.call_summary("call-42", "sochi")
    assert sa == sb
    facts = decode(sa)
    assert isinstance(facts, dict)
    assert facts["between"] == ["sochi", "washington"]
    assert facts["members"] == ["interpreter", "sochi", "washington"]
    assert facts["epochs"] == [
        {"epoch": 0, "roster": ["sochi", "washington"], "security_code": "31415"},
        {"epoch": 1, "roster": ["interpreter", "sochi", "washington"], "security_code": "27182"},
    ]
    assert (facts["line_id"], facts["charter_version"]) == ("sochi-washington", 3)


def test_summary_differs_when_a_fact_differs(tmp_path: Path, key: SigningKey) -> None:
    with CallLog.open(tmp_path / "c.sqlite", "sochi", key) as c:
        c.append("call-42", "ring", dict(LINE), T0)
        c.append("call-42", "epoch", {"epoch": 0, "roster": ["sochi", "washington"]}, T0)
        c.append("call-42", "security_code", {"epoch": 0, "security_code": "99999"}, T0)
        other = c.call_summary("call-42", "washington")
    with CallLog.open(tmp_path / "d.sqlite", "sochi", key) as d:
        d.append("call-42", "ring", dict(LINE), T0)
        d.append("call-42", "epoch", {"epoch": 0, "roster": ["sochi", "washington"]}, T0)
        d.append("call-42", "security_code", {"epoch": 0, "security_code": "31415"}, T0)
        assert d.call_summary("call-42", "washington") != other
        d.append("call-42", "security_code", {"epoch": 0, "security_code": "00000"}, T0)
        with pytest.raises(StateError, match="different security code"):
            d.call_summary("call-42", "washington")
        with pytest.raises(StateError, match="no ring or answer"):
            d.call_summary("call-none", "washington")


def test_cosignature_exchange_and_audit(
    pair: tuple[CallLog, CallLog], key: SigningKey, peer_key: SigningKey
) -> None:
    a, b = pair
    sa, sig_a = a.sign_summary("call-42", "washington", T0 + 10)
    sb, sig_b = b.sign_summary("call-42", "sochi", T0 + 10)
    a.add_cosignature("call-42", "washington", peer_key.public, sb, sig_b, T0 + 11)
    b.add_cosignature("call-42", "sochi", key.public, sa, sig_a, T0 + 11)
    for log in (a, b):
        cos = log.cosignatures("call-42")
        assert {c.signer_id for c in cos} == {"sochi", "washington"}
        assert {c.summary for c in cos} == {sa}
    charter_keys = {"sochi": key.public, "washington": peer_key.public}
    report = a.verify(key.public, peer_keys=charter_keys)
    assert [(c.signer_id, c.identity_checked) for c in report.cosignatures] == [
        ("sochi", True),
        ("washington", True),
    ]
    unchecked = b.verify(peer_key.public)
    assert [c.identity_checked for c in unchecked.cosignatures] == [True, False]
    # an auditor with only the public keys checks a stored signature by itself
    verify_summary_signature(key.public, sa, sig_a)
    # a cosigner the charter does not list is refused
    with pytest.raises(BadLogEntry) as info:
        a.verify(key.public, peer_keys={"sochi": key.public})
    assert info.value.reason == "unknown_signer"
    # a charter key that did not make the signature is refused
    with pytest.raises(BadLogEntry) as info:
        a.verify(key.public, peer_keys={"sochi": key.public, "washington": key.public})
    assert info.value.reason == "bad_cosignature"
    with pytest.raises(StateError, match="already stored"):
        a.add_cosignature("call-42", "washington", peer_key.public, sb, sig_b, T0 + 12)


def test_cosignature_by_the_wrong_signer_is_refused(
    pair: tuple[CallLog, CallLog], key: SigningKey, peer_key: SigningKey
) -> None:
    a, b = pair
    sb, _ = b.sign_summary("call-42", "sochi", T0 + 10)
    impostor = SigningKey.generate()
    with pytest.raises(SignatureError):
        a.add_cosignature(
            "call-42", "washington", peer_key.public, sb, sign_summary(impostor, sb), T0
        )
    with pytest.raises(SignatureError):
        a.add_cosignature("call-42", "washington", peer_key.public, sb, b"\x00" * 64, T0)
    assert a.cosignatures("call-42") == []
    assert a.rejected["bad_signature"] == 2


def test_cosignature_over_a_wrong_summary_is_refused(
    pair: tuple[CallLog, CallLog], key: SigningKey, peer_key: SigningKey
) -> None:
    a, b = pair
    b.append("call-42", "security_code", {"epoch": 2, "security_code": "1"}, T0)
    b.append("call-42", "epoch", {"epoch": 3, "roster": ["sochi", "washington"]}, T0)
    sb, sig_b = b.sign_summary("call-42", "sochi", T0 + 10)
    with pytest.raises(SummaryMismatch, match="fields differ: epochs"):
        a.add_cosignature("call-42", "washington", peer_key.public, sb, sig_b, T0)
    assert a.cosignatures("call-42") == []
    assert a.rejected["summary_mismatch"] == 1
    a.verify(key.public)


def test_summary_of_another_call_is_refused(
    pair: tuple[CallLog, CallLog], peer_key: SigningKey
) -> None:
    a, b = pair
    sb, sig_b = b.sign_summary("call-42", "sochi", T0 + 10)
    a.append("call-43", "ring", dict(LINE), T0)
    with pytest.raises(SummaryMismatch, match="call_id"):
        a.add_cosignature("call-43", "washington", peer_key.public, sb, sig_b, T0)


def test_entry_inserted_beyond_an_untouched_head_blocks_appends(
    filled: Path, key: SigningKey
) -> None:
    with CallLog.open(filled) as log:
        last = log.entries()[-1]
    sql(
        filled,
        "INSERT INTO entries VALUES (6, 1, 'call-1', 'hangup', ?, ?, ?, ?)",
        b"N",
        last.entry_hash,
        bytes(32),
        bytes(64),
    )
    with pytest.raises(BadLogEntry) as info:
        CallLog.open(filled, "sochi", key)
    assert (info.value.index, info.value.reason) == (6, "tail_mismatch")

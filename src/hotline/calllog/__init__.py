"""The call log: append-only, hash-chained, signed, one SQLite file per terminal.

Every call event a terminal sees is appended as one entry. An entry's hash is SHA-256 over
the canonical encoding (HCE, :mod:`hotline.encoding`) of all its fields, including the hash
of the entry before it, so the entries form a chain; the terminal signs each entry hash with
its identity key. A separate *head* row holds the number of entries and the hash of the last
one, re-signed at every append, so that cutting entries off the end is detected too.

At hang-up the two terminals of a call sign the same *call summary* bytes
(:meth:`CallLog.call_summary`): only facts both sides agree on (call id, line id, charter
version, the pair, the members and every shared epoch with its security code). Each side
stores its own signature and the peer's (``cosign`` entries), so an auditor holding only the
charter's public keys can check, from either log alone, that both terminals signed the same
account of the call. The format and its limits are specified in ``docs/call-log.md``.

This module is pure apart from ``sqlite3``: time is passed in (``now``, seconds), nothing
reads a clock.
"""

from hotline.calllog.log import CallLog
from hotline.calllog.records import (
    ENTRY_HASH_CTX,
    ENTRY_SIG_CTX,
    EVENT_ANSWER,
    EVENT_COSIGN,
    EVENT_DECLINE,
    EVENT_E2EE_FAILURE,
    EVENT_EPOCH,
    EVENT_HANGUP,
    EVENT_REKEY,
    EVENT_RING,
    EVENT_ROSTER,
    EVENT_SECURITY_CODE,
    EVENT_STATS_SUMMARY,
    EVENT_TRANSPORT_FAILURE,
    FORMAT_VERSION,
    GENESIS_HASH,
    HASH_SIZE,
    HEAD_SIG_CTX,
    KNOWN_EVENTS,
    LOG_FILENAME,
    MAX_ID_LENGTH,
    MAX_PAYLOAD_SIZE,
    SUMMARY_CTX,
    CheckedCosignature,
    Cosignature,
    LogEntry,
    VerifyReport,
    entry_hash,
    entry_signing_bytes,
    head_signing_bytes,
    log_path,
    sign_summary,
    verify_summary_signature,
)

__all__ = [
    "ENTRY_HASH_CTX",
    "ENTRY_SIG_CTX",
    "EVENT_ANSWER",
    "EVENT_COSIGN",
    "EVENT_DECLINE",
    "EVENT_E2EE_FAILURE",
    "EVENT_EPOCH",
    "EVENT_HANGUP",
    "EVENT_REKEY",
    "EVENT_RING",
    "EVENT_ROSTER",
    "EVENT_SECURITY_CODE",
    "EVENT_STATS_SUMMARY",
    "EVENT_TRANSPORT_FAILURE",
    "FORMAT_VERSION",
    "GENESIS_HASH",
    "HASH_SIZE",
    "HEAD_SIG_CTX",
    "KNOWN_EVENTS",
    "LOG_FILENAME",
    "MAX_ID_LENGTH",
    "MAX_PAYLOAD_SIZE",
    "SUMMARY_CTX",
    "CallLog",
    "CheckedCosignature",
    "Cosignature",
    "LogEntry",
    "VerifyReport",
    "entry_hash",
    "entry_signing_bytes",
    "head_signing_bytes",
    "log_path",
    "sign_summary",
    "verify_summary_signature",
]

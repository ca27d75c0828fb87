"""Call log throughput against its baseline in the same run.

Appends: a signed, hash-chained append (two Ed25519 signatures, one SHA-256, one durable
SQLite transaction) against the baseline of the same row inserted in its own SQLite
transaction with no crypto. Verify: entries checked per second (no baseline: reported as is).

    .venv/bin/python bench/calllog.py [N]
"""

from __future__ import annotations

import sqlite3
import sys
import tempfile
import time
from pathlib import Path

from hotline.calllog import CallLog
from hotline.keys import SigningKey


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 2000
    key = SigningKey.generate()
    with tempfile.TemporaryDirectory() as tmp:
        base = sqlite3.connect(Path(tmp) / "base.sqlite", isolation_level=None)
        base.execute("CREATE TABLE t (i INTEGER PRIMARY KEY, call TEXT, payload BLOB, h BLOB)")
        t0 = time.perf_counter()
        for i in range(n):
            base.execute("BEGIN IMMEDIATE")
            base.execute("INSERT INTO t VALUES (?, ?, ?, ?)", (i, "c", b"x" * 40, b"h" * 96))
            base.execute("COMMIT")
        t_base = time.perf_counter() - t0
        base.close()

        log = CallLog.open(Path(tmp) / "log.sqlite", "bench", key)
        t0 = time.perf_counter()
        for i in range(n):
            log.append(f"call-{i // 30}", "stats_summary", {"i": i, "frames": 12345}, 1.7e9 + i)
        t_log = time.perf_counter() - t0
        t0 = time.perf_counter()
        log.verify(key.public)
        t_verify = time.perf_counter() - t0
        log.close()
    print(f"entries: {n}")
    print(f"baseline sqlite commits/s: {n / t_base:8.0f}")
    print(f"call log appends/s:        {n / t_log:8.0f}   (ratio of time {t_log / t_base:.2f}x)")
    print(f"call log verified/s:       {n / t_verify:8.0f}")


if __name__ == "__main__":
    main()

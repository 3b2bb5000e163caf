"""Audit log throughput on this machine: append 100,000 records to SQLite, then verify them.

Appends go in transactions of --batch events (each event still its own chained record; one
fsync per transaction). Also times single-event appends (one fsync each) on a sample, the
rate a busy pipeline of separate gkit commands would see.

    .venv/bin/python bench/audit_bench.py [--records 100000] [--batch 1000]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from granite_ops_kit.audit.records import Event, Subject
from granite_ops_kit.audit.service import verify_store
from granite_ops_kit.audit.store import open_store


def _event(i: int) -> Event:
    return Event(
        "artifact.verified",
        Subject(f"model-{i % 50}", "rev", f"sha256:{i:064x}"),
        "success",
        reason="benchmark",
        evidence={"model.sig": f"sha256:{i:064x}"},
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--records", type=int, default=100_000)
    ap.add_argument("--batch", type=int, default=1000)
    ap.add_argument("--singles", type=int, default=500)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        store = open_store(f"sqlite:///{Path(tmp) / 'audit.db'}")
        t = time.perf_counter()
        for start in range(0, args.records, args.batch):
            store.append_many(
                [_event(i) for i in range(start, min(start + args.batch, args.records))]
            )
        append_s = time.perf_counter() - t
        t = time.perf_counter()
        for i in range(args.singles):
            store.append(_event(i))
        single_s = time.perf_counter() - t
        t = time.perf_counter()
        verdict = verify_store(store)
        verify_s = time.perf_counter() - t
        store.close()
    total = args.records + args.singles
    print(
        f"append {args.records:,} records in batches of {args.batch}: {append_s:.1f} s "
        f"({args.records / append_s:,.0f} records/s)"
    )
    print(
        f"append {args.singles} records one transaction each: {single_s:.1f} s "
        f"({args.singles / single_s:,.0f} records/s)"
    )
    print(
        f"verify {total:,} records: {verify_s:.1f} s ({total / verify_s:,.0f} records/s), "
        f"ok={verdict.ok}"
    )


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Judges a run: the fake bot's report (GET /_bot/report) against the mock gateway's ledger
(GET /_mock/ledger). Prints one line per shard and a verdict; exits 1 if any event the bot had
to receive is missing, or arrived twice or out of order, or the mock saw a protocol violation.

What the bot had to receive, per session: every dispatch the mock sent up to the highest
sequence the bot got (the engine stops reading when it is stopped; what was in flight then is
Discord's to replay on the next resume), except the redundant MESSAGE_UPDATEs shardgate drops
on purpose. The fake bot's own `gaps` counts those dropped updates too; this check does not.

    check_delivery.py LEDGER.json REPORT.json
"""

import json
import sys


def ranges_to_set(ranges):
    seqs = set()
    for first, last in ranges:
        seqs.update(range(first, last + 1))
    return seqs


def main(ledger_path, report_path):
    ledger = json.load(open(ledger_path))
    report = json.load(open(report_path))
    problems = 0
    totals = {"expected": 0, "received": 0, "dropped_redundant": 0}
    for shard_id, shard in sorted(ledger["shards"].items(), key=lambda item: int(item[0])):
        shard_report = report["shards"].get(shard_id, {"runs": [], "duplicates": 0, "out_of_order": 0})
        runs = {run.get("session_id"): run for run in shard_report["runs"]}
        missing = expected_count = redundant = 0
        for session in shard["sessions"]:
            run = runs.get(session["session_id"])
            received = ranges_to_set(run["ranges"]) if run else set()
            highest = max(received, default=0)
            optional = set(session.get("redundant_update_seqs", [])) | set(session.get("truncated_seqs", []))
            expected = {
                seq
                for seq in range(session["first_seq"], min(session["last_seq"], highest) + 1)
                if seq not in optional
            }
            expected_count += len(expected)
            missing += len(expected - received)
            redundant += len(optional - received)
        duplicates = shard_report.get("duplicates", 0)
        out_of_order = shard_report.get("out_of_order", 0)
        problems += missing + duplicates + out_of_order
        totals["expected"] += expected_count
        totals["received"] += shard_report.get("records", 0)
        totals["dropped_redundant"] += redundant
        print(
            f"  shard {shard_id:>3}: {shard_report.get('records', 0):>6} received, "
            f"{missing} missing, {duplicates} duplicated, {out_of_order} out of order "
            f"({redundant} redundant MESSAGE_UPDATEs dropped on purpose)"
        )
    violations = ledger.get("violations", [])
    problems += len(violations)
    for violation in violations:
        print(f"  protocol violation: {violation.get('kind')}: {violation.get('detail')}")
    verdict = "every event arrived once and in order" if problems == 0 else "PROBLEM: see above"
    print(
        f"  {totals['received']} events received of {totals['expected']} to deliver, "
        f"{len(violations)} protocol violations: {verdict}"
    )
    return 0 if problems == 0 else 1


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    sys.exit(main(sys.argv[1], sys.argv[2]))

"""The ledger of trained sample ids survives a crash mid-write and truncates to a checkpoint."""

from __future__ import annotations

from framework.ledger import Ledger


def test_record_truncate_and_torn_line(tmp_path):
    ledger = Ledger(tmp_path / "run" / "ledger.jsonl")
    for step in range(5):
        ledger.record(step, [f"p{step}#1", f"p{step}#0"])
    with ledger.path.open("a") as f:
        f.write('{"step": 5, "sample_')  # the process died while writing
    assert [e["step"] for e in ledger.entries()] == [0, 1, 2, 3, 4]
    assert ledger.entries()[0]["sample_ids"] == ["p0#0", "p0#1"]
    ledger.truncate_after(3)
    assert ledger.sample_ids() == ["p0#0", "p0#1", "p1#0", "p1#1", "p2#0", "p2#1"]
    ledger.record(3, ["x#0"])
    assert [e["step"] for e in ledger.entries()] == [0, 1, 2, 3]
    ledger.truncate_after(0)
    assert ledger.entries() == [] and ledger.path.exists()

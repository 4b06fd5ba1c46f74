"""hl7apy's explanation of quarantined HL7 v2 messages is bounded per reason per file."""

from __future__ import annotations

import pytest

from pipelines.common.unit import FileContext, Quarantine, Unit
from pipelines.convert.hl7v2 import converter as hl7
from pipelines.convert.hl7v2.converter import EXPLAINED_PER_REASON_PER_FILE, Hl7v2Converter

MSG = "MSH|^~\\&|APP|FAC|RCV|RFAC|20240101000000||ADT^A01^ADT_A01|{n}|P|2.5\rPID|1||||Roe^Ray\r"


def _ctx(sha: str) -> FileContext:
    return FileContext("run", 1, sha, None, "hl7v2", None, "src", None)


def _messages(conv: Hl7v2Converter, ctx: FileContext, n: int) -> list[str]:
    out = []
    for i in range(n):
        raw = MSG.format(n=i).encode()
        with pytest.raises(Quarantine) as q:
            conv.convert(Unit(i + 1, "hl7_message", raw, 0, len(raw)), ctx)
        assert q.value.reason == "hl7_missing_required"
        out.append(q.value.message)
    return out


def test_the_first_messages_of_a_reason_are_explained_the_rest_say_so(monkeypatch):
    calls = []
    real = hl7.explain_invalid
    monkeypatch.setattr(hl7, "explain_invalid", lambda raw, msg: calls.append(1) or real(raw, msg))
    conv = Hl7v2Converter()
    n = EXPLAINED_PER_REASON_PER_FILE + 5
    messages = _messages(conv, _ctx("a" * 64), n)
    assert len(calls) == EXPLAINED_PER_REASON_PER_FILE  # the validator ran only for the first ones
    capped = f"PID-3 is empty; structure not explained past the first {EXPLAINED_PER_REASON_PER_FILE}"
    assert messages[EXPLAINED_PER_REASON_PER_FILE:] == [capped + " of this reason in this file"] * 5
    assert all(m.startswith("PID-3 is empty") and "not explained" not in m for m in messages[:-5])
    # Another file starts its own count.
    assert "not explained" not in _messages(conv, _ctx("b" * 64), 1)[0]
    assert len(calls) == EXPLAINED_PER_REASON_PER_FILE + 1


def test_one_message_files_of_a_commit_group_share_the_count(monkeypatch):
    """A feed folder of one message per file is bounded per commit group, not per file."""
    calls = []
    real = hl7.explain_invalid
    monkeypatch.setattr(hl7, "explain_invalid", lambda raw, msg: calls.append(1) or real(raw, msg))
    conv = Hl7v2Converter()

    def one(sha: str, group: int, run: str = "run") -> str:
        ctx = FileContext(run, 1, sha, None, "hl7v2", None, "src", None, group)
        return _messages(conv, ctx, 1)[0]

    n = EXPLAINED_PER_REASON_PER_FILE + 3
    messages = [one(f"{i:064x}", group=4) for i in range(n)]
    assert len(calls) == EXPLAINED_PER_REASON_PER_FILE
    assert messages[-1].endswith(" of this reason in this commit group")
    assert "not explained" not in one("f" * 64, group=5)  # the next group starts its own count
    assert "not explained" not in one("e" * 64, group=4, run="run-2")  # and so does another run
    assert len(calls) == EXPLAINED_PER_REASON_PER_FILE + 2

"""HL7 v2 files (single messages, batches, MLLP archives): each message is one unit."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator

from pipelines import formats
from pipelines.common.unit import Converted, Converter, FileContext, Quarantine, Skip, Unit
from pipelines.convert.hl7v2.messages import convert_message
from pipelines.convert.hl7v2.reader import iter_units
from pipelines.convert.hl7v2.tokenizer import Hl7ParseError, Message, parse_message
from pipelines.convert.hl7v2.validate import explain_invalid

# hl7apy's explanation costs ~15-70 ms a message: the first few quarantined messages of each reason in
# a commit group (a file alone, a slice of an archive, or many small files, e.g. a feed folder of one
# message per file) get it, the rest of that reason there say where to look instead, so a feed with
# many bad messages spends its time converting rather than explaining the same fault again. A file
# converted outside a group counts on its own.
EXPLAINED_PER_REASON_PER_FILE = 20


class Hl7v2Converter(Converter):
    name = "hl7v2"
    formats = frozenset({formats.HL7V2})
    chunked = True  # messages stand alone: archives of millions commit in chunks and resume

    def __init__(self) -> None:
        self._explained: Counter[tuple[str, str | int, str]] = Counter()

    def units(self, ctx: FileContext) -> Iterator[Unit]:
        for raw in iter_units(ctx.path):
            yield Unit(raw.position, raw.kind, raw.data, raw.byte_offset, raw.byte_length)

    def convert(self, unit: Unit, ctx: FileContext) -> Converted:
        if unit.kind == "hl7_batch_envelope":
            raise Skip("hl7_batch_envelope")
        if unit.kind == "hl7_fragment":
            raise Quarantine("hl7_not_a_message", f"{unit.byte_length} bytes outside any HL7 message")
        raw: bytes = unit.payload
        try:
            message = parse_message(raw)
        except Hl7ParseError as exc:
            raise Quarantine(exc.reason, exc.message) from None
        try:
            return convert_message(message, ctx.source_system, f"{ctx.file_sha256}:{unit.position}")
        except Quarantine as q:
            where = "in this file" if ctx.group is None else "in this commit group"
            key = (ctx.run_id, ctx.file_sha256 if ctx.group is None else ctx.group, q.reason)
            if self._explained[key] >= EXPLAINED_PER_REASON_PER_FILE:
                detail = (
                    f"{q.message}; structure not explained past the first {EXPLAINED_PER_REASON_PER_FILE}"
                )
                raise Quarantine(q.reason, f"{detail} of this reason {where}", q.resource_type) from None
            self._explained[key] += 1
            raise Quarantine(q.reason, _with_structure(q.message, raw, message), q.resource_type) from None


def _with_structure(message: str, raw: bytes, parsed: Message) -> str:
    """Add hl7apy's structural finding to a quarantine message: slow, so only on this path."""
    reason, detail = explain_invalid(raw, parsed)
    return message if reason is None or detail in message else f"{message}; {detail}"

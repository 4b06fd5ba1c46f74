"""Write the demo patients as HL7 v2.5.1 archives (plain, batch-enveloped, MLLP-framed) with their defects."""

from __future__ import annotations

import hashlib
import random
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

from pipelines.demo.hl7v2_defects import DEFECTS, defect_bytes
from pipelines.demo.hl7v2_messages import Message, adt_messages, oru_messages, vitals_messages
from pipelines.demo.hl7v2_orders import dft_messages, siu_messages, vxu_messages
from pipelines.demo.hl7v2_segments import ENCODING_CHARACTERS, V2, dtm
from pipelines.demo.records import PatientRecord, export_time
from pipelines.demo.summary import Defect, FileSummary

HL7_DIR = "sources/hl7v2"
OWNED = r"(adt|oru|vxu|dft|siu)\.hl7|oru-mllp\.bin"
HL7_FORMAT = "hl7v2"
# file name -> (framing, the patient's messages it holds)
STREAMS: dict[str, tuple[str, Callable[[PatientRecord], Iterator[Message]]]] = {
    "adt.hl7": ("plain", adt_messages),
    "oru.hl7": ("plain", oru_messages),
    "vxu.hl7": ("plain", vxu_messages),
    "dft.hl7": ("batch", dft_messages),
    "siu.hl7": ("plain", siu_messages),
    "oru-mllp.bin": ("mllp", vitals_messages),
}
_MLLP_START, _MLLP_END = b"\x0b", b"\x1c\r"


def plan_hl7_defects(seed: int) -> dict[str, list[tuple[int, str]]]:
    """file -> [(valid messages written before it, defect kind)]: a fixed handful, positions by seed."""
    rng = random.Random(f"{seed}:hl7v2-defects")  # noqa: S311 - reproducible test data, not secrets
    return {
        "adt.hl7": [
            (rng.randint(1, 30), "junk"),
            (rng.randint(1, 30), "no_msh9"),
            (rng.randint(1, 30), "latin1"),
        ],
        "vxu.hl7": [(rng.randint(1, 10), "bad_delimiters")],
        "siu.hl7": [(rng.randint(1, 20), "unknown_type")],
        "oru.hl7": [(1 << 62, "truncated")],  # always after the last message: an interrupted copy
    }


class _Archive:
    """One archive file being written: its bytes stream to disk and only counts stay in memory."""

    def __init__(self, out: Path, name: str, framing: str, plan: list[tuple[int, str]], seed: int) -> None:
        self.rel = f"{HL7_DIR}/{name}"
        self.framing = framing
        self.seed = seed
        path = out / self.rel
        path.parent.mkdir(parents=True, exist_ok=True)
        self.fh = path.open("wb", buffering=1 << 20)
        self.sha = hashlib.sha256()
        self.size = self.units = self.valid = 0
        self.messages: Counter[str] = Counter()
        self.defects: list[Defect] = []
        # Stable sort: kinds planned at the same point keep their plan order.
        self.pending = sorted(plan, key=lambda item: item[0])
        if framing == "batch":
            self._envelope("FHS", name, seed)
            self._envelope("BHS", name, seed)

    def _unit(self, data: bytes, terminated: bool = True) -> int:
        if self.framing == "mllp":
            data = _MLLP_START + data + _MLLP_END
        elif terminated:
            data += b"\n"
        self.fh.write(data)
        self.sha.update(data)
        self.size += len(data)
        self.units += 1
        return self.units

    def _envelope(self, name: str, file_name: str, seed: int) -> None:
        feed, receiver = V2["feeds"]["dft"], V2["receiver"]
        created = dtm(export_time(seed), 0)
        header = [feed["application"], feed["facility"], receiver["application"], receiver["facility"]]
        fields = [*header, created, "", file_name, "", f"{name}{seed:04d}"]
        self._unit(f"{name}|{ENCODING_CHARACTERS}|{'|'.join(fields)}\r".encode())

    def message(self, message_type: str, data: bytes) -> None:
        self._unit(data)
        self.messages[message_type] += 1
        self.valid += 1
        while self.pending and self.pending[0][0] <= self.valid:
            self._defect(self.pending.pop(0)[1])

    def _defect(self, kind: str) -> None:
        unit_kind, outcome, reason, description, message_type = DEFECTS[kind]
        position = self._unit(defect_bytes(kind, self.seed), terminated=kind != "truncated")
        if outcome == "converted":
            self.messages[message_type] += 1
        self.defects.append(Defect(self.rel, unit_kind, position, outcome, reason, description))

    def close(self) -> FileSummary:
        # Defects planned past the end go last; junk first, so it still sits between two messages.
        for _, kind in sorted(self.pending, key=lambda item: item[1] != "junk"):
            self._defect(kind)
        if self.framing == "batch":
            self._unit(f"BTS|{self.valid}\r".encode())
            self._unit(b"FTS|1\r")
        self.fh.close()
        return FileSummary(
            path=self.rel,
            format=HL7_FORMAT,
            size_bytes=self.size,
            sha256=self.sha.hexdigest(),
            units=self.units,
            framing=self.framing,
            messages=dict(sorted(self.messages.items())),
        )


class Hl7v2Export:
    """Every HL7 archive of a demo run, fed one patient at a time alongside the FHIR export.

    Each segment ends with a carriage return (\\r), the last of a message included. In the plain files
    (adt, oru, vxu, siu) and the batch file (dft.hl7, wrapped in FHS/BHS ... BTS/FTS) every unit, that is
    a message, a batch-envelope segment or a fragment of junk, is followed by one line feed (\\n), so no
    unit holds a \\n. The MLLP archive (oru-mllp.bin) frames each message as 0x0B message 0x1C 0x0D, with
    nothing between frames. Unit positions in the summary are 1-based and count every message, envelope
    segment and fragment of a file in order.
    """

    def __init__(self, out: Path, seed: int) -> None:
        plan = plan_hl7_defects(seed)
        self.archives = [
            (_Archive(out, name, framing, plan.get(name, []), seed), render)
            for name, (framing, render) in STREAMS.items()
        ]

    def write(self, patient: PatientRecord) -> None:
        for archive, render in self.archives:
            for message_type, data in render(patient):
                archive.message(message_type, data)

    def close(self) -> tuple[list[FileSummary], list[Defect]]:
        files, defects = [], []
        for archive, _ in self.archives:
            files.append(archive.close())
            defects.extend(archive.defects)
        return files, defects

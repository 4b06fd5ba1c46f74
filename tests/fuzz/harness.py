"""Fuzz readers with Hypothesis: `python -m tests.fuzz.harness READER... [--examples N] [--seconds S]`.

Every case must end in the ledger with a documented reason (never converter_error), never crash the
process, hang or pass the memory and CPU limits the caller sets on this process (resource.setrlimit).
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import sys
import tempfile
import threading
import time
from pathlib import Path

from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st

from pipelines import formats
from pipelines.common.ledger import LedgerWriter
from pipelines.common.reasons import check_reason
from pipelines.common.unit import BatchConverter, FileContext, UnreadableFile, convert_one
from pipelines.common.warehouse import open_warehouse
from pipelines.convert import handler_for
from pipelines.land import _local_output
from pipelines.load import create_stage
from tests.fuzz.cases import READERS, seeds

# Bytes that matter to some reader: delimiters, framing, nesting, markup, NUL and invalid UTF-8.
TOKENS = [
    b"\x00",
    b"\x1c\r",
    b"\x0b",
    b"|",
    b"^",
    b"~",
    b"\\",
    b"&",
    b"\r",
    b"\n",
    b"[",
    b"{",
    b'"',
    b"<",
    b"\xff",
]


def mutated(pool: list[bytes]) -> st.SearchStrategy[bytes]:
    """A seed with a few byte flips, cuts, insertions of meaningful tokens and repeated slices."""

    @st.composite
    def build(draw) -> bytes:
        data = bytearray(draw(st.sampled_from(pool)))
        for _ in range(draw(st.integers(0, 6))):
            at = draw(st.integers(0, max(len(data) - 1, 0)))
            op = draw(st.sampled_from(("flip", "cut", "insert", "repeat", "truncate")))
            if op == "flip" and data:
                data[at] = draw(st.integers(0, 255))
            elif op == "cut":
                del data[at : at + draw(st.integers(1, 64))]
            elif op == "insert":
                data[at:at] = draw(st.sampled_from(TOKENS)) * draw(st.integers(1, 300))
            elif op == "repeat":
                data[at:at] = data[at : at + draw(st.integers(1, 200))] * draw(st.integers(1, 50))
            else:
                del data[at:]
        return bytes(data)

    return st.one_of(build(), st.binary(max_size=512))


class FileReaders:
    """Each case goes through detection and its converter into a real warehouse's ledger."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.con = open_warehouse(folder / "w.duckdb")
        create_stage(self.con)
        self.cases = 0

    def check(self, data: bytes) -> None:
        self.cases += 1
        sha = hashlib.sha256(data + str(self.cases).encode()).hexdigest()
        path = self.folder / sha
        path.write_bytes(data)
        try:
            fmt, detail = formats.detect(path)
            ctx = FileContext("fuzz", self.cases, sha, path, fmt, detail, "fuzz")
            handler = handler_for(fmt)
            writer = LedgerWriter(self.con, ctx)
            units = 0
            try:
                if isinstance(handler, BatchConverter):
                    handler.convert_file(ctx, self.con, writer)
                else:
                    for unit in handler.units(ctx):
                        units += 1
                        convert_one(lambda u: handler.convert(u, ctx), handler.name, unit, ctx, writer)
            except UnreadableFile as exc:
                check_reason(exc.reason, "quarantined")
                return
            writer.flush()
            rows = self.con.execute(
                "SELECT unit_position, outcome, reason FROM ops.ledger WHERE file_sha256 = ?", [sha]
            ).fetchall()
            assert units == 0 or len(rows) == units, "a unit without its one ledger row"
            assert len({r[0] for r in rows}) == len(rows), "a unit with two ledger rows"
            for _, outcome, reason in rows:
                assert reason != "converter_error", "converter_error is never the answer to an input"
                if reason is not None:
                    check_reason(reason, outcome)
        finally:
            self.con.execute("DELETE FROM _stage")
            path.unlink()


def check_manifest(folder: Path, data: bytes) -> None:
    url = data.decode("utf-8", "surrogateescape")
    manifest = folder / "export" / "manifest.json"
    out = _local_output(manifest, {"url": url})
    if isinstance(out, Path):
        assert out.is_relative_to(manifest.parent.resolve()), "an output outside the manifest's folder"
    else:
        reason, message = out
        check_reason(reason, "quarantined")
        assert not url.strip() or len(url) < 3 or url not in message, "a message quoting the url"


class Mllp:
    """One listener for the whole campaign; each case is one connection that must get only AA/AE/AR."""

    def __init__(self, folder: Path) -> None:
        from pipelines.listen import serve

        self.loop = asyncio.new_event_loop()
        self.stop = asyncio.Event()
        ready = threading.Event()
        self.port = 0

        def on_ready(port: int) -> None:
            self.port = port
            ready.set()

        async def main() -> None:
            await serve(
                folder / "feeds",
                "127.0.0.1",
                0,
                ready=on_ready,
                stop=self.stop,
                max_frame_bytes=1 << 20,
                idle_timeout=2,
                read_timeout=2,
            )

        self.thread = threading.Thread(target=self.loop.run_until_complete, args=(main(),), daemon=True)
        self.thread.start()
        assert ready.wait(20), "listener did not start"

    def check(self, data: bytes) -> None:
        async def exchange() -> bytes:
            reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
            try:
                writer.write(data)
                await writer.drain()
                writer.write_eof()
                return await asyncio.wait_for(reader.read(), 20)
            except ConnectionError:
                return b""
            finally:
                writer.close()

        reply = asyncio.run(exchange())
        for frame in reply.split(b"\x1c\r"):
            if not frame.strip():
                continue
            assert frame.startswith(b"\x0bMSH"), "a reply that is not an MLLP-framed ACK"
            msa = next(s for s in frame.split(b"\r") if s.startswith(b"MSA"))
            assert msa[4:6] in (b"AA", b"AE", b"AR"), "an ACK code outside AA/AE/AR"


def run(reader: str, examples: int, seed_value: int, corpus_seeds: int = 12) -> None:
    pool = seeds(reader, corpus_seeds)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        if reader == "manifest":
            (folder / "export").mkdir()
            (folder / "export" / "Patient.ndjson").write_bytes(b"{}\n")
            checker = lambda data: check_manifest(folder, data)  # noqa: E731
        elif reader == "mllp":
            checker = Mllp(folder).check
        else:
            checker = FileReaders(folder).check
        for case in pool:  # every checked-in hostile case and corpus seed, unmutated, first
            checker(case)

        @seed(seed_value)
        @settings(
            max_examples=examples,
            deadline=None,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        @given(mutated(pool))
        def fuzz(data: bytes) -> None:
            checker(data)

        fuzz()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="tests.fuzz.harness")
    parser.add_argument("readers", nargs="+", choices=READERS, metavar="READER")
    parser.add_argument("--examples", type=int, default=25)
    parser.add_argument("--seconds", type=float, default=0, help="go on with new seeds until this long")
    parser.add_argument("--seed", type=int, default=20)
    parser.add_argument("--corpus-seeds", type=int, default=12, help="corpus files per reader used as seeds")
    args = parser.parse_args(argv)
    for reader in args.readers:  # several readers share one process (and its imports)
        started = time.monotonic()
        rounds = 0
        while True:
            run(reader, args.examples, args.seed + rounds, args.corpus_seeds)
            rounds += 1
            if time.monotonic() - started >= args.seconds:
                break
        print(f"fuzz {reader}: {rounds} rounds of {args.examples} examples, no failure", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

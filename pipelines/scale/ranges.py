"""A large NDJSON file cut at line boundaries into byte ranges, so several workers convert one file.

The cuts are exactly where the one-process converter closes its batches (after the last newline within
every CHUNK_BYTES of the file), and each range converts as one batch: a split file commits the same
rows in the same order as an unsplit one, pooled or not. Every line stays its own unit, and the line
positions of each range are counted in the cutting pass, so the ledger is the same too.
"""

from __future__ import annotations

from pipelines.common.config import RunConfig
from pipelines.convert import handler_for
from pipelines.scale.plan import FileWork
from pipelines.scale.slices import Slice, file_context

READ_BYTES = 16 << 20  # the cutting pass reads this much at a time (it only counts newlines)


def rangeable(work: FileWork) -> bool:
    """A file of more than one converter batch, read by a converter that converts byte ranges."""
    handler = handler_for(work.format)
    chunk = getattr(handler, "range_chunk_bytes", None)
    return chunk is not None and work.size > chunk()


def cut_ranges(config: RunConfig, work: FileWork, first_index: int) -> list[Slice] | None:
    """The file's ranges after what an interrupted run committed, as slices with indexes from
    first_index; None when the file is one range or cannot be read (the group path then handles it)."""
    handler = handler_for(work.format)
    try:
        cuts, lines = _cuts(file_context(config, work).path, handler.range_chunk_bytes())
    except OSError:
        return None
    if len(cuts) < 3:
        return None
    # Range i holds the lines numbered lines[i] + 1 .. lines[i + 1], bytes cuts[i] .. cuts[i + 1].
    spans = [
        (cuts[i], cuts[i + 1], lines[i] + 1, lines[i + 1])
        for i in range(len(cuts) - 1)
        if lines[i + 1] > work.resume
    ]
    if len(spans) < 2:
        return None
    out = [
        Slice(first_index + i, work, bytes=end - start, byte_range=(start, end, first))
        for i, (start, end, first, _last) in enumerate(spans)
    ]
    out[0].bytes += spans[0][0]  # the progress bar counts what an earlier run committed as done here
    out[-1].last, out[-1].total_units = True, lines[-1] - work.resume
    return out


def _cuts(path, chunk: int) -> tuple[list[int], list[int]]:
    """Byte offsets of the range bounds (0, cuts..., size) and the lines before each bound.

    A bound follows the last newline within each `chunk` bytes and the file's last newline, as the
    converter's batches end; a line is what the converter counts: every newline ends one, and
    unterminated text at the end of the file is one.
    """
    cuts, lines = [0], [0]
    offset = newlines = 0
    target = chunk
    last = b""
    seen = 0  # the offset just past the last newline of the blocks before this one (0: none yet)
    with path.open("rb") as fh:
        while block := fh.read(READ_BYTES):
            end = offset + len(block)
            while target <= end:
                # The last newline within the file's first `target` bytes, here or in an earlier block.
                i = block.rfind(b"\n", 0, target - offset)
                cut, before = (
                    (offset + i + 1, newlines + block.count(b"\n", 0, i + 1)) if i >= 0 else (seen, newlines)
                )
                if cut > cuts[-1]:
                    cuts.append(cut)
                    lines.append(before)
                target += chunk
            newlines += block.count(b"\n")
            r = block.rfind(b"\n")
            seen = offset + r + 1 if r >= 0 else seen
            offset, last = end, block[-1:]
    if seen > cuts[-1]:  # the converter's last read ends at the file's last newline, too
        cuts.append(seen)
        lines.append(newlines)
    total = newlines + (1 if offset and last != b"\n" else 0)
    if cuts[-1] == offset:  # the file ends on a bound: its last range would be empty
        cuts.pop()
        lines.pop()
    cuts.append(offset)
    lines.append(total)
    return cuts, lines

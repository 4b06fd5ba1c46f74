"""Arrow columns and tables from Python values, built from buffers so pyarrow never imports pandas.

`pa.array` over a Python list (or a numpy array) first asks pyarrow's pandas shim whether the object
is pandas-like, and the shim imports pandas to answer: about 45 MB and a quarter of a second of CPU in
a run that has no other use for pandas. The arrays built here are equal to `pa.array`'s for the types
a run hands DuckDB (strings, bytes, integers, floats, booleans, microsecond times, nulls); any other value
goes to `pa.array`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import pyarrow as pa

_NUMERIC = {
    pa.int8(): np.int8,
    pa.int16(): np.int16,
    pa.int32(): np.int32,
    pa.int64(): np.int64,
    pa.float64(): np.float64,
}
_STRING_LIMIT = 2**31 - 1  # a string array's int32 offsets; past it pa.array answers in chunks
_EPOCH, _NAIVE_EPOCH, _MICROSECOND = (
    datetime(1970, 1, 1, tzinfo=UTC),
    datetime(1970, 1, 1),
    timedelta(microseconds=1),
)


def array(values: Sequence[Any], type: pa.DataType | None = None) -> pa.Array | pa.ChunkedArray:
    """The Arrow array `pa.array(values, type)` builds; without a type, the one pyarrow infers."""
    values = values if isinstance(values, list) else list(values)
    if type is None:
        type = _infer(values)
    built = _build(values, type) if type is not None else None
    return pa.array(values, type) if built is None else built


def scalar(value: Any, type: pa.DataType) -> pa.Scalar:
    """`pa.scalar(value, type)`, for comparing an Arrow column with a Python value."""
    return array([value], type)[0]


def table(columns: Mapping[str, Sequence[Any] | pa.Array], schema: pa.Schema | None = None) -> pa.Table:
    """A table of these columns (lists are converted as `array` does; the schema's types when given)."""
    arrays = [
        col if isinstance(col, pa.Array | pa.ChunkedArray) else array(col, _type_of(schema, name))
        for name, col in columns.items()
    ]
    if schema is not None:
        return pa.Table.from_arrays(arrays, schema=schema)
    return pa.Table.from_arrays(arrays, names=list(columns))


def _type_of(schema: pa.Schema | None, name: str) -> pa.DataType | None:
    return None if schema is None else schema.field(name).type


def _infer(values: list[Any]) -> pa.DataType | None:
    """pyarrow's inference for columns of one Python scalar kind (and None); None: anything else."""
    kinds = {type(v) for v in values if v is not None}
    if not kinds:
        return pa.null()
    if len(kinds) > 1:
        return None  # mixed kinds (e.g. int and float): pyarrow's own rules decide
    kind = kinds.pop()
    if kind is str:
        return pa.string()
    if kind is bool:
        return pa.bool_()
    if kind is int:
        return pa.int64()
    if kind is float:
        return pa.float64()
    return None


def _build(values: list[Any], type: pa.DataType) -> pa.Array | None:
    n = len(values)
    if pa.types.is_null(type):
        return pa.nulls(n) if all(v is None for v in values) else None
    missing = sum(v is None for v in values)
    validity = bits(v is not None for v in values) if missing else None
    try:
        if type == pa.string():
            return _strings(values, n, validity, missing)
        if type in (pa.binary(), pa.large_binary()):
            return _bytes(values, type, n, validity, missing)
        if pa.types.is_timestamp(type) and type.unit == "us":
            return _times(values, type, n, validity, missing)
        if type == pa.bool_():
            if not all(v is None or _exactly(v, bool) for v in values):
                return None
            data = bits(v is True for v in values)
            return pa.Array.from_buffers(type, n, [validity, data], null_count=missing)
        dtype = _NUMERIC.get(type)
        if dtype is None:
            return None
        wanted = float if dtype is np.float64 else int
        if not all(v is None or _exactly(v, wanted) for v in values):
            return None
        data = np.fromiter((0 if v is None else v for v in values), dtype=dtype, count=n)
    except (OverflowError, UnicodeEncodeError):
        return None  # pa.array gives the error a caller would have had
    return pa.Array.from_buffers(type, n, [validity, pa.py_buffer(data)], null_count=missing)


def _exactly(value: Any, kind: type) -> bool:
    """Exactly this Python type (a bool is an int to isinstance, not to pyarrow's inference)."""
    return type(value) is kind


def _strings(values: list[Any], n: int, validity: pa.Buffer | None, missing: int) -> pa.Array | None:
    if not all(v is None or _exactly(v, str) for v in values):
        return None
    encoded = [b"" if v is None else v.encode("utf-8") for v in values]
    offsets = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(np.fromiter(map(len, encoded), dtype=np.int64, count=n), out=offsets[1:])
    if offsets[-1] > _STRING_LIMIT:
        return None
    buffers = [validity, pa.py_buffer(offsets.astype(np.int32)), pa.py_buffer(b"".join(encoded))]
    return pa.Array.from_buffers(pa.string(), n, buffers, null_count=missing)


def _bytes(
    values: list[Any], type: pa.DataType, n: int, validity: pa.Buffer | None, missing: int
) -> pa.Array | None:
    if not all(v is None or _exactly(v, bytes) for v in values):
        return None
    offsets = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(
        np.fromiter((0 if v is None else len(v) for v in values), dtype=np.int64, count=n), out=offsets[1:]
    )
    if type == pa.binary():
        if offsets[-1] > _STRING_LIMIT:
            return None
        offsets = offsets.astype(np.int32)
    data = b"".join([v for v in values if v is not None])
    return pa.Array.from_buffers(
        type, n, [validity, pa.py_buffer(offsets), pa.py_buffer(data)], null_count=missing
    )


def _times(
    values: list[Any], type: pa.TimestampType, n: int, validity: pa.Buffer | None, missing: int
) -> pa.Array | None:
    """Microseconds since the epoch: an aware time's instant, a naive one's wall clock (as pa.array)."""
    if not all(v is None or _exactly(v, datetime) for v in values):
        return None
    data = np.fromiter(
        (
            0 if v is None else (v - (_NAIVE_EPOCH if v.tzinfo is None else _EPOCH)) // _MICROSECOND
            for v in values
        ),
        dtype=np.int64,
        count=n,
    )
    return pa.Array.from_buffers(type, n, [validity, pa.py_buffer(data)], null_count=missing)


def bits(flags: Any) -> pa.Buffer:
    """An Arrow bitmap (least significant bit first) of these truth values."""
    return pa.py_buffer(np.packbits(np.fromiter(flags, dtype=np.bool_), bitorder="little"))

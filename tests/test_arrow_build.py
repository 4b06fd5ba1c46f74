"""Arrow arrays built from buffers equal pa.array's, and building them never imports pandas."""

from __future__ import annotations

import subprocess
import sys
from datetime import UTC, datetime, timedelta, timezone

import pyarrow as pa
import pytest

from pipelines.common import arrow

CASES = [
    (["a", None, "é", "", "日本"], None),
    (["x"] * 17, pa.string()),
    ([], pa.string()),
    ([], None),
    ([None, None, None], None),
    ([1, None, -3, 2**62], None),
    ([1, 2, 3], pa.int32()),
    ([None], pa.int64()),
    ([7, None], pa.int8()),
    ([True, None, False] * 5, None),
    ([True] * 9 + [False] * 3, pa.bool_()),
    ([1.5, None, -0.0], None),
    (range(5, 12), pa.int64()),
    (("a", "b"), pa.string()),
    ([b"raw", None, b"", "é".encode()], pa.binary()),
    ([b"x" * 300, b"\x00\r|"], pa.large_binary()),
    ([None, None], pa.large_binary()),
    (
        [
            datetime(2024, 1, 2, 3, 4, 5, 678901, tzinfo=UTC),
            None,
            datetime(1969, 12, 31, 23, 59, 59, 1, tzinfo=UTC),
        ],
        pa.timestamp("us", tz="UTC"),
    ),
    (
        [datetime(2024, 6, 1, 12, tzinfo=timezone(timedelta(hours=-5))), datetime(2000, 1, 1)],
        pa.timestamp("us", tz="UTC"),
    ),
    ([datetime(2024, 6, 1, 12, 30), None], pa.timestamp("us")),
]


@pytest.mark.parametrize(("values", "type_"), CASES)
def test_arrays_equal_pyarrows_own(values, type_):
    built = arrow.array(values, type_)
    expected = pa.array(list(values), type_)
    built.validate(full=True)
    assert built.type == expected.type
    assert built.null_count == expected.null_count
    assert built.equals(expected)
    assert built.to_pylist() == expected.to_pylist()


@pytest.mark.parametrize(
    ("values", "type_"),
    [
        ([1, 2.5], None),  # mixed kinds: pyarrow's inference decides (double)
        ([b"raw", b"x"], None),  # bytes: binary
        ([True, 1], pa.int64()),  # a bool where an int is asked for
        (["x", 1], pa.string()),  # not a string: pyarrow raises as it always did
        ([{"a": 1}], None),
    ],
)
def test_anything_else_is_pyarrows_own_conversion(values, type_):
    try:
        expected = pa.array(values, type_)
    except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
        with pytest.raises(type(exc)):
            arrow.array(values, type_)
        return
    assert arrow.array(values, type_).equals(expected)


def test_a_too_large_integer_fails_as_pyarrow_does():
    with pytest.raises(OverflowError):
        pa.array([2**70], pa.int64())
    with pytest.raises(OverflowError):
        arrow.array([2**70], pa.int64())


def test_tables_and_scalars():
    table = arrow.table({"s": ["a", None], "n": [1, 2], "b": arrow.array([True, False], pa.bool_())})
    assert table.equals(pa.table({"s": ["a", None], "n": [1, 2], "b": [True, False]}))
    schema = pa.schema([("s", pa.string()), ("n", pa.int32())])
    typed = arrow.table({"s": ["a"], "n": [3]}, schema)
    assert typed.schema == schema and typed.to_pylist() == [{"s": "a", "n": 3}]
    assert arrow.scalar(5, pa.int64()).equals(pa.scalar(5, pa.int64()))


def test_building_and_registering_arrow_tables_never_imports_pandas():
    code = (
        "import sys, duckdb, pyarrow as pa, pyarrow.compute as pc\n"
        "from pipelines.common import arrow\n"
        "import datetime as dt\n"
        "t = arrow.table({'s': ['a', None, 'é'], 'n': [1, None, 3], 'b': [True, False, None]})\n"
        "arrow.array([b'x', None], pa.large_binary())\n"
        "arrow.array([dt.datetime.now(dt.UTC)], pa.timestamp('us', tz='UTC'))\n"
        "t = t.filter(pc.greater(t['n'], arrow.scalar(1, pa.int64())))\n"
        "con = duckdb.connect()\n"
        "con.register('t', t)\n"
        "assert con.execute('SELECT s, n, b FROM t').fetchall() == [('é', 3, None)]\n"
        "print('pandas' in sys.modules)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == "False"

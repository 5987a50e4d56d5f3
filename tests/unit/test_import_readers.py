"""Reading files to import: record boundaries, quoted newlines, broken quotes, and the
split into partitions that together read every record exactly once."""

from __future__ import annotations

import csv
import io
import random
from pathlib import Path
from typing import Any

import pytest

from exportd.formats.readers import (
    ReadOptions,
    delimited_blocks,
    delimited_records,
    plan_file,
    read_records,
)
from exportd.model.plan import ImportSpec
from exportd.sources.targets import TargetColumn, ValueRules, converter


def sample_csv(n: int, seed: int) -> tuple[str, list[list[str]]]:
    rnd = random.Random(seed)
    rows = []
    for i in range(n):
        note = rnd.choice(["", "plain", 'say "hi"', "a,b", "two\nlines", "three\n\nlines"])
        rows.append([str(i), note, str(rnd.randint(-5, 5))])
    out = io.StringIO()
    w = csv.writer(out, lineterminator="\n")
    w.writerow(["id", "note", "n"])
    w.writerows(rows)
    return out.getvalue(), rows


@pytest.mark.parametrize("parts", [1, 2, 3, 5, 8, 13])
def test_partitions_read_every_record_once(tmp_path: Path, parts: int) -> None:
    text, rows = sample_csv(500, parts)
    path = tmp_path / "f.csv"
    path.write_text(text)
    opts = ReadOptions("csv")
    plan = plan_file(path, opts, parts)
    assert plan.records == 500 and len(plan.ranges) <= parts
    got = [r for b in plan.ranges for r in read_records(path, opts, b, plan.columns)]
    assert [r.fields for r in got] == rows
    # each record starts on the physical line its text begins at
    lines = text.split("\n")
    for r in got:
        assert lines[r.line - 1] == r.raw.split("\n")[0]


def test_a_broken_quote_is_one_rejected_line(tmp_path: Path) -> None:
    path = tmp_path / "f.csv"
    path.write_text('id,note\n1,"ok\nstill ok"\n2,"broken\n3,fine\n4,"x""y"\n')
    opts = ReadOptions("csv")
    plan = plan_file(path, opts, 3)
    got = [r for b in plan.ranges for r in read_records(path, opts, b, plan.columns)]
    assert [(r.line, r.fields, r.error is not None) for r in got] == [
        (2, ["1", "ok\nstill ok"], False),
        (4, None, True),
        (5, ["3", "fine"], False),
        (6, ["4", 'x"y'], False),
    ]


def test_json_lines_keep_their_line_numbers(tmp_path: Path) -> None:
    path = tmp_path / "f.jsonl"
    path.write_text('{"a": 1}\n\nnot json\n[1]\n{"a": 2}\n')
    opts = ReadOptions("jsonl")
    plan = plan_file(path, opts, 2)
    got = [r for b in plan.ranges for r in read_records(path, opts, b, plan.columns)]
    assert [(r.line, r.values, r.error is None) for r in got] == [
        (1, {"a": 1}, True), (3, None, False), (4, None, False), (5, {"a": 2}, True),
    ]  # fmt: skip


def col(kind: str, **kw: object) -> TargetColumn:
    values: dict[str, object] = dict(name="c", kind=kind, type_name="INTEGER", nullable=True,
                                     has_default=False)  # fmt: skip
    values.update(kw)
    return TargetColumn(**values)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("column", "given", "reason"),
    [
        (col("int"), "1.5", "not an integer"),
        (col("int"), "1_000", "not an integer"),
        (col("int", type_name="SMALLINT"), "40000", "out of range"),
        (col("float"), "far", "not a number"),
        (col("decimal", precision=5, scale=2), "1234.5", "does not fit"),
        (col("bool"), "maybe", "not a boolean"),
        (col("date"), "2013-02-30", "not a date"),
        (col("datetime"), "yesterday", "not a timestamp"),
        (col("str", length=2), "AAA", "at most 2"),
        (col("int", nullable=False), "", "required"),
    ],
)
def test_a_value_that_does_not_fit_says_why(column: TargetColumn, given: str, reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        converter(column, ValueRules())(given)


def test_values_that_fit() -> None:
    rules = ValueRules(null_values=frozenset({"NA"}), date_format="%d/%m/%Y")
    assert converter(col("int"), rules)("-12") == -12
    assert converter(col("int"), rules)("NA") is None
    assert str(converter(col("decimal", precision=5, scale=2), rules)("123.456")) == "123.46"
    assert converter(col("bool"), rules)("yes") is True
    assert str(converter(col("date"), rules)("28/02/2013")) == "2013-02-28"
    naive = converter(col("datetime"), ValueRules(timezone="America/New_York"))("2013-01-01T05:00")
    assert str(naive) == "2013-01-01 10:00:00"  # a naive column holds UTC
    assert ImportSpec(source_name="f", format="csv").mode.value == "append"


Got = tuple[list[tuple[int, Any, str]], list[tuple[int, Any, str]]]


def _walked(path: Path, opts: ReadOptions, bounds: dict[str, Any], columns: list[str]) -> Got:
    """What the record walker gives: (line, fields, text) of the parsed records and
    (line, error, text) of the others."""
    good: list[tuple[int, Any, str]] = []
    bad: list[tuple[int, Any, str]] = []
    for r in read_records(path, opts, bounds, columns):
        if r.fields is None:
            bad.append((r.line, r.error, r.raw))
        else:
            good.append((r.line, r.fields, r.raw))
    return good, bad


def _blocked(
    path: Path, opts: ReadOptions, bounds: dict[str, Any], columns: list[str], block_bytes: int
) -> tuple[list[tuple[int, Any, str]], list[tuple[int, Any, str]], set[str]]:
    good: list[tuple[int, Any, str]] = []
    bad: list[tuple[int, Any, str]] = []
    how: set[str] = set()
    for b in delimited_blocks(path, opts, bounds, columns, block_bytes):
        how.add(b.parsed_by)
        cols = [c.to_pylist() for c in b.columns]
        for i, line in enumerate(b.lines.to_pylist()):
            good.append((line, [c[i] for c in cols], b.raw(i)))
        bad += [(r.line, r.error, r.raw) for r in b.rejected]
    return good, sorted(bad), how


TRICKY = [
    "plain,1,x",
    'quoted "inside",2,x',
    '"a,b",3,x',
    "crlf,4,x\r",
    "",
    "blank above,5,x",
    "too,many,fields,6",
    "few,7",
    "caf\u00e9,8,x",
    '"two\nlines",9,x',
    '"broken,10,x',
    "after broken,11,x",
    "bad utf8 \udcff,12,x",
    "lone\rcr,13,x",
    '"x"y,14,x',
    "\t spaced ,15, x ",
]


def tricky_file(path: Path, n: int, seed: int, sep: str = ",") -> list[str]:
    """Plain rows with, here and there, every kind of awkward record."""
    rnd = random.Random(seed)
    lines = ["name,n,tag".replace(",", sep)]
    for i in range(n):
        if rnd.random() < 0.03:
            lines.append(rnd.choice(TRICKY).replace(",", sep))
        else:
            lines.append(f"row{i}{sep}{i}{sep}t{rnd.randint(0, 9)}")
    text = "\n".join(lines) + ("\n" if seed % 2 else "")
    path.write_bytes(text.encode("utf-8", "surrogateescape"))
    return lines


@pytest.mark.parametrize("seed", range(12))
def test_blocks_read_what_the_record_walker_reads(tmp_path: Path, seed: int) -> None:
    path = tmp_path / "f.csv"
    tricky_file(path, 3000, seed)
    opts = ReadOptions("csv")
    plan = plan_file(path, opts, 1 + seed % 4)
    for bounds in plan.ranges:
        want_good, want_bad = _walked(path, opts, bounds, plan.columns)
        for block_bytes in (50, 997, 1 << 20):
            good, bad, _how = _blocked(path, opts, bounds, plan.columns, block_bytes)
            assert good == want_good, (seed, block_bytes)
            assert bad == sorted(want_bad), (seed, block_bytes)


def test_plain_chunks_are_read_by_arrow(tmp_path: Path) -> None:
    path = tmp_path / "f.tsv"
    path.write_text("a\tb\n" + "".join(f"{i}\tv{i}\n" for i in range(1000)) + '"q\n\tr"\tx\n')
    opts = ReadOptions("tsv")
    plan = plan_file(path, opts, 1)
    blocks = list(delimited_blocks(path, opts, plan.ranges[0], plan.columns, 4000))
    assert blocks[0].parsed_by == "arrow" and blocks[-1].parsed_by == "walker"
    assert sum(b.rows for b in blocks) == 1001
    last = blocks[-1]
    assert last.lines.to_pylist()[-1] == 1002 and last.columns[0].to_pylist()[-1] == "q\n\tr"


def _walker_plan(
    path: Path, opts: ReadOptions, parts: int, sizes: list[int] | None = None
) -> tuple[list[tuple[int, int]], int]:
    """The split as the record walker alone makes it (planning's rule: the k-th cut at the
    first record at or after k steps from the first record; with `sizes`, the first
    ranges of those sizes and the steps after them even)."""
    text = path.read_bytes()
    start = text.index(b"\n") + 1
    goals = [start]
    for size in sizes or []:
        goals.append(goals[-1] + size)
    step = max((len(text) - goals[-1]) // (parts - len(goals) + 1), 1)
    while len(goals) < parts:
        goals.append(goals[-1] + step)
    cuts, records, pos = [(start, 2)], 0, start
    lines = []
    for ln in text[start:].split(b"\n"):
        lines.append((pos, ln + b"\n"))
        pos += len(ln) + 1
    if lines and lines[-1][1] == b"\n":
        lines.pop()
    for offset, line_no, _t, _f in delimited_records(lines, 2, opts, 3):
        if len(cuts) < parts and offset >= goals[len(cuts)]:
            cuts.append((offset, line_no))
        records += 1
    return cuts, records


@pytest.mark.parametrize("seed", range(8))
def test_chunked_planning_cuts_where_the_walker_cuts(tmp_path: Path, seed: int) -> None:
    path = tmp_path / "f.csv"
    tricky_file(path, 2000, seed)
    opts = ReadOptions("csv")
    for parts in (1, 3, 7):
        want = _walker_plan(path, opts, parts)
        for block_bytes in (64, 1001, 1 << 22):
            plan = plan_file(path, opts, parts, block_bytes)
            got = [(r["start"], r["first_line"]) for r in plan.ranges]
            assert (got, plan.records) == want, (seed, parts, block_bytes)


@pytest.mark.parametrize("seed", range(4))
def test_planning_with_first_bytes_ramps_up_to_even_ranges(tmp_path: Path, seed: int) -> None:
    """`first_bytes`: ranges of about 1x, 2x, 4x it while that is at most half the even
    size of the rest, then even; cut where the walker cuts, every record once."""
    path = tmp_path / "f.csv"
    tricky_file(path, 3000, seed)
    opts = ReadOptions("csv")
    body = path.stat().st_size - path.read_bytes().index(b"\n") - 1
    first = body // 128  # 1, 2, 4 (8 > half of (121 - 8) / 8): the rest in 9 even ranges
    want = _walker_plan(path, opts, 12, [first, 2 * first, 4 * first])
    for block_bytes in (64, 1001, 1 << 22):
        plan = plan_file(path, opts, 12, block_bytes, first_bytes=first)
        got = [(r["start"], r["first_line"]) for r in plan.ranges]
        assert (got, plan.records) == want, (seed, block_bytes)
    sizes = [(r["end"] or path.stat().st_size) - r["start"] for r in plan.ranges]
    assert sizes[0] < sizes[1] < sizes[2] < sizes[3] and max(sizes[3:]) < 2 * min(sizes[3:])
    rows = [r.fields for b in plan.ranges for r in read_records(path, opts, b, plan.columns)]
    assert rows == [
        r.fields for r in read_records(path, opts, plan.ranges[0] | {"end": None}, plan.columns)
    ]
    # few ranges: no ramp (it would take all but the last range, most of the file)
    for parts in (2, 3, 4):
        few = plan_file(path, opts, parts, first_bytes=first)
        assert [(r["start"], r["first_line"]) for r in few.ranges] == _walker_plan(
            path, opts, parts
        )[0]


def test_line_chunks_end_at_newlines_and_cover_the_bytes_once(tmp_path: Path) -> None:
    """The reader's chunks: views of one buffer, each ending at a newline (a line longer
    than a block grows the buffer), together exactly the bytes from start to stop."""
    from exportd.formats.readers import line_chunks

    rnd = random.Random(7)
    lines = [b"x" * rnd.choice([0, 1, 5, 40, 300]) + b"\n" for _ in range(400)]
    data = b"".join(lines) + b"tail without newline"
    path = tmp_path / "f.txt"
    path.write_bytes(data)
    for start, stop in ((0, None), (0, len(data)), (len(lines[0]), 5000), (3, 3)):
        for block in (1, 7, 64, 1 << 20):
            with path.open("rb") as f:
                f.seek(start)
                got = []
                for offset, chunk, last in line_chunks(f, start, stop, block):
                    assert offset == start + sum(len(c) for c in got)
                    assert last or chunk[-1:] == b"\n"
                    got.append(bytes(chunk))
            assert b"".join(got) == data[start:stop], (start, stop, block)

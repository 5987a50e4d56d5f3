"""Reading files to import: record boundaries, quoted newlines, broken quotes, and the
split into partitions that together read every record exactly once."""

from __future__ import annotations

import csv
import io
import random
from pathlib import Path

import pytest

from exportd.formats.readers import ReadOptions, plan_file, read_records
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

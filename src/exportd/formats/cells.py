"""How values become text in the text formats (CSV, TSV, JSON Lines, JSON).

The rules are written so that PostgreSQL's own CSV writer (`COPY ... TO STDOUT`) can
produce exactly the same bytes (see `exportd.sources.pg_copy`):

- integers: decimal digits; decimals: their exact digits, never in exponent form;
- floats: the shortest text that reads back to the same double, in plain notation when
  the decimal exponent is between -4 and 14 and in exponent form (`1e+15`) otherwise,
  with no trailing `.0` (PostgreSQL's float8 output); `NaN`, `Infinity`, `-Infinity`;
- booleans: `true` / `false`;
- timestamps with a time zone: converted to the export's time zone (default UTC) and
  written in ISO 8601 with the offset (`2013-01-01T05:00:00+00:00`); fractional seconds
  only when not zero, without trailing zeros; timestamps without a time zone as they
  are; dates `YYYY-MM-DD`; a `datetime_format` / `date_format` (strftime) replaces these;
- binary: base64; JSON values: compact JSON text.
"""

from __future__ import annotations

import base64
import math
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, tzinfo
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import orjson

from exportd.errors import BadRequest

Render = Callable[[Any], str]

SPREADSHEET_TRIGGERS = ("=", "+", "-", "@", "\t", "\r")
"""A text cell starting with one of these is neutralised with a leading `'` (OWASP's
rule for CSV injection): a spreadsheet then shows the text instead of running it."""


def neutralise(text: str) -> str:
    return "'" + text if text.startswith(SPREADSHEET_TRIGGERS) else text


def float_text(x: float) -> str:
    """A float as PostgreSQL prints a float8 (shortest round-trip digits)."""
    if math.isnan(x):
        return "NaN"
    if math.isinf(x):
        return "Infinity" if x > 0 else "-Infinity"
    text = repr(x)
    if not text.endswith(".0"):
        return text
    text = text[:-2]
    digits = text.lstrip("-")
    if len(digits) < 16:  # below 1e15: plain notation, as PostgreSQL
        return text
    rest = digits[1:].rstrip("0")  # 1e15 <= |x| < 1e16: Python is plain, PostgreSQL not
    sign = "-" if text.startswith("-") else ""
    return f"{sign}{digits[0]}{'.' + rest if rest else ''}e+15"


def decimal_text(d: Decimal) -> str:
    return format(d, "f")


def bytes_text(b: Any) -> str:
    return base64.b64encode(memoryview(b)).decode("ascii")  # TypeError for a number


def json_text(v: Any) -> str:
    return orjson.dumps(v, default=_json_fallback).decode()


def _json_fallback(value: Any) -> Any:
    if isinstance(value, Decimal):
        return decimal_text(value)
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes_text(value)
    raise TypeError(f"cannot serialize {type(value).__name__}")


def iso_text(value: datetime | time) -> str:
    """ISO 8601 with fractional seconds only as long as needed (as PostgreSQL's JSON)."""
    text = value.isoformat()
    if value.microsecond:
        head, dot, tail = text.partition(".")
        frac, offset = tail[:6].rstrip("0"), tail[6:]
        text = f"{head}{dot}{frac}{offset}"
    return text


@dataclass(frozen=True)
class TimeOptions:
    """The text formats' time zone and date/time patterns (strftime), from format_options."""

    zone: tzinfo = UTC
    zone_name: str = "UTC"
    datetime_format: str | None = None
    date_format: str | None = None

    @classmethod
    def parse(cls, options: dict[str, Any]) -> TimeOptions:
        name = options.get("timezone", "UTC")
        if not isinstance(name, str):
            raise BadRequest("timezone must be an IANA name such as 'Europe/Paris'", _CODE)
        try:
            zone: tzinfo = UTC if name.upper() == "UTC" else ZoneInfo(name)
        except (ZoneInfoNotFoundError, ValueError):
            raise BadRequest(f"unknown timezone {name[:60]!r}", _CODE) from None
        patterns = {k: options.get(k) for k in ("datetime_format", "date_format")}
        for key, pattern in patterns.items():
            if pattern is not None and (not isinstance(pattern, str) or not pattern):
                raise BadRequest(f"{key} must be a non-empty strftime pattern", _CODE)
        return cls(zone, name, patterns["datetime_format"], patterns["date_format"])

    def datetime_text(self, v: datetime) -> str:
        if v.tzinfo is not None:
            v = v.astimezone(self.zone)
        return v.strftime(self.datetime_format) if self.datetime_format else iso_text(v)

    def date_text(self, v: date) -> str:
        return v.strftime(self.date_format) if self.date_format else v.isoformat()


_CODE = "INVALID_FORMAT_OPTIONS"


def text_renderer(sample: Any, times: TimeOptions) -> Render | None:
    """How a column whose values look like `sample` becomes text (None: it is already str)."""
    if isinstance(sample, str):
        return None
    if isinstance(sample, bool):
        return lambda v: "true" if v else "false"
    if isinstance(sample, int):
        return int.__repr__
    if isinstance(sample, float):
        return float_text
    if isinstance(sample, Decimal):
        return decimal_text
    if isinstance(sample, datetime):
        return times.datetime_text
    if isinstance(sample, date):
        return times.date_text
    if isinstance(sample, time):
        return iso_text
    if isinstance(sample, (bytes, bytearray, memoryview)):
        return bytes_text
    if isinstance(sample, (dict, list)):
        return json_text
    return str

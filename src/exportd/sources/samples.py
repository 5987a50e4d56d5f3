"""A samples dataset: files with their labels, read from a JSON Lines manifest (one sample
a line, `model.samples.Sample`) or from a tree directory whose folder names are the
labels. Counting, seed 003's search conditions, the selection of an export, the
reproducible train/eval split and where each sample goes in a tree or tile layout are
pure functions of the samples here; the copying is the `samples` task kind's."""

from __future__ import annotations

import math
import os
import random
import re
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path, PurePosixPath
from typing import Any

import orjson
from pydantic import ValidationError

from exportd.errors import BadRequest, SourceError
from exportd.model import Dataset
from exportd.model.samples import (
    ExportFormat,
    ExportType,
    Label,
    LabelType,
    Sample,
    SamplesSpec,
    SampleState,
    SearchCondition,
    SearchLabel,
    SearchLabels,
    SearchProp,
    is_hard_property,
)
from exportd.sources import Estimate, Selection

MANIFEST_NAME = "samples.jsonl"  # what a NEW_DATASET export writes and registers
LABEL_FILE_SUFFIX = ".txt"  # a tile layout's label file: seed 003's `1.jpg, 1.txt`
TRAIN, EVAL = "train", "eval"


# ---- reading a dataset's samples --------------------------------------------------------------


def _inside(path: Path, root: Path) -> bool:
    return path == root or root in path.parents


def check_source(source: str, base: Path, root: Path) -> Path:
    """A sample's file: relative to `base` (or absolute), no `..`, under `root`. The
    path it names, not resolved (a symlink is checked when it is read)."""
    p = PurePosixPath(source)
    if ".." in p.parts:
        raise ValueError("source must not contain '..'")
    path = Path(source) if p.is_absolute() else base / source
    if not _inside(Path(os.path.normpath(path)), root):
        raise ValueError("source is not under the dataset's source directory")
    return path


def read_manifest(path: Path, root: Path) -> list[Sample]:
    """Every sample of a manifest, checked: a bad line is a 400 naming the line."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise SourceError(
            f"the samples manifest cannot be read: {exc.strerror}", "SOURCE_FILES_MISSING"
        ) from None
    return parse_manifest(data, lambda source: check_source(source, path.parent, root))


def parse_manifest(data: bytes, check: Callable[[str], object]) -> list[Sample]:
    samples: list[Sample] = []
    for n, line in enumerate(data.splitlines(), 1):
        if not line.strip():
            continue
        try:
            sample = Sample.model_validate(orjson.loads(line))
            check(sample.source)
        except (orjson.JSONDecodeError, ValidationError, ValueError) as exc:
            msg = str(exc).splitlines()
            why = " ".join(m.strip() for m in msg[:3])[:300]
            raise BadRequest(f"samples manifest line {n}: {why}", "INVALID_SAMPLES") from None
        samples.append(sample)
    _unique_ids(samples)
    return samples


def _unique_ids(samples: list[Sample]) -> None:
    seen = Counter(s.id for s in samples)
    twice = [i for i, n in seen.items() if n > 1]
    if twice:
        raise BadRequest(
            f"sample ids must be unique: {twice[0][:100]!r} is repeated", "INVALID_SAMPLES"
        )


def scan_tree(directory: Path) -> list[Sample]:
    """A tree of class folders: every file under a top folder is a sample labelled with
    the folder's name (image classification); a file at the top is unlabelled. Hidden
    files and folders are skipped; the id is the file's path relative to the tree."""
    samples: list[Sample] = []
    _scan(str(directory), "", None, samples)
    return sorted(samples, key=lambda s: s.id)


def _scan(path: str, rel: str, label: tuple[Label, ...] | None, out: list[Sample]) -> None:
    with os.scandir(path) as it:
        entries = sorted((e for e in it if not e.name.startswith(".")), key=lambda e: e.name)
    for e in entries:
        source = rel + e.name
        if e.is_dir():
            below = label
            if below is None:
                try:
                    below = (Label(name=e.name, type=LabelType.IMAGE_CLASSIFICATION),)
                except ValidationError:
                    why = f"folder {e.name[:100]!r} cannot be a label name"
                    raise BadRequest(why, "INVALID_SAMPLES") from None
            _scan(e.path, source + "/", below, out)
        elif e.is_file():
            when = datetime.fromtimestamp(e.stat().st_mtime, UTC)
            out.append(Sample(id=source, source=source, labels=label or (), sample_time=when))


S3_SOURCE = "s3:"  # a sample's file in an S3 source: `s3:` + its key there


@dataclass(frozen=True)
class SampleSet:
    """A samples dataset's samples, with where their files are: on this host's disk
    (under `root`), or in an S3 source (`s3` set: keys relative to its prefix)."""

    samples: list[Sample]
    base: Path | str  # what relative sources are relative to
    root: Path | str  # the source directory (S3: "") the files must stay under
    s3: str | None = None

    def path_of(self, sample: Sample) -> str:
        """Its file, absolute (checked as `check_source` does, on strings: fast); in an
        S3 source, `s3:` and its key."""
        source = sample.source
        if ".." in source.split("/"):
            raise SourceError(
                f"sample {sample.id[:100]!r}: '..' in its source", "SOURCE_PATH_OUTSIDE"
            )
        if self.s3 is not None:
            key = source.lstrip("/") if source.startswith("/") else f"{self.base}{source}"
            return S3_SOURCE + key
        path = os.path.normpath(source if source.startswith("/") else f"{self.base}/{source}")
        root = str(self.root)
        if not (path == root or path.startswith(root + "/")):
            raise SourceError(
                f"sample {sample.id[:100]!r}: source outside the dataset", "SOURCE_PATH_OUTSIDE"
            )
        return path


def s3_source(url: str) -> Any:
    """The S3 storage an S3 source's keys are read from (the administrator's URL)."""
    from exportd.storage.s3 import S3Storage

    return S3Storage.from_url(url)


def s3_folder(path: str) -> str:
    return path.strip("/") + "/" if path.strip("/") else ""


def _load_s3(url: str, path: str, layout: str) -> SampleSet:
    storage = s3_source(url)
    if layout == "tree":
        folder = s3_folder(path)
        found = []
        for obj in storage.scan(folder):
            rel = obj.key[len(folder) :]
            parts = rel.split("/")
            if any(p.startswith(".") for p in parts) or is_temporary_name(parts[-1]):
                continue
            labels = (Label(name=parts[0]),) if len(parts) > 1 else ()
            found.append(Sample(id=rel, source=rel, labels=labels, sample_time=obj.modified))
        return SampleSet(sorted(found, key=lambda s: s.id), folder, "", url)
    try:
        with storage.open_read(path) as fh:
            data = fh.read()
    except FileNotFoundError:
        raise SourceError("the samples manifest is gone", "SOURCE_FILES_MISSING") from None
    base = path.rsplit("/", 1)[0] + "/" if "/" in path else ""
    return SampleSet(parse_manifest(data, _relative), base, "", url)


def is_temporary_name(name: str) -> bool:
    return name.endswith(".tmp") and name.startswith(".")


def _relative(source: str) -> None:
    if ".." in source.split("/") or source.startswith("/"):
        raise ValueError("an S3 source's sample must be a relative key, without '..'")


def load(dataset: Dataset) -> SampleSet:
    """The samples of a dataset as they are now (manifest read, or tree scanned)."""
    opts = dataset.options
    if opts.get("s3"):
        return _load_s3(str(opts["s3"]), str(opts["path"]), str(opts.get("layout")))
    path, root = Path(opts["path"]), Path(opts["root"])
    if opts.get("layout") == "tree":
        if not path.is_dir():
            raise SourceError("the samples folder is gone", "SOURCE_FILES_MISSING")
        return SampleSet(scan_tree(path), path, root)
    return SampleSet(read_manifest(path, root), path.parent, root)


# ---- counting ---------------------------------------------------------------------------------


def counts(samples: Iterable[Sample]) -> dict[str, Any]:
    """Totals: samples, labelled and not, hard examples, per label, per state."""
    total = labelled = hard = 0
    per_label: Counter[str] = Counter()
    per_state: Counter[str] = Counter()
    for s in samples:
        total += 1
        labelled += s.labelled
        hard += is_hard(s)
        per_label.update(dict.fromkeys(lb.name for lb in s.labels).keys())
        per_state[s.state.value if s.state else "none"] += 1
    return {
        "total": total,
        "labelled": labelled,
        "unlabelled": total - labelled,
        "hard": hard,
        "labels": dict(sorted(per_label.items())),
        "states": dict(sorted(per_state.items())),
    }


# ---- seed 003's search conditions -------------------------------------------------------------

_RANGE = re.compile(r"^(-?\d+(?:\.\d+)?)(?:-(-?\d+(?:\.\d+)?))?$")


def _in_range(value: float | None, spec: str) -> bool:
    """`spec`: a number (equal) or `low-high` (both included)."""
    m = _RANGE.match(spec)
    if value is None or m is None:
        return False
    low = float(m.group(1))
    high = float(m.group(2)) if m.group(2) is not None else low
    return low <= value <= high


def _text(value: Any) -> list[str]:
    """The texts a property value is searched as (each element of a list)."""
    if isinstance(value, list):
        return [t for v in value for t in _text(v)]
    if isinstance(value, str):
        return [value]
    return [orjson.dumps(value).decode()]


def _props(have: dict[str, Any], want: dict[str, list[str] | None], op: str | None) -> bool:
    """Each wanted key is there (with one of the values, unless they are null)."""
    checks = (
        k in have and (vals is None or any(t in vals for t in _text(have[k])))
        for k, vals in want.items()
    )
    return any(checks) if op == "OR" else all(checks)


def _label(lb: Label, want: SearchLabel) -> bool:
    if want.name is not None and lb.name != want.name:
        return False
    if want.type is not None and lb.type != want.type:
        return False
    return not want.property or _props(lb.property, want.property, want.op)


def _labels(sample: Sample, want: SearchLabels) -> bool:
    found = (any(_label(lb, w) for lb in sample.labels) for w in want.labels)
    return any(found) if want.op == "OR" else all(found)


def _metadata(sample: Sample, want: SearchProp) -> bool:
    return _props(sample.metadata, want.props, want.op)


def is_hard(sample: Sample) -> bool:
    """A hard example: flagged so, or with a label whose hard property is set."""
    if sample.hard:
        return True
    return any(
        is_hard_property(k) and k.endswith("hard") and v in (True, "true", "1", 1)
        for lb in sample.labels
        for k, v in lb.property.items()
    )


def _sample_time(sample: Sample, spec: str, today: date) -> bool:
    if sample.sample_time is None:
        return False
    day = sample.sample_time.astimezone(UTC).date()
    if spec == "month":
        return today - timedelta(days=30) <= day <= today
    if spec == "day":
        return today - timedelta(days=1) <= day <= today
    start, end = (datetime.strptime(p, "%Y%m%d").date() for p in spec.split("-"))
    return start <= day <= end


def _equal(value: Any, wanted: Any) -> bool:
    return wanted is None or value == wanted


def matches(sample: Sample, cond: SearchCondition, today: date) -> bool:
    """Every field the condition gives holds for the sample."""
    c = cond
    plain = (
        _equal(sample.frame_in_video, c.frame_in_video)
        and _equal(sample.import_origin, c.import_origin)
        and _equal(sample.kvp, c.kvp)
        and _equal(sample.labeler, c.labeler)
        and _equal(sample.parent_sample_id, c.parent_sample_id)
        and _equal(sample.name, c.sample_name)
        and _equal(sample.slice_thickness, c.slice_thickness)
        and _equal(sample.study_date, c.study_date)
        and _equal(sample.time_in_video, c.time_in_video)
    )
    if not plain:
        return False
    checks = (
        c.hard is None or is_hard(sample) == (c.hard == "1"),
        c.coefficient is None or _in_range(sample.hard_coefficient, c.coefficient),
        c.score is None or _in_range(sample.score, c.score),
        c.sample_dir is None or sample.directory == c.sample_dir.lstrip("/"),
        c.sample_time is None or _sample_time(sample, c.sample_time, today),
        c.label_list is None or _labels(sample, c.label_list),
        c.metadata is None or _metadata(sample, c.metadata),
    )
    return all(checks)


# ---- what an export selects -------------------------------------------------------------------


def _by_state(sample: Sample, state: str) -> bool:
    if not state:
        return True
    if state == SampleState.ALL:
        return sample.labelled
    if state == SampleState.NONE:
        return not sample.labelled
    return sample.state is not None and sample.state.value == state


def _by_type(sample: Sample, spec: SamplesSpec, today: date) -> bool:
    match spec.export_type:
        case ExportType.LABELLED:
            return sample.labelled
        case ExportType.UNLABELLED:
            return not sample.labelled
        case ExportType.SEARCH:
            return any(matches(sample, c, today) for c in spec.search_conditions)
    return True


def select(samples: Iterable[Sample], spec: SamplesSpec, today: date | None = None) -> list[Sample]:
    """The samples an export takes, in id order: its export type (or search), its
    sample state and its explicit id list all hold."""
    day = today or datetime.now(UTC).date()
    wanted = set(spec.samples) if spec.samples is not None else None
    chosen = [
        s
        for s in samples
        if (wanted is None or s.id in wanted)
        and _by_state(s, spec.sample_state)
        and _by_type(s, spec, day)
    ]
    return sorted(chosen, key=lambda s: s.id)


def unknown_ids(samples: Iterable[Sample], ids: Iterable[str]) -> list[str]:
    known = {s.id for s in samples}
    return [i for i in ids if i not in known]


def split(ids: list[str], ratio: float, seed: int) -> set[str]:
    """The training set of a random but reproducible split: the ids (sorted) shuffled by
    `seed`, the first round(n * ratio) of them; the rest is the evaluation set."""
    order = sorted(ids)
    random.Random(seed).shuffle(order)
    return set(order[: math.floor(len(order) * ratio + 0.5)])


# ---- where each sample goes -------------------------------------------------------------------


@dataclass
class Placement:
    """One selected sample and the files it becomes (relative to the export's folder).
    The sample is kept as JSON (as exported: hard attributes cleared when asked): the
    copy and the manifests only pass it on."""

    sample: dict[str, Any]
    source: str  # its file, absolute
    subset: str  # train, eval, or "" without a split
    targets: list[str]  # copies of the file: one per label folder (tree), or one (tile)
    label_file: str | None = None  # tile: the label file beside it

    @property
    def id(self) -> str:
        return str(self.sample["id"])

    def to_json(self) -> dict[str, Any]:
        return {
            "sample": self.sample,
            "source": self.source,
            "subset": self.subset,
            "targets": self.targets,
            "label_file": self.label_file,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Placement:
        return cls(
            data["sample"], data["source"], data["subset"], data["targets"], data.get("label_file")
        )


@dataclass
class _Names:
    """The names taken in the export's folders (files, and the label folders)."""

    taken: set[str] = field(default_factory=set)

    def free(self, *paths: str) -> bool:
        return not any(p in self.taken for p in paths)

    def take(self, folder: str, stem: str, suffixes: tuple[str, ...]) -> str:
        """The first of `stem`, `stem-1`, `stem-2`... free with every suffix in `folder`."""
        if len(suffixes) == 1:  # the common case, in short
            path = folder + stem + suffixes[0]
            if path not in self.taken:
                self.taken.add(path)
                return stem
        n, name = 0, stem
        while not self.free(*(folder + name + s for s in suffixes)):
            n += 1
            name = f"{stem}-{n}"
        self.taken.update(folder + name + s for s in suffixes)
        return name


def label_file_body(sample: dict[str, Any]) -> bytes:
    """A tile layout's label file: one JSON object a line per label of the sample."""
    labels = sample.get("labels") or []
    return b"".join(
        orjson.dumps(
            {"name": lb["name"], "type": lb.get("type", 0), "property": lb.get("property", {})}
        )
        + b"\n"
        for lb in labels
    )


def place(chosen: list[Sample], sset: SampleSet, spec: SamplesSpec) -> list[Placement]:
    """Where each chosen sample goes: in its subset's folder (train/ or eval/ with a
    split), under each of its label folders (tree) or beside its label file (tile). Two
    files of one name in one folder: the later (by id) gets `-1`, `-2`... to its stem."""
    train = None
    if spec.ratio_sample_usage:
        train = split([s.id for s in chosen], spec.train_sample_ratio, spec.split_seed)
    names = _Names()
    tree = spec.export_format is ExportFormat.TREE
    subsets = [""] if train is None else [TRAIN, EVAL]
    for sub in subsets:  # the label folders are taken before any file could use the name
        prefix = f"{sub}/" if sub else ""
        names.taken.update(prefix + lb.name for s in chosen for lb in s.labels if tree)
        if sub:
            names.taken.add(sub)
    placed = []
    for s in chosen:
        sub = "" if train is None else (TRAIN if s.id in train else EVAL)
        prefix = f"{sub}/" if sub else ""
        stem, ext = os.path.splitext(s.name)
        out = s.exported(spec.clear_hard_property).model_dump(mode="json", exclude_defaults=True)
        source = sset.path_of(s)
        if tree:
            folders = list(dict.fromkeys(f"{prefix}{lb.name}/" for lb in s.labels)) or [prefix]
            targets = [f + names.take(f, stem, (ext,)) + ext for f in folders]
            placed.append(Placement(out, source, sub, targets))
            continue
        suffixes = (ext, LABEL_FILE_SUFFIX) if s.labelled else (ext,)
        name = names.take(prefix, stem, suffixes)
        label = prefix + name + LABEL_FILE_SUFFIX if s.labelled else None
        placed.append(Placement(out, source, sub, [prefix + name + ext], label))
    return placed


# ---- as a source ------------------------------------------------------------------------------


class SamplesSource:
    """The Source seam for a samples dataset: its objects are its samples. The samples
    kind plans and reads through `load`/`select`/`place`; these answer the generic
    engine (estimates, and counts of a partition's selection)."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def estimate(self, sel: Selection) -> Estimate:
        return Estimate(len(load(self.dataset).samples), False)

    def plan(self, sel: Selection, parallelism: int) -> list[dict[str, Any]]:
        n = len(load(self.dataset).samples)
        step = max(1, math.ceil(n / max(1, parallelism)))
        return [{"start": i, "stop": min(n, i + step)} for i in range(0, n, step)] or [
            {"start": 0, "stop": 0}
        ]

    def read(
        self, sel: Selection, bounds: dict[str, Any], batch_size: int
    ) -> Iterator[list[tuple[Any, ...]]]:
        samples = load(self.dataset).samples[bounds.get("start", 0) : bounds.get("stop")]
        for i in range(0, len(samples), batch_size):
            yield [(s.model_dump(mode="json"),) for s in samples[i : i + batch_size]]

    def count(self, sel: Selection, bounds: dict[str, Any]) -> int:
        return int(bounds.get("count", bounds.get("stop", 0) - bounds.get("start", 0)))

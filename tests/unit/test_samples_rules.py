"""Pure rules of samples exports: the split, placement of names, and whose a key of a
samples tree is (the sweeper's net under expired or failed samples exports)."""

from __future__ import annotations

from pathlib import Path

import pytest

from exportd.execution.sweeper import owner
from exportd.model.samples import ExportFormat, ExportType, Label, Sample, SamplesSpec
from exportd.sources.samples import SampleSet, place, split

TASK = "0123456789abcdef0123456789abcdef"


def spec(**kw: object) -> SamplesSpec:
    base: dict[str, object] = dict(
        export_type=ExportType.ALL, export_format=ExportFormat.TREE, ratio_sample_usage=False,
        train_sample_ratio=1.0, split_seed=1, clear_hard_property=True,
        version_format="Default", export_dest="DIR",
    )  # fmt: skip
    return SamplesSpec.model_validate({**base, **kw})


@pytest.mark.parametrize("n", [0, 1, 2, 7, 100, 101])
@pytest.mark.parametrize("ratio", [0.0, 0.33, 0.5, 0.8, 1.0])
def test_split_is_disjoint_reproducible_and_within_one(n: int, ratio: float) -> None:
    ids = [f"s{i}" for i in range(n)]
    train = split(ids, ratio, 42)
    assert train <= set(ids)
    assert abs(len(train) - n * ratio) <= 1
    assert split(list(reversed(ids)), ratio, 42) == train  # the order given does not matter


def test_same_names_in_one_folder_get_numbered() -> None:
    samples = [
        Sample(id="a", source="x/1.png", labels=(Label(name="cat"),)),
        Sample(id="b", source="y/1.png", labels=(Label(name="cat"), Label(name="dog"))),
        Sample(id="c", source="z/1.png"),
    ]
    sset = SampleSet(samples, Path("/src"), Path("/src"))
    tree = place(samples, sset, spec())
    assert [p.targets for p in tree] == [["cat/1.png"], ["cat/1-1.png", "dog/1.png"], ["1.png"]]
    tile = place(samples, sset, spec(export_format=ExportFormat.TILE))
    assert [(p.targets, p.label_file) for p in tile] == [
        (["1.png"], "1.txt"), (["1-1.png"], "1-1.txt"), (["1-2.png"], None),
    ]  # fmt: skip


def test_keys_of_a_samples_tree_belong_to_their_task() -> None:
    root = f"exports/acme/{TASK}"
    for key in (f"{root}/manifest.json", f"{root}/cat/1.png", f"{root}/train/cat/1.png"):
        found = owner(key)
        assert found is not None and found.task_id == TASK and not found.is_part
    assert owner("exports/acme/cat/1.png") is None
    other = "fedcba9876543210fedcba9876543210"
    found = owner(f"exports/acme/{TASK}/x/{other}/out.csv")  # a task folder below: its own
    assert found is not None and found.task_id == other

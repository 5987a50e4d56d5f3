"""Samples: files (images, texts, sounds...) with their labels, as a `samples` dataset
holds them, and what an export of samples is asked (seed 003's vocabulary: export_type,
search_conditions, sample_state, export_format, ratio_sample_usage...) and planned as."""

from __future__ import annotations

import enum
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    field_validator,
    model_validator,
)

NO_NUL = r"^[^\x00]*$"
Text = Annotated[str, StringConstraints(max_length=1000, pattern=NO_NUL)]
# a label names a folder of a tree export: no separator, no NUL, not `.` or `..`
LABEL_NAME = r"^[^/\\\x00-\x1f]{1,200}$"


def _not_dots(name: str) -> str:
    if name in (".", ".."):
        raise ValueError("a label cannot be named . or ..")
    return name


LabelName = Annotated[str, StringConstraints(pattern=LABEL_NAME), AfterValidator(_not_dots)]
SampleId = Annotated[str, StringConstraints(min_length=1, max_length=400, pattern=NO_NUL)]


class LabelType(enum.IntEnum):
    """Seed 003's label types (SearchLabel.type)."""

    IMAGE_CLASSIFICATION = 0
    OBJECT_DETECTION = 1
    IMAGE_SEGMENTATION = 3
    TEXT_CLASSIFICATION = 100
    NAMED_ENTITY_RECOGNITION = 101
    TEXT_TRIPLET_RELATIONSHIP = 102
    TEXT_TRIPLET_ENTITY = 103
    SOUND_CLASSIFICATION = 200
    SPEECH_CONTENT = 201
    SPEECH_PARAGRAPH_LABELING = 202
    VIDEO_LABELING = 600


class SampleState(enum.StrEnum):
    """Seed 003's sample_state values. A sample carries one of the states from UNCHECK
    on (or none); ALL ("labeled") and NONE ("not marked") only select."""

    ALL = "__ALL__"  # labeled (selects samples with a label)
    NONE = "__NONE__"  # not marked (selects samples without one)
    UNCHECK = "__UNCHECK__"  # to be accepted
    ACCEPTED = "__ACCEPTED__"
    REJECTED = "__REJECTED__"
    UNREVIEWED = "__UNREVIEWED__"
    REVIEWED = "__REVIEWED__"
    WORKFORCE_SAMPLED = "__WORKFORCE_SAMPLED__"
    WORKFORCE_SAMPLED_UNCHECK = "__WORKFORCE_SAMPLED_UNCHECK__"
    WORKFORCE_SAMPLED_CHECKED = "__WORKFORCE_SAMPLED_CHECKED__"
    WORKFORCE_SAMPLED_ACCEPTED = "__WORKFORCE_SAMPLED_ACCEPTED__"
    WORKFORCE_SAMPLED_REJECTED = "__WORKFORCE_SAMPLED_REJECTED__"
    AUTO_ANNOTATION = "__AUTO_ANNOTATION__"  # to be confirmed


SELECTING_STATES = (SampleState.ALL, SampleState.NONE)

# hard-example attributes: a sample's own, and the keys of a label's property
HARD_FIELDS = ("hard", "hard_coefficient", "hard_reasons")
HARD_PROPERTY_PREFIX = "@modelarts:hard"


def is_hard_property(key: str) -> bool:
    return key in HARD_FIELDS or key.startswith(HARD_PROPERTY_PREFIX)


class Label(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    name: LabelName
    type: LabelType = LabelType.IMAGE_CLASSIFICATION
    property: dict[str, Any] = Field(default_factory=dict)


class Sample(BaseModel):
    """One line of a samples manifest (JSON Lines). `source`: the file, relative to the
    manifest's folder (or absolute, under the same source directory)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    id: SampleId
    source: Annotated[str, StringConstraints(min_length=1, max_length=4000, pattern=NO_NUL)]
    labels: tuple[Label, ...] = ()
    state: SampleState | None = None
    hard: bool = False
    hard_coefficient: float | None = None
    hard_reasons: tuple[Text, ...] = ()
    labeler: Text | None = None
    import_origin: Text | None = None
    parent_sample_id: Text | None = None
    kvp: Text | None = None
    score: float | None = None
    slice_thickness: Text | None = None
    study_date: Text | None = None
    frame_in_video: int | None = None
    time_in_video: Text | None = None
    metadata: dict[str, Any] = Field(default_factory=dict)
    sample_time: datetime | None = None  # when it was added (last modification of the file)
    create_time: datetime | None = None
    update_time: datetime | None = None

    @field_validator("state")
    @classmethod
    def _held_state(cls, state: SampleState | None) -> SampleState | None:
        if state in SELECTING_STATES:
            raise ValueError(f"{state} selects samples; a sample cannot be in it")
        return state

    @property
    def name(self) -> str:
        return self.source.rsplit("/", 1)[-1]

    @property
    def directory(self) -> str:
        """The folder of its file, relative, ending with `/` (`""`: the top)."""
        head, _, _ = self.source.rpartition("/")
        return head + "/" if head else ""

    @property
    def labelled(self) -> bool:
        return bool(self.labels)

    @property
    def has_hard_attributes(self) -> bool:
        return bool(
            self.hard
            or self.hard_coefficient is not None
            or self.hard_reasons
            or any(is_hard_property(k) for lb in self.labels for k in lb.property)
        )

    def exported(self, clear_hard: bool) -> Sample:
        """As exported: without its hard-example attributes when they are cleared."""
        if not clear_hard or not self.has_hard_attributes:
            return self
        labels = tuple(
            lb.model_copy(
                update={
                    "property": {k: v for k, v in lb.property.items() if not is_hard_property(k)}
                }
            )
            for lb in self.labels
        )
        return self.model_copy(
            update={"labels": labels, "hard": False, "hard_coefficient": None, "hard_reasons": ()}
        )


# ---- seed 003's search conditions ----------------------------------------------------------

Op = Literal["AND", "OR"]
PropValues = list[Text] | None


class SearchProp(BaseModel):
    """Attributes (a sample's metadata): each key with the values it may have (null:
    any value, the key must be there); `op` joins the keys (default AND)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    op: Op | None = None
    props: dict[Text, PropValues] = Field(min_length=1)


class SearchLabel(BaseModel):
    """A label: its name, type and properties (`op` joins the properties, default AND)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: LabelName | None = None
    type: LabelType | None = None
    op: Op | None = None
    property: dict[Text, PropValues] | None = None


class SearchLabels(BaseModel):
    """Label criteria; `op` is required with more than one label."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    labels: list[SearchLabel] = Field(min_length=1, max_length=100)
    op: Op | None = None

    @model_validator(mode="after")
    def _op_given(self) -> SearchLabels:
        if len(self.labels) > 1 and self.op is None:
            raise ValueError("label_list.op (AND or OR) is required with more than one label")
        return self


SAMPLE_TIME = r"^(month|day|\d{8}-\d{8})$"
RANGE = r"^-?\d+(\.\d+)?(--?\d+(\.\d+)?)?$"  # a number, or `low-high`


class SearchCondition(BaseModel):
    """Seed 003's SearchCondition: every field given must hold (AND); the conditions of
    a request are joined by OR."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    coefficient: Annotated[str, StringConstraints(pattern=RANGE)] | None = None
    frame_in_video: int | None = None
    hard: Literal["0", "1"] | None = None
    import_origin: Text | None = None
    kvp: Text | None = None
    label_list: SearchLabels | None = None
    labeler: Text | None = None
    metadata: SearchProp | None = None
    parent_sample_id: Text | None = None
    sample_dir: Text | None = None
    sample_name: Text | None = None
    sample_time: Annotated[str, StringConstraints(pattern=SAMPLE_TIME)] | None = None
    score: Annotated[str, StringConstraints(pattern=RANGE)] | None = None
    slice_thickness: Text | None = None
    study_date: Text | None = None
    time_in_video: Text | None = None

    @field_validator("sample_dir")
    @classmethod
    def _dir(cls, value: str | None) -> str | None:
        if value is not None and not value.endswith("/"):
            raise ValueError("sample_dir must end with a slash (/)")
        return value

    @field_validator("sample_time")
    @classmethod
    def _period(cls, value: str | None) -> str | None:
        if value is None or "-" not in value:
            return value
        start, end = (datetime.strptime(p, "%Y%m%d") for p in value.split("-"))
        if end < start or (end - start).days > 30:
            raise ValueError("sample_time: a period of at most 30 days, start first")
        return value

    @model_validator(mode="after")
    def _not_empty(self) -> SearchCondition:
        if not self.model_fields_set:
            raise ValueError("a search condition needs at least one field")
        return self


# ---- what a samples export is asked ----------------------------------------------------------


class ExportType(enum.IntEnum):
    LABELLED = 0
    UNLABELLED = 1
    ALL = 2
    SEARCH = 3  # conditional search: search_conditions


class ExportFormat(enum.IntEnum):
    TREE = 1  # a folder per label: rabbits/1.jpg, bees/2.jpg
    TILE = 2  # each file beside its label file: 1.jpg, 1.txt


RATIO = r"^(0(\.\d{1,4})?|1(\.0{1,4})?)$"  # 0 to 1, as seed 003 writes it: "0.80"


class SampleExport(BaseModel):
    """A samples export, in seed 003's terms (its ExportParams and the task's own
    export_type, export_format and version_format)."""

    model_config = ConfigDict(extra="forbid")

    export_type: ExportType = ExportType.ALL
    search_conditions: list[SearchCondition] | None = Field(default=None, max_length=100)
    sample_state: SampleState | Literal[""] = ""
    samples: list[SampleId] | None = Field(
        default=None, max_length=100_000, description="ids of the samples to export"
    )
    export_format: ExportFormat = ExportFormat.TREE
    ratio_sample_usage: bool = False
    train_sample_ratio: (
        Annotated[str, StringConstraints(pattern=RATIO)] | Annotated[float, Field(ge=0.0, le=1.0)]
    ) = "1.00"
    split_seed: int | None = Field(
        default=None, ge=0, le=2**63 - 1, description="the split's seed (default: of the task id)"
    )
    clear_hard_property: bool = True
    version_format: Literal["Default", "CSV"] = "Default"
    export_dest: Literal["DIR", "NEW_DATASET"] = "DIR"
    export_new_dataset_name: (
        Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")] | None
    ) = None
    export_new_dataset_work_path: (
        Annotated[str, StringConstraints(min_length=1, max_length=4000, pattern=NO_NUL)] | None
    ) = None


class SamplesSpec(BaseModel):
    """The plan of a samples export: the request checked and completed once at
    submission (the split seed fixed, the new dataset's folder resolved)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    export_type: ExportType
    search_conditions: tuple[SearchCondition, ...] = ()
    sample_state: str = ""
    samples: tuple[str, ...] | None = None
    export_format: ExportFormat
    ratio_sample_usage: bool
    train_sample_ratio: float
    split_seed: int
    clear_hard_property: bool
    version_format: Literal["Default", "CSV"]
    export_dest: Literal["DIR", "NEW_DATASET"]
    new_dataset_name: str | None = None
    new_dataset_path: str | None = None  # resolved, absolute
    new_dataset_root: str | None = None  # the source directory it lies under

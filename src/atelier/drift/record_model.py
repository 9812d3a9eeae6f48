"""The feature record as a pydantic type: one definition for `/ingest` and the spool follower.

`FeatureRecord` is an ``atelier.features/v1`` record (`atelier.runtime.records`) with every
field typed and bounded, strictly: no bool for an int, no string for a number, no NaN or
infinity, no field beyond the format's. Its bounds come from where the values are made:
the request-id rule and the most images per request (`atelier.runtime.records`), the
feature ranges (`atelier.runtime.features`), the names the model store can hold
(`atelier.drift.reference`).

- The spool follower validates each line with `parse_line` (pydantic's own JSON parser:
  faster here than ``json.loads`` followed by checks in Python).
- ``POST /ingest`` validates each record of a body with the same type, through `IngestBody`,
  which FastAPI also publishes in the OpenAPI document.

What a type cannot know, whether the version is published and the class is one of its
classes, `RecordGate` checks against the model store.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any, Literal, NotRequired

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PlainValidator,
    RootModel,
    StringConstraints,
    TypeAdapter,
    ValidationError,
    with_config,
)
from pydantic_core import ErrorDetails, PydanticCustomError
from typing_extensions import TypedDict

from atelier.drift.reference import SAFE_NAME_PATTERN, VersionCatalog
from atelier.runtime.features import FEATURE_RANGES
from atelier.runtime.records import (
    MAX_IMAGES_PER_REQUEST,
    MAX_REQUEST_ID_LENGTH,
    REQUEST_ID_PATTERN,
)

# A class id is below the model's class count (checked by RecordGate per version); this
# bound only keeps a number that no classifier has out of the type.
MAX_CLASSES = 100_000
# A sampled input: base64 of at most 48 KiB (a 3x128x128 uint8 image; Fashion-MNIST's is 784 B).
MAX_INPUT_BASE64 = 4 * (48 * 1024 // 3 + 1)
# Records in one /ingest body (the body's size is bounded too, by a setting).
MAX_INGEST_RECORDS = 10_000


def _feature(name: str) -> Any:
    lo, hi = FEATURE_RANGES[name]
    return Field(ge=lo, le=hi, allow_inf_nan=False)


SafeName = Annotated[str, StringConstraints(pattern=SAFE_NAME_PATTERN)]


@with_config(ConfigDict(strict=True, extra="forbid"))
class FeatureRecord(TypedDict):
    """One image's features, as the handler writes them to the spool."""

    schema: Literal["atelier.features/v1"]
    request_id: Annotated[
        str,
        StringConstraints(
            min_length=1, max_length=MAX_REQUEST_ID_LENGTH, pattern=f"^{REQUEST_ID_PATTERN}$"
        ),
    ]
    index: Annotated[int, Field(ge=0, lt=MAX_IMAGES_PER_REQUEST)]
    time: Annotated[float, Field(ge=0, allow_inf_nan=False)]
    model_name: SafeName
    model_version: SafeName
    protocol: Annotated[str, StringConstraints(pattern=r"^[a-z0-9]{1,16}$")]
    brightness: Annotated[float, _feature("brightness")]
    contrast: Annotated[float, _feature("contrast")]
    ink_fraction: Annotated[float, _feature("ink_fraction")]
    edge_density: Annotated[float, _feature("edge_density")]
    center_x: Annotated[float, _feature("center_x")]
    center_y: Annotated[float, _feature("center_y")]
    predicted_class: Annotated[int, Field(ge=0, lt=MAX_CLASSES)]
    confidence: Annotated[float, _feature("confidence")]
    entropy: Annotated[float, _feature("entropy")]
    # The preprocessed input (base64 of its uint8 bytes), for a sample of requests only.
    input: NotRequired[
        Annotated[
            str,
            StringConstraints(max_length=MAX_INPUT_BASE64, pattern=r"^[A-Za-z0-9+/]*={0,2}$"),
        ]
    ]


RECORD: TypeAdapter[FeatureRecord] = TypeAdapter(FeatureRecord)


def parse_line(line: bytes | str) -> FeatureRecord:
    """One spool line as a record; raises `pydantic.ValidationError`."""
    return RECORD.validate_json(line)


# --- Refusals ---------------------------------------------------------------------------

RefusalReason = Literal["invalid", "unknown_model", "unknown_version", "class_out_of_range"]


@dataclass(frozen=True)
class Problem:
    """Why a record is refused: ``field`` is None when the record as a whole is wrong."""

    reason: RefusalReason
    field: str | None
    message: str


def invalid(errors: list[ErrorDetails]) -> Problem:
    """The first of a record's validation errors, as a refusal naming the field."""
    first = errors[0]
    loc = [str(p) for p in first["loc"]]
    field = loc[0] if loc else None
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    where = ".".join(loc)
    message = f"{where}: {first['msg']}{more}" if where else f"{first['msg']}{more}"
    return Problem("invalid", field, message)


class RecordGate:
    """What the type cannot know: the record's model and version are published in the store,
    and its predicted class is below that version's class count."""

    def __init__(self, catalog: VersionCatalog) -> None:
        self.catalog = catalog

    def problem(self, rec: FeatureRecord) -> Problem | None:
        """None for a record to keep. Raises `ReferenceUnavailableError` when the store has
        published nothing readable (the record cannot be judged either way)."""
        name, version = rec["model_name"], rec["model_version"]
        published = self.catalog.lookup(name, version)
        if published is None:
            store_name = self.catalog.model_name()
            if name != store_name:
                message = f"model_name {name!r} is not the store's model {store_name!r}"
                return Problem("unknown_model", "model_name", message)
            message = (
                f"model_version {version!r} is not a published version of {name!r}: the "
                f"store has no versions/{version}/model-store/{name}.mar"
            )
            return Problem("unknown_version", "model_version", message)
        k, pc = published.num_classes, rec["predicted_class"]
        if pc >= k:
            message = (
                f"predicted_class {pc} is not a class of {name!r} version {version!r}, "
                f"which has {k} (0 to {k - 1})"
            )
            return Problem("class_out_of_range", "predicted_class", message)
        return None


# --- The /ingest body -------------------------------------------------------------------


@dataclass(frozen=True)
class Invalid:
    """A record of an /ingest body that failed `FeatureRecord` (kept so the others are not)."""

    problem: Problem


def _record(value: Any) -> FeatureRecord | Invalid:
    try:
        return RECORD.validate_python(value)
    except ValidationError as exc:
        return Invalid(invalid(exc.errors(include_url=False, include_input=False)))


def _single_record(value: Any) -> FeatureRecord | Invalid:
    # A body that is one object: a record (good or bad), unless it is not an object at all
    # or meant to be {"records": [...]} (then the body is wrong, not one of its records).
    if not isinstance(value, dict) or "records" in value:
        raise PydanticCustomError("not_a_record", "expected a feature record object")
    return _record(value)


# Each record is validated on its own: a bad one becomes `Invalid`, the others stay usable.
RecordSlot = Annotated[Any, PlainValidator(_record, json_schema_input_type=FeatureRecord)]
SingleRecord = Annotated[Any, PlainValidator(_single_record, json_schema_input_type=FeatureRecord)]
RecordList = Annotated[list[RecordSlot], Field(min_length=1, max_length=MAX_INGEST_RECORDS)]


class IngestEnvelope(BaseModel):
    model_config = ConfigDict(extra="forbid")

    records: RecordList


class IngestBody(
    RootModel[
        Annotated[IngestEnvelope | RecordList | SingleRecord, Field(union_mode="left_to_right")]
    ]
):
    """One feature record, a list of them, or ``{"records": [...]}``."""

    def records(self) -> list[FeatureRecord | Invalid]:
        root = self.root
        if isinstance(root, IngestEnvelope):
            return list(root.records)
        if isinstance(root, list):
            return root
        return [root]


class RefusedRecord(BaseModel):
    index: int = Field(description="the record's position in the body, from 0")
    field: str | None = Field(description="the field at fault; null: the record as a whole")
    reason: RefusalReason
    message: str


class IngestAnswer(BaseModel):
    accepted: int = Field(description="records stored in the spool")
    refused: list[RefusedRecord] = Field(description="records refused, each with its reason")


def count_records(body: Any) -> int | None:
    """Records a parsed body holds (before validation), or None when it is not a list or an
    envelope; to refuse a body of too many before each one is validated."""
    if isinstance(body, list):
        return len(body)
    if isinstance(body, dict) and isinstance(body.get("records"), list):
        return len(body["records"])
    return None

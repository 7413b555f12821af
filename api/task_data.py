"""Per-task-type `task_data` schemas: required fields, types, lengths, delivery overrides."""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
)
from pydantic_core import PydanticCustomError

from api.errors import format_loc
from moviegen_dagster.fetch import FetchError, check_url_syntax

Text = Annotated[str, Field(strict=True, min_length=1, max_length=2000)]
Label = Annotated[str, Field(strict=True, min_length=1, max_length=100)]
_UrlText = Annotated[str, Field(strict=True, min_length=8, max_length=2048)]
Seed = Annotated[int, Field(strict=True, ge=0, le=2**63 - 1)]
_RESOLUTION = re.compile(r"^([1-9][0-9]{1,3})x([1-9][0-9]{1,3})$")


def _check_url(value: str) -> str:
    if not value.startswith(("http://", "https://")) or value != value.strip():
        raise ValueError("must be an absolute http(s) URL")
    # Credentials, control characters and malformed hosts are refused here; destinations
    # (private, loopback, ...) where the worker fetches, since a name resolves only there.
    try:
        check_url_syntax(value, "url")
    except FetchError as exc:
        raise ValueError(str(exc).removeprefix("url: ")) from None
    return value


# Checked per item, so an error names the list index (`storyboard_images[2]`).
Url = Annotated[_UrlText, AfterValidator(_check_url)]


def _check_resolution(value: str, max_w: int, max_h: int, multiple: int) -> str:
    match = _RESOLUTION.fullmatch(value)
    if not match:
        raise ValueError('must look like "WIDTHxHEIGHT", e.g. "1024x1024"')
    w, h = int(match.group(1)), int(match.group(2))
    if not (64 <= w <= max_w and 64 <= h <= max_h):
        raise ValueError(f"must be between 64x64 and {max_w}x{max_h}")
    if w % multiple or h % multiple:
        raise ValueError(f"width and height must be multiples of {multiple}")
    return value


class _Data(BaseModel):
    model_config = ConfigDict(extra="forbid")


class VideoData(_Data):
    """generate_video: storyboard frames as keyframes, a scene, delivery format overrides."""

    storyboard_images: Annotated[list[Url], Field(min_length=1, max_length=16)]
    scene_description: Text
    camera_angle: Label | None = None
    lighting: Label | None = None
    character_positions: Annotated[list[Label], Field(max_length=16)] = Field(default_factory=list)
    audio_cues: Annotated[list[Label], Field(max_length=16)] = Field(default_factory=list)
    duration: Annotated[float, Field(ge=1.0, le=30.0)] = 7.0
    resolution: str = "1920x1080"
    fps: Annotated[int, Field(strict=True, ge=1, le=60)] = 24
    seed: Seed | None = None
    steps: Annotated[int, Field(strict=True, ge=1, le=100)] | None = None

    @field_validator("resolution")
    @classmethod
    def _res(cls, value: str) -> str:
        return _check_resolution(value, 1920, 1080, 2)


class ImageData(_Data):
    """generate_image: a character description, optional style guide and reference images."""

    character_description: Text
    style_guide: Url | None = None
    reference_images: Annotated[list[Url], Field(max_length=8)] = Field(default_factory=list)
    pose: Label | None = None
    lighting: Label | None = None
    resolution: str = "1024x1024"
    seed: Seed | None = None
    steps: Annotated[int, Field(strict=True, ge=1, le=100)] | None = None

    @field_validator("resolution")
    @classmethod
    def _res(cls, value: str) -> str:
        return _check_resolution(value, 2048, 2048, 16)


class AudioData(_Data):
    """process_audio: a line of dialogue in a character's voice, with optional ambience."""

    text: Text
    character_voice_profile: Url
    emotion: Label | None = None
    pace: Literal["slow", "normal", "fast"] = "normal"
    background_noise: Label | None = None
    sample_rate: Literal[22050, 24000, 44100, 48000] = 44100
    seed: Seed | None = None


SCHEMAS: dict[str, type[_Data]] = {
    "generate_video": VideoData,
    "generate_image": ImageData,
    "process_audio": AudioData,
}


def validate_task_data(task_type: str, data: dict[str, Any]) -> dict[str, Any]:
    """Validate and normalise task_data for its type (defaults filled in, None fields dropped).

    Raises a PydanticCustomError whose `field` names the offending path under `task_data`.
    """
    try:
        model = SCHEMAS[task_type].model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        inner = format_loc(first.get("loc", ())) or ""
        field = "task_data" + ("" if not inner else inner if inner.startswith("[") else "." + inner)
        msg = {"missing": "field required", "extra_forbidden": "unknown field"}.get(
            first["type"], first["msg"].removeprefix("Value error, ")
        )
        # The handler in api/errors.py reads `field` from the context and prefixes the message.
        raise PydanticCustomError("task_data_invalid", msg, {"field": field}) from None
    return model.model_dump(exclude_none=True)

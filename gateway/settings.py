"""Every setting of the gateway, read from ``AVN_*`` environment variables (pydantic-settings).

One ``Settings`` object is built at start-up and handed to the pieces that need it (backend,
cache, gRPC server, REST app); nothing else reads the environment. ``docs/deployment.md`` has the
table of variables; keep the two in step (a test checks that every field is documented there).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from avn.pipeline.decode import DEFAULT_MAX_DECODE_BYTES, DEFAULT_MAX_IMAGE_BYTES
from avn.pipeline.pipeline import DEFAULT_DEADLINE_S, DEFAULT_MAX_STUDY_BYTES, DEFAULT_MAX_STUDY_RADIOGRAPHS
from avn.pipeline.results import DEFAULT_NOTE_THRESHOLD

ENV_PREFIX = "AVN_"


class Settings(BaseSettings):
    """The gateway's configuration; ``Settings()`` reads ``AVN_<FIELD>`` (case-insensitive)."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="ignore", frozen=True)

    # ---- models
    model_store: Path = Field(Path("model_store"), description="Folder of the five .mar archives.")
    backend: Literal["torchserve", "embedded"] = Field(
        "torchserve", description="`torchserve`: call TorchServe over gRPC; `embedded`: run the models in-process."
    )
    torchserve_grpc: str = Field(
        "127.0.0.1:7070", description="host:port of TorchServe's gRPC inference API (`grpc_inference_port`)."
    )
    torchserve_management: str = Field(
        "127.0.0.1:7071", description="host:port of TorchServe's gRPC management API (`grpc_management_port`)."
    )
    torchserve_inference_key: SecretStr | None = Field(
        None, description="TorchServe's inference token (its `key_file.json`); unset when token auth is off."
    )
    torchserve_management_key: SecretStr | None = Field(
        None, description="TorchServe's management token; unset when token auth is off."
    )
    torchserve_key_file: Path | None = Field(
        None,
        description="TorchServe's `key_file.json` (shared volume): tokens read from it, re-read when it changes. "
        "Ignored for a token given above.",
    )

    # ---- serving
    grpc_host: str = Field("127.0.0.1", description="Address the gRPC server binds (`0.0.0.0` in a container).")
    grpc_port: int = Field(50051, ge=1, le=65535, description="gRPC port.")
    rest_host: str = Field("127.0.0.1", description="Address the REST server binds (`0.0.0.0` in a container).")
    rest_port: int = Field(8000, ge=1, le=65535, description="REST port.")
    max_payload_bytes: int = Field(
        DEFAULT_MAX_IMAGE_BYTES,
        gt=0,
        description="Largest radiograph accepted, bytes; larger ones get 413 / RESOURCE_EXHAUSTED.",
    )
    max_decode_bytes: int = Field(
        DEFAULT_MAX_DECODE_BYTES,
        gt=0,
        description="Decode budget of one radiograph, bytes of decoded samples (frames × samples × rows × columns × "
        "bytes per sample, read from the header before decoding; a Deflated DICOM is refused once it inflates past "
        "it). Over it: 413 / RESOURCE_EXHAUSTED.",
    )
    max_study_bytes: int = Field(
        DEFAULT_MAX_STUDY_BYTES,
        gt=0,
        description="Largest study accepted, bytes of all its radiographs together; larger: 413 / RESOURCE_EXHAUSTED.",
    )
    max_study_radiographs: int = Field(
        DEFAULT_MAX_STUDY_RADIOGRAPHS,
        ge=1,
        description="Most radiographs in one study; more: 413 / RESOURCE_EXHAUSTED.",
    )
    deadline_s: float = Field(
        DEFAULT_DEADLINE_S,
        gt=0,
        description="Deadline of one request, seconds (REST; gRPC: caps the client's deadline). "
        "Past it: 504 / DEADLINE_EXCEEDED.",
    )
    note_threshold: float = Field(
        DEFAULT_NOTE_THRESHOLD,
        ge=0,
        le=1,
        description="A fused note probability at or above this is reported as present.",
    )

    # ---- cache
    cache_enabled: bool = Field(True, description="`false` turns the result cache off (benchmarks).")
    redis_url: str | None = Field(
        None, description="e.g. `redis://redis:6379/0`; unset: an in-process LRU cache instead of Redis."
    )
    cache_ttl_s: int = Field(24 * 3600, gt=0, description="Lifetime of a cached result in Redis, seconds.")
    cache_entries: int = Field(256, ge=1, description="Entries the in-process LRU cache holds (no Redis).")
    redis_retry_s: float = Field(
        5.0, gt=0, description="While Redis is unreachable, how often the gateway tries it again, seconds."
    )

    # ---- web application
    case_bank: Path | None = Field(
        Path("data/demo"),
        description="Data-set folder of the web app's self-study case bank: its E3 split when that holds at least "
        "10 cases, else every radiograph; empty: no case bank.",
    )

    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field("INFO", description="Python log level.")

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper_case_level(cls, value: object) -> object:
        return value.upper() if isinstance(value, str) else value

    @field_validator("redis_url", mode="before")
    @classmethod
    def _empty_url_is_unset(cls, value: object) -> object:
        # Compose files pass AVN_REDIS_URL= to mean "no Redis".
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("case_bank", mode="before")
    @classmethod
    def _empty_path_is_unset(cls, value: object) -> object:
        # AVN_CASE_BANK= (empty) turns the case bank off, as AVN_REDIS_URL= turns Redis off.
        return None if isinstance(value, str) and not value.strip() else value

    @staticmethod
    def secret(value: SecretStr | None) -> str | None:
        """The plain text of a token setting, or None."""
        return value.get_secret_value() if value is not None else None


def environment_variables() -> dict[str, str]:
    """``AVN_<FIELD>`` → description, for documentation and its test."""
    return {f"{ENV_PREFIX}{name.upper()}": field.description or "" for name, field in Settings.model_fields.items()}

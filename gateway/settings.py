"""Every setting of the gateway and of ``avn serve``, and the one rule that decides each value.

Precedence, highest first, for every setting alike:

1. a command-line flag that was given (passed as keyword arguments: a flag left out is not passed);
2. the ``AVN_<SETTING>`` environment variable;
3. the TOML settings file named by ``--config FILE`` or ``AVN_CONFIG`` (keys are the setting names);
4. the default below.

pydantic-settings does the merging (:meth:`Settings.settings_customise_sources`); :func:`layered_sources`
is the one list of layers, used both to build settings and to tell where each value came from
(:mod:`gateway.configuration`). One ``Settings`` object is built at start-up and handed to the pieces
that need it (backend, cache, gRPC server, REST app). ``docs/configuration.md`` is generated from
this class (``avn config docs``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    EnvSettingsSource,
    InitSettingsSource,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from avn.pipeline.backend import MODELS
from avn.pipeline.decode import DEFAULT_MAX_DECODE_BYTES, DEFAULT_MAX_IMAGE_BYTES
from avn.pipeline.pipeline import DEFAULT_DEADLINE_S, DEFAULT_MAX_STUDY_BYTES, DEFAULT_MAX_STUDY_RADIOGRAPHS
from avn.pipeline.results import DEFAULT_NOTE_THRESHOLD, SELECTABLE_POINTS
from avn.pipeline.threads import DEFAULT_IMAGE_THREADS, DEFAULT_MODEL_THREADS
from gateway.admission import DEFAULT_MAX_IN_FLIGHT

ENV_PREFIX = "AVN_"
CONFIG_SETTING = "config"
# Where a value came from, highest precedence first.
FLAG, ENVIRONMENT, FILE, DEFAULT = "flag", "environment", "file", "default"
REDIS_SCHEMES = ("redis", "rediss", "unix")
OTLP_SCHEMES = ("http", "https")
WORKERS_ENV_PREFIX = "AVN_WORKERS_"  # AVN_WORKERS_DETECTION=2, …: read by the TorchServe container only
MAX_AE_TITLE_LENGTH = 16  # PS3.5 table 6.2-1, VR AE
DICOM_DESTINATION = re.compile(r"(?P<ae_title>[^@]+)@(?P<host>[^@:]+):(?P<port>[0-9]+)")


class Settings(BaseSettings):
    """The gateway's configuration; ``Settings()`` reads ``AVN_<FIELD>`` (case-insensitive) and the
    settings file; keyword arguments are the flags given on the command line."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="ignore", frozen=True)

    config: Path | None = Field(
        None,
        description="TOML settings file: `setting = value` lines, keys as in the first column's setting names. "
        "Below the environment and flags, above the defaults.",
    )

    # ---- models
    model_store: Path = Field(
        Path("model_store"),
        description="Folder of the five .mar archives: what `avn serve` serves, and what the embedded backend loads.",
    )
    backend: Literal["torchserve", "embedded", "oip"] = Field(
        "torchserve",
        description="`torchserve`: call TorchServe over gRPC; `embedded`: load the archives and run the models in "
        "the gateway process (no TorchServe; one process, no batching across requests); `oip`: each model at "
        "addresses of its own over the Open Inference Protocol (`AVN_OIP_ENDPOINTS_<MODEL>`).",
    )
    oip_endpoints_detection: str | None = Field(
        None, description="`oip` backend: `host:port[,host:port…]` of the detector's replicas (OIP gRPC)."
    )
    oip_endpoints_view: str | None = Field(None, description="`oip` backend: the view model's replicas.")
    oip_endpoints_side: str | None = Field(None, description="`oip` backend: the side model's replicas.")
    oip_endpoints_staging: str | None = Field(None, description="`oip` backend: the staging model's replicas.")
    oip_endpoints_notes: str | None = Field(None, description="`oip` backend: the notes model's replicas.")
    oip_service: str = Field(
        "inference.GRPCInferenceService",
        description="`oip` backend: the OIP service's full gRPC name: `inference.GRPCInferenceService` (KServe, "
        "Triton) or `org.pytorch.serve.grpc.openinference.GRPCInferenceService` (TorchServe).",
    )
    oip_token: SecretStr | None = Field(
        None, description="`oip` backend: a bearer token sent to the model servers, when they ask for one."
    )
    torchserve_grpc: str = Field(
        "127.0.0.1:7070", description="host:port of TorchServe's gRPC inference API (`grpc_inference_port`)."
    )
    torchserve_management: str = Field(
        "127.0.0.1:7071", description="host:port of TorchServe's gRPC management API (`grpc_management_port`)."
    )
    torchserve_inference_key: SecretStr | None = Field(
        None,
        description="TorchServe's inference token; unset when token authorisation is off or the key file is used.",
    )
    torchserve_management_key: SecretStr | None = Field(
        None, description="TorchServe's management token (model cards, scaling)."
    )
    torchserve_key_file: Path | None = Field(
        None,
        description="TorchServe's `key_file.json` (shared volume): tokens read from it, re-read when it changes. "
        "A token set above wins. Its folder must exist at start-up; the file may appear later.",
    )
    ready_timeout_s: float = Field(
        300.0, gt=0, description="`avn serve` only: seconds the TorchServe it starts may take to load every model."
    )

    # ---- serving
    grpc_host: str = Field("127.0.0.1", description="Address the gRPC server binds (`0.0.0.0` in a container).")
    grpc_port: int = Field(50051, ge=1, le=65535, description="gRPC port.")
    rest_host: str = Field("127.0.0.1", description="Address the REST server binds (`0.0.0.0` in a container).")
    rest_port: int = Field(8000, ge=1, le=65535, description="REST port.")
    max_payload_bytes: int = Field(
        DEFAULT_MAX_IMAGE_BYTES,
        gt=0,
        description="Largest radiograph file accepted, bytes; larger: 413 / `RESOURCE_EXHAUSTED`. Kept under the "
        "64 MiB gRPC message limit so that the gateway, not the transport, names the problem. A study may carry "
        "this much per file.",
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
        description="Deadline of one request, seconds (REST; for gRPC it caps the client's deadline). "
        "Past it: 504 / `DEADLINE_EXCEEDED`. Also bounds each TorchServe call.",
    )
    max_in_flight: int = Field(
        DEFAULT_MAX_IN_FLIGHT,
        ge=1,
        description="Requests the gateway works on at once, REST and gRPC together (health checks aside); one "
        "more is refused at once: 429 / RESOURCE_EXHAUSTED with Retry-After. gRPC's transport also caps "
        "concurrent calls at this plus a margin for health checks (`maximum_concurrent_rpcs`).",
    )
    body_timeout_s: float = Field(
        60.0,
        gt=0,
        description="REST: seconds a request body may take to arrive, whole; a slower upload gets 408 and its "
        "slot back.",
    )
    image_threads: int = Field(
        DEFAULT_IMAGE_THREADS,
        ge=1,
        description="Threads that decode radiographs, hash them for the cache and draw CAMs, overlays and "
        "renditions: at most this many images are decoded at once (memory: about the decode budget plus 4 "
        "bytes a pixel each).",
    )
    model_threads: int = Field(
        DEFAULT_MODEL_THREADS,
        ge=1,
        description="Embedded backend: threads running model forward passes (a pool apart from the image threads).",
    )
    drain_s: float = Field(
        25.0,
        gt=0,
        description="On SIGTERM: seconds the requests in flight get to finish (both protocols report not ready "
        "and refuse new work meanwhile) before the servers stop. Keep it under the orchestrator's grace period "
        "(compose `stop_grace_period`: 30 s).",
    )
    note_threshold: float = Field(
        DEFAULT_NOTE_THRESHOLD,
        ge=0,
        le=1,
        description="Default threshold: a fused note probability at or above it is reported as present "
        "(a request may set its own).",
    )
    operating_point: str | None = Field(
        None,
        description="This node's operating point on AVN presence (a request may choose its own): `sensitive`, "
        "`specific` or `default` from the staging model card, or `argmax`; unset: the card's `default` "
        "(docs/integration.md).",
    )

    # ---- DICOM node (`avn dicom-node`)
    dicom_host: str = Field(
        "127.0.0.1",
        description="Address the DICOM node's Storage SCP binds (`0.0.0.0` to take associations from other hosts).",
    )
    dicom_port: int = Field(
        11112, ge=1, le=65535, description="Port of the DICOM node's Storage SCP (11112: DICOM's registered port)."
    )
    dicom_ae_title: str = Field(
        "AVNNET",
        description="The DICOM node's AE title: the called AE title modalities send to, and the calling AE title of "
        "its own C-STOREs to the destination.",
    )
    dicom_allowed_aes: Annotated[tuple[str, ...], NoDecode] = Field(
        (),
        description="Calling AE titles the DICOM node accepts associations from (comma-separated; a list in the "
        "settings file); empty: any. Others are refused at association (A-ASSOCIATE-RJ).",
    )
    dicom_destination: str | None = Field(
        None,
        description="Where the DICOM node sends the SR and the annotated copy by C-STORE: `AE_TITLE@host:port` "
        "(the PACS). `avn dicom-node` needs it.",
    )
    dicom_spool: Path = Field(
        Path("dicom-spool"),
        description="The DICOM node's spool folder: received files, outputs not yet delivered and failed files, kept "
        "across restarts (docs/integration.md, DICOM node). On a local disk: it is fsynced and renamed into.",
    )
    dicom_retry_initial_s: float = Field(
        2.0,
        gt=0,
        description="While the destination cannot be reached (or the models cannot answer), the DICOM node's first "
        "wait before it tries again, seconds; each further failure doubles it.",
    )
    dicom_retry_max_s: float = Field(
        300.0,
        gt=0,
        description="Longest wait of the DICOM node between two tries of the destination (or the models), seconds.",
    )

    # ---- who may call, and over what
    auth: Literal["api-key", "off"] = Field(
        "api-key",
        description="`api-key`: every request but the health checks needs `authorization: Bearer <key>` (REST "
        "header, gRPC metadata) with a key of `api_keys_file`; `off`: no authentication, allowed only while both "
        "servers bind loopback (development).",
    )
    api_keys_file: Path | None = Field(
        None,
        description="The API keys file (salted scrypt hashes, never the keys): `avn keys add ID --file FILE` writes "
        "it and prints the key once. Re-read when it changes: keys are added and revoked without a restart.",
    )
    tls_cert_file: Path | None = Field(
        None,
        description="PEM certificate (chain) both servers present; with `tls_key_file` it turns TLS on for REST "
        "and gRPC. Unset: plain text (terminate TLS in front, or stay on loopback).",
    )
    tls_key_file: Path | None = Field(None, description="PEM private key of `tls_cert_file`.")
    tls_client_ca_file: Path | None = Field(
        None,
        description="PEM CA bundle: when set (with TLS on), both servers require a client certificate signed by "
        "it (mutual TLS), in addition to the API key.",
    )

    # ---- cache
    cache_enabled: bool = Field(True, description="`false` turns the result cache off (benchmarks).")
    redis_url: str | None = Field(
        None,
        description="e.g. `redis://redis:6379/0` (`rediss://` for TLS, `redis://:password@host:6379/0`); "
        "unset or empty: an in-process LRU cache instead of Redis.",
    )
    redis_password: SecretStr | None = Field(
        None,
        description="Redis's password (`requirepass`, or the ACL user's); one in `redis_url` wins. Compose sets "
        "it on both sides.",
    )
    redis_username: str | None = Field(None, description="Redis ACL user (unset: the default user).")
    redis_ca_file: Path | None = Field(
        None, description="PEM CA bundle that signed Redis's certificate, for a `rediss://` URL (unset: the system's)."
    )
    cache_secret: SecretStr | None = Field(
        None,
        description="Key of the HMAC that signs every value written to Redis; an entry without a valid signature "
        "(forged, altered) is a miss. The same on every replica; at least 16 characters. Unset: a random one per "
        "process (replicas and restarts then share no entries).",
    )
    cache_ttl_s: int = Field(24 * 3600, gt=0, description="Lifetime of a cached result in Redis, seconds.")
    cache_entries: int = Field(256, ge=1, description="Results the in-process LRU cache holds (no Redis).")
    redis_retry_s: float = Field(
        5.0, gt=0, description="While Redis is unreachable, how often the gateway tries it again, seconds."
    )

    # ---- web application
    case_bank: Path | None = Field(
        Path("data/demo"),
        description="Data-set folder (docs/dataset.md) of the web app's self-study case bank: its E3 split when that "
        "holds at least 10 annotated radiographs, else every annotated radiograph. Relative to the working "
        "directory. Missing or empty (`AVN_CASE_BANK=`): the gateway still starts, `GET /v1/cases` says why "
        "there is no bank.",
    )

    # ---- operations
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field("INFO", description="Python log level.")
    audit_log_file: Path | None = Field(
        None,
        description="Where the audit log goes: one JSON line per request (who, what, when, outcome, ids, model "
        "versions; no PHI), appended to this file (reopened when rotated away). Unset: standard output, apart "
        "from the other logs (standard error).",
    )
    otlp_endpoint: str | None = Field(
        None,
        description="OpenTelemetry collector for traces (OTLP over gRPC), e.g. `http://otel-collector:4317`. "
        "Unset: the standard `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` / `OTEL_EXPORTER_OTLP_ENDPOINT`; none of "
        "them set: tracing is off.",
    )
    trace_service_name: str = Field("avn-gateway", description="`service.name` of the gateway's traces.")

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # No .env or secrets directory: one story for operators, flags > environment > file > defaults.
        return tuple(source for _, source in layered_sources(settings_cls, init_settings, env_settings))

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper_case_level(cls, value: object) -> object:
        return value.upper() if isinstance(value, str) else value

    @field_validator("redis_url", "otlp_endpoint", "redis_password", "redis_username", "cache_secret", mode="before")
    @classmethod
    def _empty_text_is_unset(cls, value: object) -> object:
        # Compose files pass AVN_REDIS_URL= to mean "no Redis", and empty variables for unset secrets.
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator(
        "case_bank",
        "config",
        "torchserve_key_file",
        "api_keys_file",
        "tls_cert_file",
        "tls_key_file",
        "tls_client_ca_file",
        "audit_log_file",
        "redis_ca_file",
        mode="before",
    )
    @classmethod
    def _empty_path_is_unset(cls, value: object) -> object:
        # AVN_CASE_BANK= (empty) turns the case bank off, as AVN_REDIS_URL= turns Redis off.
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("operating_point", mode="before")
    @classmethod
    def _known_operating_point(cls, value: object) -> object:
        if isinstance(value, str) and not value.strip():
            return None  # AVN_OPERATING_POINT= (empty): the card's default
        if value is not None and value not in SELECTABLE_POINTS:
            raise ValueError(f"not one of {', '.join(SELECTABLE_POINTS)}")
        return value

    @field_validator("dicom_ae_title")
    @classmethod
    def _valid_ae_title(cls, value: str) -> str:
        return check_ae_title(value)

    @field_validator("dicom_allowed_aes", mode="before")
    @classmethod
    def _ae_title_list(cls, value: object) -> object:
        # The environment gives "MODALITY_1,CR_ROOM" (NoDecode: no JSON); the file a TOML list.
        if isinstance(value, str):
            value = [title for title in value.split(",") if title.strip()]
        if isinstance(value, list | tuple):
            return tuple(check_ae_title(str(title)) for title in value)
        return value

    @field_validator("dicom_destination", mode="before")
    @classmethod
    def _destination_parses(cls, value: object) -> object:
        if isinstance(value, str) and not value.strip():
            return None
        if isinstance(value, str):
            parse_dicom_destination(value)
        return value

    @field_validator("cache_secret")
    @classmethod
    def _cache_secret_is_long_enough(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and len(value.get_secret_value()) < 16:
            raise ValueError("the cache secret must be at least 16 characters")
        return value

    @field_validator("redis_url")
    @classmethod
    def _redis_url_parses(cls, value: str | None) -> str | None:
        if value is not None:
            check_url(value, REDIS_SCHEMES)
        return value

    @field_validator("otlp_endpoint")
    @classmethod
    def _otlp_endpoint_parses(cls, value: str | None) -> str | None:
        if value is not None:
            check_url(value, OTLP_SCHEMES)
        return value

    def oip_endpoints(self) -> dict[str, tuple[str, ...]]:
        """The ``oip`` backend's replicas per model (``AVN_OIP_ENDPOINTS_<MODEL>``)."""
        from gateway.oip_backend import parse_endpoints  # noqa: PLC0415 — gRPC, needed by that backend only

        texts = {model: getattr(self, f"oip_endpoints_{model}") for model in MODELS}
        return {model: parse_endpoints(text) for model, text in texts.items() if text}

    @model_validator(mode="after")
    def _oip_endpoints_complete(self) -> Settings:
        if self.backend == "oip":
            missing = [model for model in MODELS if not getattr(self, f"oip_endpoints_{model}")]
            if missing:
                names = ", ".join(f"AVN_OIP_ENDPOINTS_{model.upper()}" for model in missing)
                raise ValueError(f"the oip backend needs the address of every model; set {names}")
            self.oip_endpoints()  # each one parses
        return self

    @staticmethod
    def secret(value: SecretStr | None) -> str | None:
        """The plain text of a token setting, or None."""
        return value.get_secret_value() if value is not None else None


def layered_sources(
    settings_cls: type[BaseSettings],
    init_settings: PydanticBaseSettingsSource,
    env_settings: PydanticBaseSettingsSource,
) -> tuple[tuple[str, PydanticBaseSettingsSource], ...]:
    """The sources of settings, highest precedence first, each with the name of its layer.

    The settings file is itself a setting (``--config`` or ``AVN_CONFIG``), so it is looked up in
    the two layers above it before it is read.
    """
    config_file = _given(init_settings, CONFIG_SETTING) or _given(env_settings, CONFIG_SETTING)
    file_settings = TomlConfigSettingsSource(settings_cls, toml_file=Path(config_file) if config_file else None)
    return ((FLAG, init_settings), (ENVIRONMENT, env_settings), (FILE, file_settings))


def sources_of(settings_cls: type[BaseSettings], flags: dict[str, Any]) -> tuple[tuple[str, Any], ...]:
    """The same layers as :meth:`Settings.settings_customise_sources`, built outside a settings object:
    what :mod:`gateway.configuration` asks which keys each layer gives."""
    return layered_sources(
        settings_cls, InitSettingsSource(settings_cls, init_kwargs=flags), EnvSettingsSource(settings_cls)
    )


def _given(source: PydanticBaseSettingsSource, name: str) -> Any:
    value = source.init_kwargs.get(name) if isinstance(source, InitSettingsSource) else source().get(name)
    return None if isinstance(value, str) and not value.strip() else value


def check_url(url: str, schemes: tuple[str, ...]) -> None:
    """Raise ValueError unless ``url`` has one of ``schemes``, a host (but for unix sockets) and a
    numeric port when it names one. Nothing is contacted."""
    parts = urlsplit(url)
    if parts.scheme not in schemes:
        raise ValueError(f"the scheme must be one of {', '.join(s + '://' for s in schemes)}")
    if parts.scheme == "unix":
        if not parts.path:
            raise ValueError("a unix:// URL needs the socket's path")
        return
    if not parts.hostname:
        raise ValueError("the URL names no host")
    try:
        parts.port  # noqa: B018 — the property parses the port and raises on a bad one
    except ValueError as error:
        raise ValueError(f"bad port: {error}") from None


@dataclass(frozen=True)
class DicomDestination:
    """A DICOM application entity to send to: its AE title and network address."""

    ae_title: str
    host: str
    port: int

    def __str__(self) -> str:
        return f"{self.ae_title}@{self.host}:{self.port}"


def parse_dicom_destination(text: str) -> DicomDestination:
    """``AE_TITLE@host:port`` (the notation of dcm4che's tools) as a :class:`DicomDestination`;
    ValueError when it is not one."""
    match = DICOM_DESTINATION.fullmatch(text.strip())
    if match is None:
        raise ValueError("expected AE_TITLE@host:port")
    port = int(match["port"])
    if not 1 <= port <= 65535:
        raise ValueError(f"port {port} is not from 1 to 65535")
    return DicomDestination(check_ae_title(match["ae_title"]), match["host"], port)


def check_ae_title(title: str) -> str:
    """``title`` without padding when it is a valid AE title (1 to 16 characters, no backslash or
    control character, not blank); else ValueError."""
    stripped = title.strip()
    if not stripped or len(stripped) > MAX_AE_TITLE_LENGTH:
        raise ValueError(f"an AE title has 1 to {MAX_AE_TITLE_LENGTH} characters")
    if "\\" in stripped or not stripped.isprintable() or not stripped.isascii():
        raise ValueError("an AE title has printable ASCII characters other than a backslash")
    return stripped


def redacted_url(url: str) -> str:
    """``url`` with any password replaced by ``***`` (logs, ``avn config show``)."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.netloc.rpartition("@")[2]
    return parts._replace(netloc=f"{user}:***@{host}").geturl()


def environment_variables() -> dict[str, str]:
    """``AVN_<FIELD>`` → description, for documentation and its test."""
    return {env_name(name): field.description or "" for name, field in Settings.model_fields.items()}


def env_name(setting: str) -> str:
    return f"{ENV_PREFIX}{setting.upper()}"


# Variables with the AVN_ prefix that are no gateway setting: read by docker-compose.yml or by the
# TorchServe container's start-up. Known, so that they are not reported as mistyped settings.
OTHER_VARIABLES: dict[str, str] = {
    "AVN_IMAGE": "Compose: the image tag of every container (default `avn-serving:latest`).",
    "AVN_MODEL_STORE_DIR": "Compose: host folder of the archives (default `./model_store`).",
    **{
        f"{WORKERS_ENV_PREFIX}{model.upper()}": f"TorchServe container: workers of the {model} model (default 1)."
        for model in MODELS
    },
    "AVN_TS_GPUS": "TorchServe container: GPUs TorchServe may use (`0`: CPU; `-1`: every GPU it sees).",
    "AVN_TS_TOKEN_EXPIRATION_MIN": "Compose: lifetime of TorchServe's API tokens, minutes (default a year).",
    "AVN_GPU_COUNT": "Compose (`--profile gpu`): GPUs reserved for TorchServe (default all).",
    "AVN_REDIS_MAXMEMORY": "Compose: Redis memory limit before LRU eviction (default `1gb`).",
    "AVN_GATEWAY_REPLICAS": "Compose: gateway containers (default 1).",
    "AVN_REST_PUBLISH": "Compose: host port (range) the gateways' REST port is published on (default 8000).",
    "AVN_GRPC_PUBLISH": "Compose: host port (range) the gateways' gRPC port is published on (default 50051).",
    "AVN_PUBLISH_ADDRESS": "Compose: host address the gateway's ports are published on (default `127.0.0.1`; "
    "`0.0.0.0`: every interface).",
    "AVN_GATEWAY_MEMORY": "Compose: memory limit of each gateway container (default `4g`).",
    "AVN_TORCHSERVE_MEMORY": "Compose: memory limit of the TorchServe container (default `8g`).",
    "AVN_REDIS_MEMORY": "Compose: memory limit of the Redis container (default `1536m`, above AVN_REDIS_MAXMEMORY).",
    "AVN_SECRETS_DIR": "Compose: host folder mounted read-only at `/run/secrets/avn` in the gateway: `api_keys.json`, "
    "and the TLS files when TLS is on (default `./secrets`).",
}


def known_variables() -> set[str]:
    """Every ``AVN_*`` name this project reads anywhere."""
    return set(environment_variables()) | set(OTHER_VARIABLES)


def expectation(setting: str) -> str:
    """What a valid value of ``setting`` looks like, in words (error messages and the docs)."""
    if setting in EXPECTATIONS:
        return EXPECTATIONS[setting]
    field = Settings.model_fields[setting]
    annotation = field.annotation
    if getattr(annotation, "__origin__", None) is Literal:
        return "one of " + ", ".join(f"`{choice}`" for choice in annotation.__args__)
    if annotation is bool:
        return "`true` or `false`"
    if annotation in (int, float):
        return ("a whole number" if annotation is int else "a number") + _bounds(field.metadata)
    if annotation in (str, str | None):
        return "text"
    return "a value"


EXPECTATIONS = {
    "config": "an existing TOML file",
    **{f"oip_endpoints_{model}": "`host:port[,host:port…]`, or unset" for model in MODELS},
    "oip_service": "a gRPC service name",
    "oip_token": "the token, or unset",
    "model_store": "a folder holding the five `.mar` archives (`avn build-store` writes them)",
    "torchserve_grpc": "`host:port`",
    "torchserve_management": "`host:port`",
    "torchserve_inference_key": "the token, or unset",
    "torchserve_management_key": "the token, or unset",
    "torchserve_key_file": "a readable `key_file.json` (or one TorchServe will write into an existing folder), "
    "or unset",
    "grpc_port": "a port from 1 to 65535",
    "rest_port": "a port from 1 to 65535",
    "redis_url": "`redis://[:password@]host[:port][/db]`, `rediss://…` or `unix:///path`; empty for no Redis",
    "case_bank": "a data-set folder, or empty",
    "otlp_endpoint": "`http://host:port` or `https://host:port`, or unset",
    "operating_point": "one of " + ", ".join(f"`{name}`" for name in SELECTABLE_POINTS) + ", or unset",
    "dicom_port": "a port from 1 to 65535",
    "dicom_ae_title": f"an AE title: 1 to {MAX_AE_TITLE_LENGTH} printable ASCII characters, no backslash",
    "dicom_allowed_aes": "AE titles separated by commas, or empty",
    "dicom_destination": "`AE_TITLE@host:port`, e.g. `PACS@10.0.0.5:104`",
    "dicom_spool": "a folder this user may create and write",
    "api_keys_file": "a keys file written by `avn keys add`",
    "tls_cert_file": "a readable PEM certificate, or unset",
    "tls_key_file": "the readable PEM key of the certificate, or unset",
    "tls_client_ca_file": "a readable PEM CA bundle, or unset",
    "audit_log_file": "a file in a writable folder, or unset",
    "redis_password": "the password, or unset",
    "cache_secret": "a random text of at least 16 characters (e.g. `openssl rand -hex 32`), or unset",
    "redis_ca_file": "a readable PEM CA bundle, or unset",
}


def _bounds(metadata: list[Any]) -> str:
    words = {"ge": "at least", "gt": "greater than", "le": "at most", "lt": "less than"}
    parts = [f"{words[name]} {getattr(item, name):g}" for item in metadata for name in words if hasattr(item, name)]
    return f", {' and '.join(parts)}" if parts else ""

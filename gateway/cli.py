"""``avn diagnose FILE...``: the diagnosis pipeline in-process on local files, no servers.

Prints one table row per femoral head and writes, per file, ``<out>/<name>.json`` (the same fields
as the gRPC/REST result; CAM PNGs base64-encoded) and ``<out>/<name>.overlay.png``; with
``--dicom-out DIR``, per DICOM file, ``DIR/<name>.sr.dcm`` (the TID 1500 SR) and
``DIR/<name>.annotated.dcm`` (the annotated Secondary Capture), both in the source's study; with
``--fhir``, ``<out>/<name>.fhir.json`` (the FHIR R4 Bundle: DiagnosticReport, Observations, Device). With
``--study`` the files are one subject's radiographs and the per-side diagnosis (the most severe
stage across them) is printed and written to ``<out>/study.json`` as well. A file that cannot be
diagnosed is reported with its error and the others still run; the exit status is 1 if any failed.

``avn serve``: the gateway (gRPC and REST) over the archives of ``--store``. Without ``--embedded``
it first starts TorchServe on that store, bound to loopback on free ports (token authorisation
off, which :mod:`avn.serving.torchserve` allows on loopback only), waits until every model has a
ready worker and points the gateway's TorchServe backend at it; with ``--embedded`` the models run
in the gateway's own process. Every setting follows one rule — a flag that was given, else the
``AVN_*`` variable, else the settings file (``--config``/``AVN_CONFIG``), else the default — and
is checked before anything starts: a setting that cannot work ends the command with one line on
stderr and exit code 2 (:mod:`gateway.configuration`). SIGINT or SIGTERM stops the gateway, then
TorchServe, and the command exits 0.

``avn config show [--json]``: the settings ``avn serve`` would run with, each with its source;
``avn config docs``: writes ``docs/configuration.md`` from the settings class.

``avn dicom-node``: the DICOM node (:mod:`gateway.dicom_node`): a Storage SCP that diagnoses the
radiographs it receives and C-STOREs the SR and the annotated copy to the destination AE; settings
as for ``avn serve`` (:data:`gateway.configuration.DICOM_NODE_FLAGS`).

``avn keys add ID | revoke ID | list``: the API keys of the gateway (:mod:`gateway.auth`), in the
file ``--file`` or ``AVN_API_KEYS_FILE`` names; ``add`` prints the new key once, on stdout.

``avn bench``: throughput and latency over gRPC (see :mod:`gateway.bench`); ``avn capacity``: the
replicas a load needs, from a bench JSON (see :mod:`gateway.capacity`).

``avn/cli.py`` registers :func:`diagnose`, :func:`serve`, :func:`dicom_node`, :func:`bench`, :func:`capacity`,
:data:`config_app` and :data:`keys_app` as sub-commands; ``python -m gateway.cli`` runs them alone.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from avn.dataset.images import is_dicom_bytes
from avn.integration.fhir import fhir_bundle
from avn.pipeline.errors import DiagnosisError
from avn.pipeline.results import (
    DEFAULT_NOTE_THRESHOLD,
    DiagnoseOptions,
    DiagnoseRequest,
    Diagnosis,
    ImagePayload,
    StudyDiagnosis,
    StudyRequest,
    to_json_dict,
)
from gateway.audit import configure_audit_log
from gateway.auth import KeysFile, KeysFileError
from gateway.configuration import (
    DICOM_NODE_FLAGS,
    EXIT_CONFIGURATION,
    SERVE_FLAGS,
    ConfigurationError,
    LoadedSettings,
    check_dicom_node_startup,
    check_startup,
    load_settings,
    shown_settings,
    unknown_name_warnings,
)
from gateway.logs import configure_logging

console = Console()
app = typer.Typer(help="Diagnose radiographs in-process.", no_args_is_help=True)


def diagnose(
    files: list[Path] = typer.Argument(
        ..., exists=True, dir_okay=False, readable=True, help="Radiographs: DICOM, PNG or JPEG."
    ),
    models: Path = typer.Option(
        Path("model_store"), "--models", help="Model store (*.mar) or a training run folder (<task>/model.pt)."
    ),
    out: Path = typer.Option(Path("diagnoses"), "--out", help="Folder for <name>.json and <name>.overlay.png."),
    study: bool = typer.Option(False, "--study", help="The files are one subject: also report per side."),
    overlay: bool = typer.Option(True, "--overlay/--no-overlay", help="Write the annotated overlay PNG."),
    note_threshold: float = typer.Option(DEFAULT_NOTE_THRESHOLD, min=0.0, max=1.0, help="Fused-note threshold."),
    cam_stage: str = typer.Option("", help="Stage whose heat map to show (default: each head's predicted stage)."),
    device: str = typer.Option("cpu", help="Torch device for the models, e.g. cuda:0."),
    operating_point: str = typer.Option(
        "", "--operating-point", help="sensitive, specific, default or argmax (default: the staging card's default)."
    ),
    fhir: bool = typer.Option(False, "--fhir", help="Also write <name>.fhir.json: the FHIR R4 Bundle of the result."),
    dicom_out: Path | None = typer.Option(
        None,
        "--dicom-out",
        help="Also write, per DICOM file, <name>.sr.dcm (TID 1500 SR) and <name>.annotated.dcm (Secondary Capture).",
    ),
) -> None:
    """Diagnose radiographs with the models of a store or run folder, in this process."""
    if not models.is_dir():
        raise typer.BadParameter(f"{models} is not a folder (build one with `avn build-store`)", param_hint="--models")
    options = DiagnoseOptions(
        include_overlay=overlay,
        cam_stage=cam_stage or None,
        note_threshold=note_threshold,
        operating_point=operating_point or None,
    )
    problems = options.problems()
    if problems:
        raise typer.BadParameter("; ".join(problems))
    outputs = Outputs(out, dicom_out, fhir)
    failures = asyncio.run(_run(files, models, outputs, study, options, device))
    raise typer.Exit(code=1 if failures else 0)


@dataclass(frozen=True)
class Outputs:
    """Where ``avn diagnose`` writes: the JSON and overlay folder, and the DICOM outputs' folder (None: none)."""

    out: Path
    dicom_out: Path | None = None
    fhir: bool = False

    def options_for(self, data: bytes, options: DiagnoseOptions) -> DiagnoseOptions:
        # DICOM outputs are filed under the source's study: only a DICOM file has one.
        return replace(options, include_dicom=self.dicom_out is not None and is_dicom_bytes(data))


async def _run(
    files: list[Path], models: Path, outputs: Outputs, study: bool, options: DiagnoseOptions, device: str
) -> int:
    from avn.pipeline.pipeline import Pipeline  # noqa: PLC0415
    from avn.serving.inprocess import InProcessBackend  # noqa: PLC0415 — torch loads only when the command runs

    pipeline = Pipeline(InProcessBackend.from_folder(models, device), note_threshold=options.note_threshold)
    for folder in (outputs.out, outputs.dicom_out):
        if folder is not None:
            folder.mkdir(parents=True, exist_ok=True)
    names = _output_names(files)
    table = _heads_table()
    failures = 0
    try:
        if study:
            failures = await _run_study(pipeline, files, names, outputs, options, table)
        else:
            for path, name in zip(files, names, strict=True):
                payload = _payload(path)
                try:
                    result = await pipeline.diagnose(
                        DiagnoseRequest(payload, outputs.options_for(payload.data, options))
                    )
                except DiagnosisError as error:
                    _add_failure(table, path, error)
                    failures += 1
                    continue
                _add_rows(table, path, result)
                _write(result, outputs, name)
    finally:
        await pipeline.close()
    console.print(table)
    console.print(
        f"results in {outputs.out}/" + (f", DICOM outputs in {outputs.dicom_out}/" if outputs.dicom_out else "")
    )
    return failures


async def _run_study(pipeline, files, names, outputs: Outputs, options: DiagnoseOptions, table: Table) -> int:
    payloads = tuple(_payload(p) for p in files)
    # One option set for the study: DICOM outputs only when every file is DICOM.
    dicom = all(outputs.options_for(payload.data, options).include_dicom for payload in payloads)
    try:
        result: StudyDiagnosis = await pipeline.diagnose_study(
            StudyRequest(payloads, replace(options, include_dicom=dicom))
        )
    except DiagnosisError as error:
        _add_failure(table, Path("study"), error)
        return len(files)
    for item in result.radiographs:
        _add_rows(table, files[item.index], item.result)
        _write(item.result, outputs, names[item.index])
    for skipped in result.skipped:
        table.add_row(files[skipped.index].name, "", "", f"[yellow]{skipped.reason}[/]", "", "", "")
    sides = Table(title="study: per side, the most severe stage")
    for column in ("side", "stage", "p", "presence", "collapse", "seen on"):
        sides.add_column(column)
    for side in result.sides:
        sides.add_row(
            side.side,
            side.stage,
            f"{side.probability:.2f}",
            side.presence,
            side.collapse,
            files[side.radiograph_index].name,
        )
    console.print(sides)
    radiographs = tuple(replace(item, result=_without_files(item.result)) for item in result.radiographs)
    (outputs.out / "study.json").write_text(
        json.dumps(to_json_dict(replace(result, radiographs=radiographs)), indent=2)
    )
    return len(result.skipped)


def _payload(path: Path) -> ImagePayload:
    return ImagePayload(path.read_bytes())  # the media type is recognised from the bytes


def _heads_table() -> Table:
    table = Table(title="femoral heads")
    for column in ("file", "view", "side", "stage", "presence", "collapse", "notes (fused ≥ threshold)"):
        table.add_column(column)
    return table


def _add_rows(table: Table, path: Path, result: Diagnosis) -> None:
    view = f"{result.view.view} {result.view.probability:.2f}"
    for head in result.heads:
        side = f"{head.side} {head.side_probability:.2f}" + (" (flipped)" if head.side_corrected else "")
        notes = ", ".join(f"{n.note} {n.probability:.2f}" for n in head.passed_notes) or "-"
        table.add_row(
            path.name,
            view,
            side,
            f"{head.stage} {head.stage_probability:.2f}"
            + (" [yellow](low confidence)[/]" if head.low_confidence else ""),
            f"{head.presence} {head.presence_probability:.2f}",
            f"{head.collapse} {head.collapse_probability:.2f}",
            notes,
        )


def _add_failure(table: Table, path: Path, error: DiagnosisError) -> None:
    table.add_row(path.name, "", "", f"[red]{type(error).__name__}: {error}[/]", "", "", "")


def _write(result: Diagnosis, outputs: Outputs, name: str) -> None:
    if result.overlay_png:
        (outputs.out / f"{name}.overlay.png").write_bytes(result.overlay_png)
    if outputs.dicom_out is not None and result.dicom_sr and result.dicom_annotated:
        (outputs.dicom_out / f"{name}.sr.dcm").write_bytes(result.dicom_sr)
        (outputs.dicom_out / f"{name}.annotated.dcm").write_bytes(result.dicom_annotated)
    (outputs.out / f"{name}.json").write_text(json.dumps(to_json_dict(_without_files(result)), indent=2))
    if outputs.fhir:
        (outputs.out / f"{name}.fhir.json").write_text(json.dumps(fhir_bundle(result), indent=2))


def _without_files(result: Diagnosis) -> Diagnosis:
    # The overlay and the DICOM outputs are files of their own; base64 of them would only bloat the JSON.
    return replace(result, overlay_png=None, dicom_sr=None, dicom_annotated=None)


def _output_names(files: list[Path]) -> list[str]:
    """One output name per file: its stem, numbered when two files share a stem."""
    names: list[str] = []
    for path in files:
        name, number = path.stem, 2
        while name in names:
            name, number = f"{path.stem}-{number}", number + 1
        names.append(name)
    return names


# ---------------------------------------------------------------------------------------- serve
#
# Every flag of `avn serve` defaults to None, "not given": only a flag that was typed reaches the
# settings (gateway.settings: flag > AVN_* environment > settings file > default). `avn config
# show` takes the same flags, to show what `avn serve` would run with.

ConfigFlag = Annotated[
    Path | None, typer.Option("--config", help="TOML settings file (else AVN_CONFIG); docs/configuration.md.")
]
StoreFlag = Annotated[
    Path | None, typer.Option("--store", help="Model store: the five .mar archives [AVN_MODEL_STORE; model_store].")
]
EmbeddedFlag = Annotated[
    bool, typer.Option("--embedded", help="Run the models in this process, without TorchServe [AVN_BACKEND].")
]
GrpcPortFlag = Annotated[int | None, typer.Option("--grpc-port", help="gRPC port [AVN_GRPC_PORT; 50051].")]
RestPortFlag = Annotated[int | None, typer.Option("--rest-port", help="REST port [AVN_REST_PORT; 8000].")]
HostFlag = Annotated[
    str | None,
    typer.Option("--host", help="Address the gRPC and REST servers bind [AVN_GRPC_HOST, AVN_REST_HOST; 127.0.0.1]."),
]
ReadyTimeoutFlag = Annotated[
    float | None,
    typer.Option("--ready-timeout", help="Seconds TorchServe may take to load [AVN_READY_TIMEOUT_S; 300]."),
]


def serve(
    store: StoreFlag = None,
    embedded: EmbeddedFlag = False,
    grpc_port: GrpcPortFlag = None,
    rest_port: RestPortFlag = None,
    host: HostFlag = None,
    ready_timeout_s: ReadyTimeoutFlag = None,
    config: ConfigFlag = None,
) -> None:
    """Serve diagnoses over gRPC and REST (TorchServe started on the store, or --embedded).

    Settings: a flag given > AVN_* environment > settings file > default (`avn config show`)."""
    from gateway.service import Stopped, stopping_on_signals  # noqa: PLC0415 — loads the pipeline

    flags = serve_flags(store, embedded, grpc_port, rest_port, host, ready_timeout_s, config)
    settings = _checked_settings("serve", flags, serves_store=True).settings
    torchserve = None
    # From before anything starts, a signal raises Stopped: TorchServe is stopped whenever it comes.
    with stopping_on_signals():
        try:
            if settings.backend == "torchserve":
                torchserve, settings = _start_torchserve(settings)
            _serve_until_stopped(settings)
        except Stopped:
            console.print("stopped")
        finally:
            if torchserve is not None:
                console.print("stopping TorchServe")
                torchserve.stop()


def serve_flags(
    store: Path | None = None,
    embedded: bool = False,
    grpc_port: int | None = None,
    rest_port: int | None = None,
    host: str | None = None,
    ready_timeout_s: float | None = None,
    config: Path | None = None,
) -> dict[str, object]:
    """The settings the given flags set (None: not given), as :data:`gateway.configuration.SERVE_FLAGS` maps them."""
    return {
        "config": config,
        "model_store": store,
        "backend": "embedded" if embedded else None,
        "grpc_port": grpc_port,
        "rest_port": rest_port,
        "grpc_host": host,
        "rest_host": host,
        "ready_timeout_s": ready_timeout_s,
    }


def _checked_settings(
    command: str,
    flags: dict[str, object],
    *,
    serves_store: bool,
    flag_names: dict[str, str] = SERVE_FLAGS,
    more_checks: Callable[[LoadedSettings], None] | None = None,
    serves_api: bool = True,
):
    """Settings that passed the start-up checks (and ``more_checks``, the command's own), with logging
    configured and warnings logged; a setting that cannot work ends the command with one line on
    stderr and exit code 2."""
    try:
        loaded = load_settings(flags, flag_names=flag_names)
        warnings = check_startup(loaded, serves_store=serves_store, serves_api=serves_api)
        if more_checks is not None:
            more_checks(loaded)
    except ConfigurationError as error:
        typer.echo(f"avn {command}: {error}", err=True)
        raise typer.Exit(EXIT_CONFIGURATION) from None
    configure_logging(loaded.settings.log_level)
    for warning in warnings:
        logging.getLogger("gateway.configuration").warning("%s", warning)
    return loaded


def _start_torchserve(settings):
    """A ready TorchServe on loopback over the settings' store, and the settings pointing the gateway at it."""
    from avn.pipeline.backend import MODELS  # noqa: PLC0415
    from avn.serving.torchserve import LOOPBACK, TorchServe  # noqa: PLC0415

    store = settings.model_store.resolve()
    work_dir = Path(tempfile.mkdtemp(prefix="avn-serve-"))
    # Loopback only, so token authorisation may be (and is) off: nothing off this host reaches it.
    torchserve = TorchServe(store, work_dir, disable_token_auth=True)
    console.print(f"starting TorchServe on {store} (logs in {torchserve.log_dir})")
    torchserve.start()
    try:
        torchserve.wait_until_ready(MODELS, timeout_s=settings.ready_timeout_s)
    except BaseException:
        torchserve.stop()
        raise
    console.print(f"TorchServe ready: {', '.join(MODELS)}")
    # This TorchServe is avn serve's own: its address and (absent) tokens replace whatever the
    # settings said about a TorchServe elsewhere.
    own = {
        "model_store": store,
        "torchserve_grpc": f"{LOOPBACK}:{torchserve.ports.grpc_inference}",
        "torchserve_management": f"{LOOPBACK}:{torchserve.ports.grpc_management}",
        "torchserve_inference_key": None,
        "torchserve_management_key": None,
        "torchserve_key_file": None,
    }
    return torchserve, settings.model_copy(update=own)


def _serve_until_stopped(settings) -> None:
    from gateway.service import serve as serve_gateway  # noqa: PLC0415 — loads the servers

    configure_audit_log(settings.audit_log_file)
    console.print(
        f"serving gRPC on {settings.grpc_host}:{settings.grpc_port}, "
        f"REST on http://{settings.rest_host}:{settings.rest_port} ({settings.backend} backend)"
    )
    asyncio.run(serve_gateway(settings))


# ---------------------------------------------------------------------------------- dicom-node
#
# Like `avn serve`: every flag defaults to None ("not given"), so that the AVN_* environment and the
# settings file decide what no flag says (gateway.configuration.DICOM_NODE_FLAGS).

NodeHostFlag = Annotated[
    str | None, typer.Option("--host", help="Address the Storage SCP binds [AVN_DICOM_HOST; 127.0.0.1].")
]
NodePortFlag = Annotated[int | None, typer.Option("--port", help="Storage SCP port [AVN_DICOM_PORT; 11112].")]
AeTitleFlag = Annotated[
    str | None, typer.Option("--ae-title", help="The node's AE title [AVN_DICOM_AE_TITLE; AVNNET].")
]
AllowFlag = Annotated[
    list[str] | None,
    typer.Option("--allow", help="A calling AE title to accept (repeat it); none: any [AVN_DICOM_ALLOWED_AES]."),
]
DestinationFlag = Annotated[
    str | None,
    typer.Option("--destination", help="Where outputs go: AE_TITLE@host:port [AVN_DICOM_DESTINATION]."),
]
SpoolFlag = Annotated[Path | None, typer.Option("--spool", help="Spool folder [AVN_DICOM_SPOOL; dicom-spool].")]
OperatingPointFlag = Annotated[
    str | None,
    typer.Option(
        "--operating-point",
        help="sensitive, specific, default or argmax [AVN_OPERATING_POINT; the staging card's default].",
    ),
]


def dicom_node(
    destination: DestinationFlag = None,
    store: StoreFlag = None,
    embedded: EmbeddedFlag = False,
    host: NodeHostFlag = None,
    port: NodePortFlag = None,
    ae_title: AeTitleFlag = None,
    allow: AllowFlag = None,
    spool: SpoolFlag = None,
    operating_point: OperatingPointFlag = None,
    config: ConfigFlag = None,
) -> None:
    """A DICOM node: receive radiographs by C-STORE, diagnose them, and C-STORE the SR and the annotated
    copy to the destination AE (docs/integration.md). Files are spooled durably; a restart resumes.

    Settings: a flag given > AVN_* environment > settings file > default (docs/configuration.md)."""
    from gateway.dicom_node.node import serve_until_stopped  # noqa: PLC0415 — loads pynetdicom and the pipeline

    flags = {
        "config": config,
        "model_store": store,
        "backend": "embedded" if embedded else None,
        "dicom_host": host,
        "dicom_port": port,
        "dicom_ae_title": ae_title,
        "dicom_allowed_aes": allow or None,
        "dicom_destination": destination,
        "dicom_spool": spool,
        "operating_point": operating_point,
    }
    settings = _checked_settings(
        "dicom-node",
        flags,
        serves_store=False,
        flag_names=DICOM_NODE_FLAGS,
        more_checks=check_dicom_node_startup,
        serves_api=False,
    ).settings
    console.print(
        f"DICOM node {settings.dicom_ae_title} on {settings.dicom_host}:{settings.dicom_port}, "
        f"sending to {settings.dicom_destination}, spool {settings.dicom_spool} ({settings.backend} backend)"
    )
    serve_until_stopped(settings)
    console.print("stopped")


# --------------------------------------------------------------------------------------- config

config_app = typer.Typer(help="The gateway's effective settings and their documentation.", no_args_is_help=True)


@config_app.command("show")
def config_show(
    as_json: bool = typer.Option(False, "--json", help="One JSON object instead of a table."),
    store: StoreFlag = None,
    embedded: EmbeddedFlag = False,
    grpc_port: GrpcPortFlag = None,
    rest_port: RestPortFlag = None,
    host: HostFlag = None,
    ready_timeout_s: ReadyTimeoutFlag = None,
    config: ConfigFlag = None,
) -> None:
    """Every setting in effect, with its source (flag, environment, file, default); secrets masked.
    Takes `avn serve`'s flags, to show what it would run with."""
    flags = serve_flags(store, embedded, grpc_port, rest_port, host, ready_timeout_s, config)
    try:
        loaded = load_settings(flags, flag_names=SERVE_FLAGS)
    except ConfigurationError as error:
        typer.echo(f"avn config show: {error}", err=True)
        raise typer.Exit(EXIT_CONFIGURATION) from None
    for warning in unknown_name_warnings(loaded, os.environ):
        typer.echo(f"warning: {warning}", err=True)
    shown = shown_settings(loaded)
    if as_json:
        typer.echo(
            json.dumps(
                {item.name: {"value": item.value, "source": item.source, "variable": item.variable} for item in shown},
                indent=2,
            )
        )
        return
    table = Table(title="effective settings (flag > environment > file > default); variables: AVN_<SETTING>")
    for column in ("setting", "value", "source"):
        table.add_column(column, overflow="fold")
    for item in shown:
        table.add_row(item.name, "" if item.value is None else str(item.value), item.source)
    console.print(table)


@config_app.command("docs")
def config_docs(
    out: Path = typer.Option(Path("docs/configuration.md"), "--out", help="Markdown file to write."),
) -> None:
    """Write the settings reference (docs/configuration.md), generated from the settings class."""
    from gateway.configuration_docs import configuration_markdown  # noqa: PLC0415

    out.write_text(configuration_markdown())
    console.print(f"wrote {out}")


# ---------------------------------------------------------------------------------------- keys

keys_app = typer.Typer(
    help="The gateway's API keys: hashed in a keys file, several valid at once, no restart needed.",
    no_args_is_help=True,
)
KeysFileFlag = Annotated[
    Path | None, typer.Option("--file", help="The keys file [AVN_API_KEYS_FILE, or the settings file's api_keys_file].")
]


@keys_app.command("add")
def keys_add(
    key_id: str = typer.Argument(..., metavar="ID", help="Who holds the key (the audit log's caller), e.g. ward-3."),
    file: KeysFileFlag = None,
) -> None:
    """Add a key: its hash goes into the file, the key itself is printed once, on stdout."""
    keys = _keys_file("add", file)
    try:
        key = keys.add(key_id)
    except KeysFileError as error:
        typer.echo(f"avn keys add: {error}", err=True)
        raise typer.Exit(1) from None
    typer.echo(f"key {key_id!r} added to {keys.path}; shown only now (send `authorization: Bearer <key>`):", err=True)
    typer.echo(key)


@keys_app.command("revoke")
def keys_revoke(
    key_id: str = typer.Argument(..., metavar="ID", help="The key to remove."),
    file: KeysFileFlag = None,
) -> None:
    """Remove a key; running gateways refuse it from their next request on."""
    keys = _keys_file("revoke", file)
    try:
        keys.revoke(key_id)
    except KeysFileError as error:
        typer.echo(f"avn keys revoke: {error}", err=True)
        raise typer.Exit(1) from None
    typer.echo(f"key {key_id!r} revoked in {keys.path}")


@keys_app.command("list")
def keys_list(file: KeysFileFlag = None) -> None:
    """The keys' ids and when each was made (never a key or a hash)."""
    keys = _keys_file("list", file)
    try:
        entries = keys.entries()
    except KeysFileError as error:
        typer.echo(f"avn keys list: {error}", err=True)
        raise typer.Exit(1) from None
    table = Table(title=f"API keys in {keys.path}")
    table.add_column("id")
    table.add_column("created (UTC)")
    for entry in entries.values():
        table.add_row(entry.id, entry.created)
    console.print(table)


LOCAL_KEYS_FILE = Path("data/api_keys.json")
LOCAL_KEY_ID = "local"


def prepare_local_key(keys_file: Path = LOCAL_KEYS_FILE) -> None:
    """`avn run` on one machine: when authentication is on and no keys file is configured, a fresh
    key ``local`` in ``keys_file`` (git-ignored data/), printed for the web app's sign-in, and
    ``AVN_API_KEYS_FILE`` pointing `avn serve` at it. A configured keys file is left alone."""
    settings = load_settings().settings
    if settings.auth == "off" or settings.api_keys_file is not None:
        return
    keys = KeysFile(keys_file)
    if LOCAL_KEY_ID in keys.entries():
        keys.revoke(LOCAL_KEY_ID)  # its key was shown once, by an earlier run: a new one is shown now
    key = keys.add(LOCAL_KEY_ID)
    os.environ["AVN_API_KEYS_FILE"] = str(keys_file.resolve())
    console.print(f"API key for this run (the web app asks for it once per tab): [bold]{key}[/]")


def _keys_file(command: str, file: Path | None) -> KeysFile:
    if file is None:
        try:
            file = load_settings().settings.api_keys_file
        except ConfigurationError as error:
            typer.echo(f"avn keys {command}: {error}", err=True)
            raise typer.Exit(EXIT_CONFIGURATION) from None
    if file is None:
        typer.echo(f"avn keys {command}: no keys file: give --file FILE or set AVN_API_KEYS_FILE", err=True)
        raise typer.Exit(EXIT_CONFIGURATION)
    return KeysFile(file)


# ---------------------------------------------------------------------------------------- bench


def bench(
    store: Path = typer.Option(Path("model_store"), "--store", help="Model store: the five .mar archives."),
    data: Path = typer.Option(
        Path("data/demo"), "--data", help="Data set whose radiographs are sent (repeated as needed)."
    ),
    count: int = typer.Option(40, "-n", "--radiographs", min=1, help="Radiographs per configuration (N)."),
    concurrency: int = typer.Option(4, "-c", "--concurrency", min=1, help="Concurrent gRPC clients (C)."),
    configurations: str = typer.Option(
        "torchserve,in-process,naive", "--configurations", help="Which of torchserve, in-process, naive to run."
    ),
    syntaxes: str = typer.Option(
        "explicit-le,jpeg2000-lossless,jpeg-ls-lossless,rle-lossless",
        "--syntaxes",
        help="DICOM transfer syntaxes sent round-robin, or as-stored (the files unchanged).",
    ),
    sources: int = typer.Option(4, "--sources", min=1, help="Distinct radiographs re-encoded in each syntax."),
    single_client: int = typer.Option(8, "--single-client", min=0, help="Sequential requests of one client."),
    cache_hits: int = typer.Option(20, "--cache-hits", min=0, help="Cache-hit requests (cache on)."),
    timing_store: Path | None = typer.Option(
        None,
        "--timing-store",
        help="Bench a store of untrained models in the paper's shapes (224-px crops), built here when "
        "missing: timing only. Replaces --store.",
    ),
    device: str = typer.Option("cpu", "--device", help="cpu or cuda[:N]: where every configuration runs the models."),
    json_out: Path | None = typer.Option(None, "--json", help="Also write the figures to this JSON file."),
) -> None:
    """Throughput and latency of the gateway over gRPC (cache off): TorchServe, in-process and a
    naive one-head-at-a-time baseline, side by side, on full-size DICOMs in several transfer syntaxes."""
    from gateway.bench import CONFIGURATIONS, BenchError, require_device  # noqa: PLC0415
    from gateway.bench_payloads import PayloadError  # noqa: PLC0415

    chosen = [name.strip() for name in configurations.split(",") if name.strip()]
    unknown = [name for name in chosen if name not in CONFIGURATIONS]
    if unknown or not chosen:
        raise typer.BadParameter(
            f"unknown {unknown}; choose from {', '.join(CONFIGURATIONS)}", param_hint="--configurations"
        )
    logging.basicConfig(level=logging.WARNING)
    try:
        require_device(device)
        store = _bench_store(store, timing_store)
        payloads, left_out = _bench_inputs(data, count, syntaxes, sources)
        context = _bench_context(store, data, count, concurrency, device, left_out)
        figures = [_bench_one(name, store, payloads, concurrency, device, single_client, cache_hits) for name in chosen]
    except (BenchError, PayloadError) as error:
        raise typer.BadParameter(str(error)) from error
    from gateway.bench_report import print_bench  # noqa: PLC0415

    print_bench(console, figures, context)
    if json_out is not None:
        from gateway.bench import write_json  # noqa: PLC0415

        write_json(json_out, figures, context)
        console.print(f"figures in {json_out}")


def _bench_store(store: Path, timing_store: Path | None) -> Path:
    """The store to bench: ``--timing-store`` (built unless complete) or ``--store``, which must hold archives."""
    from avn.optimisation import Optimisation  # noqa: PLC0415
    from avn.timing_store import build_timing_store, is_complete_timing_store  # noqa: PLC0415

    if timing_store is not None:
        if not is_complete_timing_store(timing_store):
            console.print(f"building a timing store (untrained weights, paper shapes) in {timing_store} …")
            # each classifier in the form fastest on this CPU, as build-store serves trained ones
            build_timing_store(timing_store, optimisation=Optimisation(None, report=console.print))
        store = timing_store
    if not store.is_dir() or not any(store.glob("*.mar")):
        raise typer.BadParameter(
            f"{store} holds no .mar archives (build them with `avn build-store`)", param_hint="--store"
        )
    return store.resolve()


def _bench_inputs(data: Path, count: int, syntaxes: str, sources: int):
    """The payloads in the syntaxes that can be encoded here, and the others with the reason."""
    from gateway.bench_payloads import bench_payloads, missing_encoders  # noqa: PLC0415

    asked = [name.strip() for name in syntaxes.split(",") if name.strip()]
    left_out = missing_encoders(asked)
    usable = [name for name in asked if name not in left_out]
    for name, reason in left_out.items():
        console.print(f"[yellow]{name} left out:[/] {reason}")
    console.print(f"encoding {min(sources, count)} radiographs of {data} as {', '.join(usable) or 'nothing'} …")
    return bench_payloads(data, count, usable, sources), left_out


def _bench_context(store: Path, data: Path, count: int, concurrency: int, device: str, left_out: dict) -> dict:
    """What the run was: inputs, device, the syntaxes left out, and the store's label when untrained."""
    from avn.timing_store import TIMING_ONLY, is_timing_only, store_cards  # noqa: PLC0415

    cards = store_cards(store)
    return {
        "data": str(data),
        "store": str(store),
        "radiographs": count,
        "concurrency": concurrency,
        "device": device,
        "model_versions": {task: card.version for task, card in cards.items()},
        "timing_only": is_timing_only(cards),
        "store_label": TIMING_ONLY if is_timing_only(cards) else "",
        "syntaxes_left_out": left_out,
    }


def _bench_one(name: str, store: Path, payloads, concurrency: int, device: str, single_client: int, cache_hits: int):
    from gateway.bench import run_configuration  # noqa: PLC0415

    console.print(f"[bold]{name}[/]: {len(payloads)} radiographs, {concurrency} clients, {device} …")
    return run_configuration(name, store, payloads, concurrency, device, single_client, cache_hits)


# ---------------------------------------------------------------------------------------- capacity


def capacity(
    bench_json: Path = typer.Argument(..., help="Figures written by `avn bench --json FILE`."),
    radiographs_per_hour: float = typer.Option(
        ..., "--radiographs-per-hour", min=0.001, help="Average load, radiographs per hour."
    ),
    peak_factor: float = typer.Option(4.0, "--peak-factor", min=1.0, help="Peak load over the average."),
    latency_target_ms: float = typer.Option(
        2000.0, "--latency-target-ms", min=1.0, help="p95 latency to meet at the peak, ms."
    ),
    utilisation: float = typer.Option(
        0.6, "--utilisation", min=0.01, max=1.0, help="Target CPU/GPU utilisation of every replica at the peak."
    ),
    min_replicas: int = typer.Option(2, "--min-replicas", min=1, help="Fewest replicas of anything."),
    configuration: str | None = typer.Option(
        None, "--configuration", help="Bench configuration to plan from (default: torchserve, else in-process)."
    ),
    gateway_cores: float = typer.Option(2.0, "--gateway-cores", min=0.1, help="CPU limit of a gateway pod."),
    gateway_max_replicas: int = typer.Option(10, "--gateway-max-replicas", min=1, help="The gateway HPA's maximum."),
    radiograph_mb: float = typer.Option(12.0, "--radiograph-mb", min=0.001, help="Size of one radiograph sent, MB."),
    link_gbps: float = typer.Option(10.0, "--link-gbps", min=0.001, help="Ingress link, Gbit/s."),
    json_out: Path | None = typer.Option(None, "--json", help="Also write the plan to this JSON file."),
) -> None:
    """Replicas per model and gateway replicas for a load, from `avn bench` figures, and the next
    bottleneck (docs/scaling.md)."""
    from gateway.capacity import Assumptions, CapacityError, Load, plan, read_bench, service_times  # noqa: PLC0415

    try:
        times = service_times(read_bench(bench_json), configuration)
        load = Load(radiographs_per_hour, peak_factor, latency_target_ms, utilisation, min_replicas)
        assumptions = Assumptions(
            gateway_cores=gateway_cores,
            gateway_max_replicas=gateway_max_replicas,
            radiograph_mb=radiograph_mb,
            link_gbps=link_gbps,
        )
        result = plan(times, load, assumptions)
    except CapacityError as error:
        raise typer.BadParameter(str(error)) from error
    _print_capacity(result)
    if json_out is not None:
        json_out.write_text(json.dumps(result.summary(), indent=2))
        console.print(f"plan in {json_out}")


def _print_capacity(result) -> None:
    rate = result.load.peak_per_s
    console.print(
        f"peak {rate:.3f} radiographs/s ({result.load.radiographs_per_hour:g}/h × {result.load.peak_factor:g}), "
        f"service times from the bench's [bold]{result.times.configuration}[/] configuration"
    )
    table = Table(title=f"replicas at ≤ {result.load.utilisation:.0%} utilisation")
    for column in ("stage", "ms/radiograph", "per replica", "replicas", "utilisation"):
        table.add_column(column, justify="right")
    for name, stage in result.stages.items():
        table.add_row(
            name,
            f"{stage.service_ms:.0f}",
            f"{stage.parallel:g} at once",
            str(stage.replicas),
            f"{stage.utilisation(rate):.0%}",
        )
    console.print(table)
    verdict = (
        "met" if result.latency_met else "NOT met: the service times alone exceed it (faster hardware, not replicas)"
    )
    console.print(
        f"estimated p95 latency {result.latency_ms:.0f} ms; target {result.load.latency_target_ms:.0f} ms {verdict}"
    )
    shared = Table(title="shared resources at the peak")
    for column in ("resource", "load", "capacity", "headroom"):
        shared.add_column(column, justify="right")
    for resource in result.shared:
        shared.add_row(
            resource.name,
            f"{resource.load:.3g} {resource.unit}",
            f"{resource.capacity:g} {resource.unit}",
            f"{resource.headroom:.1f}×",
        )
    console.print(shared)
    bottleneck = result.next_bottleneck
    console.print(
        f"next bottleneck: [bold]{bottleneck.name}[/], at {bottleneck.headroom:.1f}× this peak (docs/scaling.md)"
    )


app.command()(diagnose)
app.command()(serve)
app.command("dicom-node")(dicom_node)
app.command()(bench)
app.command()(capacity)
app.add_typer(config_app, name="config")
app.add_typer(keys_app, name="keys")

if __name__ == "__main__":
    app()

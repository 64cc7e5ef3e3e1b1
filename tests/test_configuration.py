"""One configuration story (issue #16): precedence flag > AVN_* environment > settings file > default
for every `avn serve` flag, `avn config show`, start-up checks with exit code 2, warnings for
mistyped names, and docs/configuration.md generated from the settings class.

`avn serve` runs in-process through typer's runner with the servers replaced by a recorder: what is
tested is which settings it would serve with. tests/test_gateway_protos_client.py runs the real
`avn serve` with its ports from the environment.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

import gateway.cli
from gateway.auth import KeysFile
from gateway.configuration import (
    EXIT_CONFIGURATION,
    SERVE_FLAGS,
    check_startup,
    load_settings,
    unknown_name_warnings,
)
from gateway.configuration_docs import DOC_PATH, configuration_markdown
from gateway.settings import ENV_PREFIX, known_variables

ROOT = Path(__file__).resolve().parent.parent
LEVELS = ("flag", "environment", "file", "default")


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No AVN_* variable of the machine leaks in; relative paths resolve in a fresh folder."""
    for name in list(os.environ):
        if name.upper().startswith(ENV_PREFIX):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)


# ---------------------------------------------------------------- precedence, one flag at a time


@dataclass(frozen=True)
class FlagCase:
    """An `avn serve` flag, the settings it sets, and a different value for each level."""

    flag: list[str]  # the command-line words that give the flag-level value
    settings: tuple[str, ...]
    values: dict[str, Any]  # level → the value expected when that level is the highest given
    environment: str  # what the environment level sets, as text
    file: Any  # what the settings file sets, as TOML value


FLAG_CASES = {
    "--grpc-port": FlagCase(
        ["--grpc-port", "1001"], ("grpc_port",), dict(zip(LEVELS, (1001, 1002, 1003, 50051), strict=True)), "1002", 1003
    ),
    "--rest-port": FlagCase(
        ["--rest-port", "2001"], ("rest_port",), dict(zip(LEVELS, (2001, 2002, 2003, 8000), strict=True)), "2002", 2003
    ),
    "--host": FlagCase(
        ["--host", "127.0.0.2"],
        ("grpc_host", "rest_host"),
        dict(zip(LEVELS, ("127.0.0.2", "127.0.0.3", "127.0.0.4", "127.0.0.1"), strict=True)),
        "127.0.0.3",
        "127.0.0.4",
    ),
    "--ready-timeout": FlagCase(
        ["--ready-timeout", "11"],
        ("ready_timeout_s",),
        dict(zip(LEVELS, (11.0, 12.0, 13.0, 300.0), strict=True)),
        "12",
        13.0,
    ),
    "--embedded": FlagCase(
        ["--embedded"],
        ("backend",),
        dict(zip(LEVELS, ("embedded", "torchserve", "embedded", "torchserve"), strict=True)),
        "torchserve",
        "embedded",
    ),
    "--store": FlagCase(
        ["--store", "flag-store"],
        ("model_store",),
        dict(
            zip(LEVELS, (Path("flag-store"), Path("env-store"), Path("file-store"), Path("model_store")), strict=True)
        ),
        "env-store",
        "file-store",
    ),
}


def make_stores(root: Path) -> None:
    """A folder with an archive for every store value above: `avn serve` checks its store first."""
    for name in ("flag-store", "env-store", "file-store", "model_store"):
        (root / name).mkdir()
        (root / name / "detection.mar").write_bytes(b"")


class Recorder:
    """Stands in for TorchServe and the servers: keeps the settings `avn serve` would serve with."""

    def __init__(self) -> None:
        self.settings = None

    def start_torchserve(self, settings):
        return None, settings

    def serve(self, settings) -> None:
        self.settings = settings


@pytest.fixture
def recorder(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Recorder:
    recording = Recorder()
    # Authentication is on by default and `avn serve` insists on a keys file: give it one.
    KeysFile(tmp_path / "keys" / "api_keys.json").add("test")
    monkeypatch.setenv("AVN_API_KEYS_FILE", str(tmp_path / "keys" / "api_keys.json"))
    monkeypatch.setattr(gateway.cli, "_start_torchserve", recording.start_torchserve)
    monkeypatch.setattr(gateway.cli, "_serve_until_stopped", recording.serve)
    return recording


def set_up_level(case: FlagCase, level: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Give the setting at ``level`` and at every level below it; the command-line words to use."""
    position = LEVELS.index(level)
    words: list[str] = []
    if position <= LEVELS.index("file"):
        settings_file = tmp_path / "avn.toml"
        settings_file.write_text("".join(f"{name} = {json.dumps(case.file)}\n" for name in case.settings))
        words += ["--config", str(settings_file)]
    if position <= LEVELS.index("environment"):
        for name in case.settings:
            monkeypatch.setenv(f"AVN_{name.upper()}", case.environment)
    if level == "flag":
        words += case.flag
    return words


@pytest.mark.parametrize("level", LEVELS)
@pytest.mark.parametrize("flag", list(FLAG_CASES))
def test_each_level_wins_in_turn(
    flag: str, level: str, recorder: Recorder, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With the setting given at ``level`` and every level below, `avn serve` uses ``level``'s value
    and `avn config show` names ``level`` as its source."""
    case = FLAG_CASES[flag]
    make_stores(tmp_path)
    words = set_up_level(case, level, tmp_path, monkeypatch)
    served = CliRunner().invoke(gateway.cli.app, ["serve", *words])
    assert served.exit_code == 0, served.output
    shown = CliRunner().invoke(gateway.cli.app, ["config", "show", "--json", *words])
    assert shown.exit_code == 0, shown.output
    effective = json.loads(shown.stdout)
    for name in case.settings:
        assert getattr(recorder.settings, name) == case.values[level]
        assert effective[name]["source"] == level
        assert effective[name]["value"] == json.loads(json.dumps(case.values[level], default=str))


def test_a_flag_not_given_never_overrides_the_environment(recorder: Recorder, tmp_path: Path, monkeypatch) -> None:
    """The bug of issue #16: `AVN_GRPC_PORT=50151 avn serve` listened on 50051."""
    make_stores(tmp_path)
    monkeypatch.setenv("AVN_GRPC_PORT", "50151")
    monkeypatch.setenv("AVN_REST_PORT", "8151")
    result = CliRunner().invoke(gateway.cli.app, ["serve"])
    assert result.exit_code == 0, result.output
    assert (recorder.settings.grpc_port, recorder.settings.rest_port) == (50151, 8151)


def test_config_flag_beats_avn_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    by_flag, by_environment = tmp_path / "flag.toml", tmp_path / "environment.toml"
    by_flag.write_text("grpc_port = 1111\n")
    by_environment.write_text("grpc_port = 2222\n")
    monkeypatch.setenv("AVN_CONFIG", str(by_environment))
    assert load_settings().settings.grpc_port == 2222
    loaded = load_settings({"config": by_flag}, flag_names=SERVE_FLAGS)
    assert loaded.settings.grpc_port == 1111
    assert (loaded.origin("config"), loaded.origin("grpc_port")) == ("flag", "file")


def test_every_serve_flag_has_a_precedence_case() -> None:
    """A new flag of `avn serve` gets its row above (and in SERVE_FLAGS, which the docs show)."""
    given = {word for case in FLAG_CASES.values() for word in case.flag if word.startswith("--")}
    declared = set(SERVE_FLAGS.values()) - {"--config"}  # --config: test_config_flag_beats_avn_config
    assert given == declared
    help_text = CliRunner().invoke(gateway.cli.app, ["serve", "--help"], env={"COLUMNS": "200"}).stdout
    assert set(re.findall(r"--[a-z][a-z-]+", help_text)) - {"--help"} == set(SERVE_FLAGS.values())


# ---------------------------------------------------------------- avn config show


def test_config_show_names_sources_and_masks_secrets(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    settings_file = tmp_path / "avn.toml"
    settings_file.write_text('rest_port = 8123\ntorchserve_management_key = "file-token-42"\n')
    monkeypatch.setenv("AVN_GRPC_PORT", "50151")
    monkeypatch.setenv("AVN_TORCHSERVE_INFERENCE_KEY", "env-token-17")
    monkeypatch.setenv("AVN_REDIS_URL", "redis://cache:hunter2@redis:6379/0")
    arguments = ["config", "show", "--config", str(settings_file), "--host", "0.0.0.0"]
    as_json = CliRunner().invoke(gateway.cli.app, [*arguments, "--json"])
    as_table = CliRunner().invoke(gateway.cli.app, arguments, env={"COLUMNS": "200"})
    assert as_json.exit_code == 0 and as_table.exit_code == 0, as_json.output + as_table.output
    shown = json.loads(as_json.stdout)
    assert {name: shown[name]["source"] for name in ("grpc_host", "grpc_port", "rest_port", "log_level")} == {
        "grpc_host": "flag",
        "grpc_port": "environment",
        "rest_port": "file",
        "log_level": "default",
    }
    assert shown["grpc_port"] == {"value": 50151, "source": "environment", "variable": "AVN_GRPC_PORT"}
    assert shown["torchserve_inference_key"]["value"] == shown["torchserve_management_key"]["value"] == "********"
    assert shown["redis_url"]["value"] == "redis://cache:***@redis:6379/0"
    for output in (as_json.output, as_table.output):
        for secret in ("env-token-17", "file-token-42", "hunter2"):
            assert secret not in output
    assert "environment" in as_table.stdout and "50151" in as_table.stdout


# ---------------------------------------------------------------- start-up checks


def serve_error(arguments: list[str]) -> str:
    """The one stderr line of an `avn serve` that must stop with exit code 2."""
    result = CliRunner().invoke(gateway.cli.app, ["serve", *arguments])
    assert result.exit_code == EXIT_CONFIGURATION, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


@pytest.mark.parametrize(
    ("arguments", "environment", "names", "fix"),
    [
        (["--grpc-port", "70000"], {}, "--grpc-port (flag)", "give --grpc-port a port from 1 to 65535"),
        ([], {"AVN_REST_PORT": "0"}, "AVN_REST_PORT (environment)", "set AVN_REST_PORT to a port from 1 to 65535"),
        ([], {"AVN_REDIS_URL": "http://redis:6379"}, "AVN_REDIS_URL (environment)", "set AVN_REDIS_URL to `redis://"),
        ([], {"AVN_REDIS_URL": "redis://redis:port/0"}, "AVN_REDIS_URL (environment)", "set AVN_REDIS_URL to"),
        (["--store", "nowhere"], {}, "--store (flag)", "give --store a folder holding the five `.mar` archives"),
        ([], {}, "model_store (default)", "set AVN_MODEL_STORE to a folder"),
        (["--config", "missing.toml"], {}, "--config (flag)", "--config must name an existing TOML file"),
        ([], {"AVN_LOG_LEVEL": "loud"}, "AVN_LOG_LEVEL (environment)", "set AVN_LOG_LEVEL to one of `DEBUG`, `INFO`"),
    ],
)
def test_invalid_setting_stops_with_exit_2_and_one_line(
    arguments: list[str], environment: dict[str, str], names: str, fix: str, recorder: Recorder, monkeypatch
) -> None:
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    line = serve_error(arguments)
    assert line.startswith(f"avn serve: {names}: ")
    assert f"; fix: {fix}" in line
    assert recorder.settings is None  # nothing was served


def test_malformed_settings_file_names_it(tmp_path: Path, recorder: Recorder) -> None:
    (tmp_path / "bad.toml").write_text("grpc_port = \n")
    assert "--config (flag): not valid TOML" in serve_error(["--config", "bad.toml"])


def test_documented_error_line_is_what_avn_serve_prints(tmp_path: Path, monkeypatch, recorder: Recorder) -> None:
    example = re.search(r"```text\n(.+)\n```", (ROOT / DOC_PATH).read_text()).group(1)
    monkeypatch.setenv("AVN_GRPC_PORT", "70000")
    assert serve_error([]) == example


def key_file_problem(key_file: Path, api_keys: Path) -> str:
    """check_startup's verdict on a TorchServe key file: '' (fine), a warning, or the error line.
    ``api_keys``: the gateway's own keys file, which start-up checks too."""
    loaded = load_settings({"torchserve_key_file": key_file, "api_keys_file": api_keys})
    try:
        warnings = check_startup(loaded, {})
    except Exception as error:  # ConfigurationError; its text is what the operator sees
        return f"error: {error}"
    return "; ".join(warnings)


def test_key_file_checks(tmp_path: Path) -> None:
    api_keys = tmp_path / "gateway" / "api_keys.json"
    KeysFile(api_keys).add("test")
    good = tmp_path / "key_file.json"
    good.write_text(json.dumps({"inference": {"key": "a"}, "management": {"key": "b"}}))
    assert key_file_problem(good, api_keys) == ""
    not_json = tmp_path / "broken.json"
    not_json.write_text("{")
    assert key_file_problem(not_json, api_keys).startswith("error: --torchserve-key-file (flag): ")
    assert "is not JSON" in key_file_problem(not_json, api_keys)
    assert "cannot be read" in key_file_problem(tmp_path, api_keys)  # a folder: unreadable as a file, even as root
    assert "does not exist" in key_file_problem(tmp_path / "nowhere" / "key_file.json", api_keys)
    assert (
        key_file_problem(tmp_path / "not-yet.json", api_keys).startswith("error") is False
    )  # TorchServe writes it later
    assert "does not exist yet" in key_file_problem(tmp_path / "not-yet.json", api_keys)


def test_gateway_container_command_stops_before_binding(tmp_path: Path) -> None:
    """`python -m gateway.service`, the container's command, exits 2 with one line on stderr."""
    environment = {**os.environ, "AVN_BACKEND": "embedded", "AVN_MODEL_STORE": str(tmp_path / "absent")}
    result = subprocess.run(
        [sys.executable, "-m", "gateway.service"],
        env=environment,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == EXIT_CONFIGURATION, result.stderr
    assert result.stderr.strip().splitlines() == [
        f"gateway: AVN_MODEL_STORE (environment): {tmp_path / 'absent'} is not a folder; "
        "fix: set AVN_MODEL_STORE to a folder holding the five `.mar` archives (`avn build-store` writes them)"
    ]


# ---------------------------------------------------------------- names that are no setting


def test_unknown_variables_get_the_nearest_name(tmp_path: Path) -> None:
    settings_file = tmp_path / "avn.toml"
    settings_file.write_text("grpc_prot = 1\n")
    loaded = load_settings({"config": settings_file})
    environ = {
        "AVN_REDIS_UR": "redis://redis",
        "AVN_WORKERS_STAGING": "2",  # read by the TorchServe container: known
        "AVN_GRPC_PORT": "1",
        "avn_log_level": "info",  # the settings are case-insensitive
        "AVN_QUUXZORP": "1",
        "PATH": "/bin",
    }
    assert unknown_name_warnings(loaded, environ) == [
        "AVN_QUUXZORP is not a setting and is ignored",
        "AVN_REDIS_UR is not a setting and is ignored; did you mean AVN_REDIS_URL?",
        f"grpc_prot in {settings_file} is not a setting and is ignored; did you mean grpc_port?",
    ]


def test_serve_warns_about_a_mistyped_variable(recorder: Recorder, tmp_path: Path, monkeypatch, caplog) -> None:
    make_stores(tmp_path)
    monkeypatch.setenv("AVN_REDIS_UR", "redis://redis:6379/0")
    result = CliRunner().invoke(gateway.cli.app, ["serve"])
    assert result.exit_code == 0, result.output
    assert "AVN_REDIS_UR is not a setting and is ignored; did you mean AVN_REDIS_URL?" in caplog.text


def test_every_avn_variable_in_the_repository_is_known() -> None:
    """Compose, the TorchServe container, docs, tests: every AVN_* name they use is a setting or
    listed in OTHER_VARIABLES, so no real variable is ever reported as mistyped."""
    tracked = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    names: set[str] = set()
    for relative in tracked.splitlines():
        path = ROOT / relative
        if path.suffix in {".png", ".dcm", ".jpg", ".mar"} or path.name == Path(__file__).name or not path.is_file():
            continue
        text = re.sub(r"AVN_\w+ is not a setting", "", path.read_text(errors="ignore"))  # the docs' warning example
        names |= set(re.findall(r"\bAVN_[A-Z0-9_]*[A-Z0-9]\b", text))
    known = known_variables()
    assert not names - known - {"AVN_WORKERS", "AVN_OIP_ENDPOINTS"}, sorted(names - known)  # prefixes in prose


# ---------------------------------------------------------------- docs/configuration.md


def test_configuration_doc_is_current() -> None:
    assert (ROOT / DOC_PATH).read_text() == configuration_markdown(), "regenerate it: avn config docs"


def test_readme_and_deployment_point_to_the_configuration() -> None:
    assert "docs/configuration.md" in (ROOT / "README.md").read_text()
    assert "(configuration.md)" in (ROOT / "docs" / "deployment.md").read_text()

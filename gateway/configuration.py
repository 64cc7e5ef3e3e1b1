"""The configuration story around :class:`gateway.settings.Settings`, for the commands that start things.

* :func:`load_settings`: the settings under the one precedence rule (flag given > ``AVN_*``
  environment > settings file > default), and where each value came from;
* :func:`check_startup`: what must hold before anything binds or loads (the store is there, the
  key file is readable, …); a problem is a :class:`ConfigurationError` whose text is one line naming
  the setting and the fix — the commands print it and exit with :data:`EXIT_CONFIGURATION`;
* the same function warns about ``AVN_*`` variables and file keys that are no setting, with the
  nearest real name;
* :func:`shown_settings`: the effective settings with their sources, secrets masked (``avn config show``).
"""

from __future__ import annotations

import difflib
import json
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import SecretStr, ValidationError

from gateway.auth import InsecureAuthSetting, KeysFile, KeysFileError, check_auth_setting, is_loopback
from gateway.settings import (
    CONFIG_SETTING,
    DEFAULT,
    ENV_PREFIX,
    ENVIRONMENT,
    FILE,
    FLAG,
    Settings,
    env_name,
    expectation,
    known_variables,
    redacted_url,
    sources_of,
)
from gateway.tls import TlsSettingError, check_tls_files

# ``avn serve``'s flags and the settings each one sets (--host binds both servers; --embedded
# chooses the embedded backend). A flag that is not given sets nothing.
SERVE_FLAGS = {
    "config": "--config",
    "model_store": "--store",
    "backend": "--embedded",
    "grpc_port": "--grpc-port",
    "rest_port": "--rest-port",
    "grpc_host": "--host",
    "rest_host": "--host",
    "ready_timeout_s": "--ready-timeout",
}
# ``avn dicom-node``'s flags and the settings each one sets, likewise.
DICOM_NODE_FLAGS = {
    "config": "--config",
    "model_store": "--store",
    "backend": "--embedded",
    "dicom_host": "--host",
    "dicom_port": "--port",
    "dicom_ae_title": "--ae-title",
    "dicom_allowed_aes": "--allow",
    "dicom_destination": "--destination",
    "dicom_spool": "--spool",
    "operating_point": "--operating-point",
}
EXIT_CONFIGURATION = 2  # as a usage error: the command was asked for something that cannot work
MASK = "********"
URL_SETTINGS = ("redis_url", "otlp_endpoint")  # may carry a password in their user-info part
SUGGESTION_CUTOFF = 0.6  # difflib similarity below which no name is suggested
SHOWN_VALUE_LENGTH = 80


class ConfigurationError(Exception):
    """A setting that cannot work. ``str()`` is one line: where the value came from, what is wrong, the fix."""

    def __init__(self, setting: str, where: str, problem: str, fix: str) -> None:
        self.setting = setting
        super().__init__(f"{where}: {_one_line(problem)}; fix: {fix}")


@dataclass(frozen=True)
class LoadedSettings:
    """Settings, the layer each value came from, and what the start-up checks need to name it."""

    settings: Settings
    origins: Mapping[str, str]  # setting → FLAG, ENVIRONMENT, FILE or DEFAULT
    flag_names: Mapping[str, str] = field(default_factory=dict)  # setting → the command's flag for it
    config_file: Path | None = None
    file_keys: frozenset[str] = frozenset()  # every key of the settings file, known or not

    def origin(self, setting: str) -> str:
        return self.origins.get(setting, DEFAULT)

    def where(self, setting: str) -> str:
        """Where the value of ``setting`` was set, in the words an operator searches for."""
        return describe_origin(setting, self.origin(setting), self.flag_names, self.config_file)

    def fix(self, setting: str) -> str:
        """How to give ``setting`` a valid value, through the flag, variable or file key that set it."""
        return fix_of(setting, self.origin(setting), self.flag_names, self.config_file)


# ---------------------------------------------------------------- loading


def load_settings(
    flags: Mapping[str, Any] | None = None, *, flag_names: Mapping[str, str] | None = None
) -> LoadedSettings:
    """Settings from the flags given (None values are flags not given and are dropped), the
    environment and the settings file; an invalid value raises :class:`ConfigurationError`."""
    given = {name: value for name, value in (flags or {}).items() if value is not None}
    names = dict(flag_names or {})
    layers = _layers(given, names)
    config_file = _checked_config_file(layers, names)
    origins = _origins(layers)
    try:
        settings = Settings(**given)
    except ValidationError as error:
        raise _invalid_value(error, given, origins, names, config_file) from None
    file_keys = frozenset(dict(layers)[FILE].toml_data) if config_file else frozenset()
    return LoadedSettings(settings, origins, names, config_file, file_keys)


def _layers(given: dict[str, Any], flag_names: Mapping[str, str]) -> tuple[tuple[str, Any], ...]:
    try:
        return sources_of(Settings, given)
    except tomllib.TOMLDecodeError as error:
        origin = FLAG if CONFIG_SETTING in given else ENVIRONMENT
        where = describe_origin(CONFIG_SETTING, origin, flag_names, None)
        raise ConfigurationError(CONFIG_SETTING, where, f"not valid TOML ({error})", "correct the file") from None
    except OSError as error:
        origin = FLAG if CONFIG_SETTING in given else ENVIRONMENT
        where = describe_origin(CONFIG_SETTING, origin, flag_names, None)
        raise ConfigurationError(
            CONFIG_SETTING, where, f"cannot be read ({error.strerror})", "make it readable by this user"
        ) from None


def _checked_config_file(layers: tuple[tuple[str, Any], ...], flag_names: Mapping[str, str]) -> Path | None:
    """The settings file named by a flag or the environment, which must then exist (pydantic-settings
    would silently read nothing)."""
    path = dict(layers)[FILE].toml_file_path
    if path is None:
        return None
    path = Path(path)
    if not path.is_file():
        origin = FLAG if CONFIG_SETTING in dict(layers)[FLAG].init_kwargs else ENVIRONMENT
        raise ConfigurationError(
            CONFIG_SETTING,
            describe_origin(CONFIG_SETTING, origin, flag_names, None),
            f"{path} is not a file",
            f"{knob_of(CONFIG_SETTING, origin, flag_names, None)} must name {expectation(CONFIG_SETTING)}",
        )
    return path


def _origins(layers: tuple[tuple[str, Any], ...]) -> dict[str, str]:
    """Per setting, the highest layer that gives it."""
    origins: dict[str, str] = {}
    for label, source in reversed(layers):  # lowest first, so higher layers overwrite
        for key in source():
            if key not in Settings.model_fields or (key == CONFIG_SETTING and label == FILE):
                continue  # the file does not name itself: it was named by a flag or the environment
            origins[key] = label
    return origins


def _invalid_value(
    error: ValidationError,
    given: Mapping[str, Any],
    origins: Mapping[str, str],
    flag_names: Mapping[str, str],
    config_file: Path | None,
) -> ConfigurationError:
    first = error.errors()[0]
    setting = str(first["loc"][0]) if first["loc"] else "?"
    origin = origins.get(setting, DEFAULT)
    value = shown_value(setting, first.get("input"))
    problem = f"{value} is invalid ({first['msg'].removeprefix('Value error, ')})"
    fix = fix_of(setting, origin, flag_names, config_file)
    return ConfigurationError(setting, describe_origin(setting, origin, flag_names, config_file), problem, fix)


def describe_origin(setting: str, origin: str, flag_names: Mapping[str, str], config_file: Path | None) -> str:
    if origin == FLAG:
        return f"{flag_of(setting, flag_names)} (flag)"
    if origin == ENVIRONMENT:
        return f"{env_name(setting)} (environment)"
    if origin == FILE:
        return f"{setting} in {config_file} (settings file)"
    return f"{setting} (default)"


def knob_of(setting: str, origin: str, flag_names: Mapping[str, str], config_file: Path | None) -> str:
    if origin == FLAG:
        return flag_of(setting, flag_names)
    if origin == FILE:
        return f"{setting} in {config_file}"
    return env_name(setting)


def fix_of(setting: str, origin: str, flag_names: Mapping[str, str], config_file: Path | None) -> str:
    """ "give --flag <what is valid>" or "set <variable or file key> to <what is valid>"."""
    knob = knob_of(setting, origin, flag_names, config_file)
    return f"{'give ' + knob if origin == FLAG else 'set ' + knob + ' to'} {expectation(setting)}"


def flag_of(setting: str, flag_names: Mapping[str, str]) -> str:
    return flag_names.get(setting, "--" + setting.replace("_", "-"))


# ---------------------------------------------------------------- start-up checks


def check_startup(
    loaded: LoadedSettings,
    environ: Mapping[str, str] | None = None,
    *,
    serves_store: bool = False,
    serves_api: bool = True,
) -> list[str]:
    """Raise :class:`ConfigurationError` for the first setting that cannot work; return warnings.

    ``serves_store``: the command serves the archives of ``model_store`` itself (``avn serve``: its
    own TorchServe, whose address and tokens it sets, or the embedded backend), so the archives
    must be there. Otherwise the store matters to the embedded backend only, and TorchServe's key
    file to the TorchServe backend. ``serves_api`` False (the DICOM node): no REST or gRPC server is
    started, so API keys and TLS do not apply (the node admits callers by AE title).
    """
    settings = loaded.settings
    if serves_store or settings.backend == "embedded":
        _check_store(loaded, archives_required=serves_store)
    _check_audit_log(loaded)
    warnings = _check_auth(loaded) + _check_tls(loaded) if serves_api else []
    if not serves_store and settings.backend == "torchserve" and settings.torchserve_key_file is not None:
        warnings += _check_key_file(loaded)
    return warnings + unknown_name_warnings(loaded, os.environ if environ is None else environ)


def check_dicom_node_startup(loaded: LoadedSettings) -> None:
    """What ``avn dicom-node`` needs beyond :func:`check_startup`: a destination to send to, and a
    spool folder it can create and write (received files are acknowledged only once they are in it)."""
    settings = loaded.settings
    if settings.dicom_destination is None:
        raise ConfigurationError(
            "dicom_destination", loaded.where("dicom_destination"), "no destination AE", loaded.fix("dicom_destination")
        )
    spool = settings.dicom_spool
    try:
        spool.mkdir(parents=True, exist_ok=True)
        probe = spool / ".write-probe"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as error:
        raise ConfigurationError(
            "dicom_spool",
            loaded.where("dicom_spool"),
            f"{spool} cannot be written ({error.strerror or error})",
            loaded.fix("dicom_spool"),
        ) from None


def _check_store(loaded: LoadedSettings, *, archives_required: bool) -> None:
    store = loaded.settings.model_store
    fix = loaded.fix("model_store")
    if not store.is_dir():
        raise ConfigurationError("model_store", loaded.where("model_store"), f"{store} is not a folder", fix)
    if archives_required and not any(store.glob("*.mar")):
        raise ConfigurationError("model_store", loaded.where("model_store"), f"{store} holds no .mar archives", fix)


def _check_auth(loaded: LoadedSettings) -> list[str]:
    """Authentication off only on loopback; on, a keys file that reads (an empty one is a warning:
    it lets no one in until a key is added, which needs no restart)."""
    settings = loaded.settings
    try:
        check_auth_setting(settings)
    except InsecureAuthSetting as error:
        raise ConfigurationError(
            "auth", loaded.where("auth"), str(error), f"{_knob_phrase(loaded, 'auth')} `api-key`, or bind 127.0.0.1"
        ) from None
    if settings.auth == "off":
        return [f"{loaded.where('auth')}: authentication is off; development on loopback only"]
    path = settings.api_keys_file
    where = loaded.where("api_keys_file")
    fix = f"`avn keys add ID --file FILE` writes one; {_knob_phrase(loaded, 'api_keys_file')} that file"
    if path is None:
        raise ConfigurationError("api_keys_file", where, "authentication is on and no API keys file is set", fix)
    if not path.is_file():
        raise ConfigurationError("api_keys_file", where, f"{path} is not a file", fix)
    try:
        entries = KeysFile(path).entries()
    except KeysFileError as error:
        raise ConfigurationError("api_keys_file", where, str(error), fix) from None
    if not entries:
        return [f"{where}: {path} holds no key: every request is refused until `avn keys add` adds one"]
    return []


def _check_tls(loaded: LoadedSettings) -> list[str]:
    """The TLS files load together; without TLS, a server beyond loopback is worth a warning (keys
    would cross the network in clear text unless a proxy in front terminates TLS)."""
    settings = loaded.settings
    try:
        check_tls_files(settings)
    except TlsSettingError as error:
        setting = error.setting
        raise ConfigurationError(setting, loaded.where(setting), str(error), loaded.fix(setting)) from None
    if settings.tls_cert_file is None and settings.auth != "off":
        exposed = [host for host in (settings.rest_host, settings.grpc_host) if not is_loopback(host)]
        if exposed:
            return [
                f"TLS is off while a server binds {exposed[0]}: API keys cross the network in clear text unless a "
                "proxy in front terminates TLS (AVN_TLS_CERT_FILE, AVN_TLS_KEY_FILE)"
            ]
    return []


def _check_audit_log(loaded: LoadedSettings) -> None:
    """The audit log's folder exists and the file can be appended to: a gateway that cannot audit must not serve."""
    path = loaded.settings.audit_log_file
    if path is None:
        return
    try:
        with open(path, "a"):
            pass
    except OSError as error:
        problem = f"{path} cannot be appended to ({error.strerror})"
        where, fix = loaded.where("audit_log_file"), loaded.fix("audit_log_file")
        raise ConfigurationError("audit_log_file", where, problem, fix) from None


def _knob_phrase(loaded: LoadedSettings, setting: str) -> str:
    knob = knob_of(setting, loaded.origin(setting), loaded.flag_names, loaded.config_file)
    return f"give {knob}" if loaded.origin(setting) == FLAG else f"set {knob} to"


def _check_key_file(loaded: LoadedSettings) -> list[str]:
    """TorchServe writes its key file when it starts, which may be after the gateway: a missing file
    in an existing folder is a warning; a file that is there must be readable."""
    path = loaded.settings.torchserve_key_file
    where = loaded.where("torchserve_key_file")
    fix = loaded.fix("torchserve_key_file")
    if not path.exists():
        if not path.parent.is_dir():
            raise ConfigurationError("torchserve_key_file", where, f"its folder {path.parent} does not exist", fix)
        return [f"{where}: {path} does not exist yet; calls go without a token until TorchServe writes it"]
    try:
        json.loads(path.read_text())
    except OSError as error:
        raise ConfigurationError(
            "torchserve_key_file", where, f"{path} cannot be read ({error.strerror})", fix
        ) from None
    except ValueError:
        raise ConfigurationError("torchserve_key_file", where, f"{path} is not JSON", fix) from None
    return []


def unknown_name_warnings(loaded: LoadedSettings, environ: Mapping[str, str]) -> list[str]:
    """A warning per ``AVN_*`` variable and per settings-file key that is no setting, with the nearest
    real name when one is close (a typo is otherwise silently ignored)."""
    warnings = []
    known = sorted(known_variables())
    for name in sorted(environ):
        upper = name.upper()
        if upper.startswith(ENV_PREFIX) and upper not in known:
            warnings.append(f"{name} is not a setting and is ignored{_suggestion(upper, known)}")
    settings = sorted(Settings.model_fields)
    for key in sorted(loaded.file_keys - set(settings)):
        warnings.append(f"{key} in {loaded.config_file} is not a setting and is ignored{_suggestion(key, settings)}")
    return warnings


def _suggestion(name: str, known: list[str]) -> str:
    nearest = difflib.get_close_matches(name, known, n=1, cutoff=SUGGESTION_CUTOFF)
    return f"; did you mean {nearest[0]}?" if nearest else ""


# ---------------------------------------------------------------- showing


@dataclass(frozen=True)
class ShownSetting:
    """One line of ``avn config show``."""

    name: str
    value: Any  # JSON-able; secrets masked
    source: str
    variable: str


def shown_settings(loaded: LoadedSettings) -> list[ShownSetting]:
    return [
        ShownSetting(name, masked_value(name, getattr(loaded.settings, name)), loaded.origin(name), env_name(name))
        for name in Settings.model_fields
    ]


def masked_value(setting: str, value: Any) -> Any:
    """The JSON-able value of a setting with secrets hidden: tokens entirely, passwords in URLs."""
    if isinstance(value, SecretStr):
        return MASK
    if setting in URL_SETTINGS and isinstance(value, str):
        return redacted_url(value)
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, tuple):
        return list(value)  # the allowed AE titles: a JSON list, as in the settings file
    return value


def shown_value(setting: str, raw: Any) -> str:
    """A raw input for an error message: secrets masked, long values cut."""
    field_info = Settings.model_fields.get(setting)
    if field_info is not None and "SecretStr" in str(field_info.annotation):
        return MASK
    if setting in URL_SETTINGS and isinstance(raw, str):
        raw = redacted_url(raw)
    text = repr(raw)
    return text if len(text) <= SHOWN_VALUE_LENGTH else text[: SHOWN_VALUE_LENGTH - 1] + "…"


def _one_line(text: str) -> str:
    return " ".join(text.split())

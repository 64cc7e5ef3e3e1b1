"""Who may call the gateway: API keys, the same on REST and gRPC.

* A key is ``<id>.<secret>``: the id names its holder (it is what the audit log records, never
  the key), the secret is 32 random bytes in base64url. Clients send it as
  ``authorization: Bearer <key>`` — an HTTP header, or gRPC metadata of the same name.
* The keys file (``AVN_API_KEYS_FILE``, JSON) holds per id a salted scrypt hash of the secret and
  when it was made, never the secret: a copy of the file lets nobody in. ``avn keys add|revoke|list``
  edits it (atomically, mode 0600).
* Several keys are valid at once, so a key is rotated without downtime: add the new one, move the
  clients, revoke the old one. The file is re-read whenever it changes (its inode, size or
  modification time), so neither step needs a restart.
* scrypt is slow on purpose (~50 ms); a presented key is hashed once and the verdict remembered
  (by its SHA-256, in memory, forgotten when the file changes), so only a new key costs that.
  An unknown id is refused without hashing anything.
* ``AVN_AUTH=off`` lets every request in as ``anonymous``: for development on loopback only, and
  refused at start-up (:func:`check_auth_setting`) when either server binds another address.

Health checks stay open whatever the setting: the REST app and the gRPC interceptor decide which
routes and methods are open; this module decides who a key belongs to.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import logging
import os
import re
import secrets
import tempfile
import threading
from collections import OrderedDict
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

from avn.serving.torchserve import is_loopback
from gateway.errors import Unauthenticated

logger = logging.getLogger(__name__)

KEY_ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")
SECRET_BYTES = 32
BEARER = "bearer"
ANONYMOUS = "anonymous"  # the caller of every request when authentication is off
KEYS_FILE_VERSION = 1
# scrypt at n=2**14, r=8: 16 MiB and tens of milliseconds per hash, the cost an offline guess pays.
SCRYPT_N, SCRYPT_R, SCRYPT_P, SCRYPT_LENGTH = 2**14, 8, 1, 32
SALT_BYTES = 16
VERDICTS_REMEMBERED = 1024  # presented keys whose verdict is kept, most recent first
AUTH_MODES = ("api-key", "off")


class KeysFileError(ValueError):
    """The keys file cannot be read, is not the expected JSON, or an edit of it is not possible."""


# ---------------------------------------------------------------- hashing


def hash_secret(secret: str, salt: bytes | None = None) -> str:
    """``scrypt$n$r$p$<salt>$<hash>`` (base64url): what the keys file stores for ``secret``."""
    salt = salt if salt is not None else secrets.token_bytes(SALT_BYTES)
    digest = _scrypt(secret, salt, SCRYPT_N, SCRYPT_R, SCRYPT_P)
    return "$".join(("scrypt", str(SCRYPT_N), str(SCRYPT_R), str(SCRYPT_P), _b64(salt), _b64(digest)))


def secret_matches(secret: str, stored: str) -> bool:
    """Whether ``secret`` hashes to ``stored`` (constant-time comparison; a malformed entry never matches)."""
    try:
        scheme, n, r, p, salt, digest = stored.split("$")
        if scheme != "scrypt":
            return False
        expected = _unb64(digest)
        actual = _scrypt(secret, _unb64(salt), int(n), int(r), int(p), len(expected))
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(actual, expected)


def _scrypt(secret: str, salt: bytes, n: int, r: int, p: int, length: int = SCRYPT_LENGTH) -> bytes:
    # maxmem above the 128·n·r bytes scrypt needs (OpenSSL's default cap is 32 MiB).
    return hashlib.scrypt(secret.encode(), salt=salt, n=n, r=r, p=p, dklen=length, maxmem=256 * n * r + 2**20)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def split_key(key: str) -> tuple[str, str] | None:
    """(id, secret) of a well-formed key, else None."""
    key_id, dot, secret = key.partition(".")
    if not dot or not secret or not KEY_ID_PATTERN.fullmatch(key_id):
        return None
    return key_id, secret


def bearer_key(authorization: str | None) -> str | None:
    """The key of an ``authorization: Bearer <key>`` value; None when absent or another scheme."""
    if not authorization:
        return None
    scheme, _, key = authorization.strip().partition(" ")
    return (key.strip() or None) if scheme.lower() == BEARER else None


# ---------------------------------------------------------------- the keys file


@dataclass(frozen=True)
class KeyEntry:
    """One key of the file: its id, the hash of its secret, and when it was made (ISO 8601, UTC)."""

    id: str
    hash: str
    created: str


class KeysFile:
    """The JSON keys file: ``{"version": 1, "keys": [{"id", "hash", "created"}, …]}``."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    def entries(self) -> dict[str, KeyEntry]:
        """Every key of the file by id; a missing file has none; a malformed one raises :class:`KeysFileError`."""
        if not self.path.exists():
            return {}
        try:
            document = json.loads(self.path.read_text())
        except OSError as error:
            raise KeysFileError(f"{self.path} cannot be read ({error.strerror})") from None
        except ValueError:
            raise KeysFileError(f"{self.path} is not JSON") from None
        return _entries_of(document, self.path)

    def add(self, key_id: str) -> str:
        """A new key for ``key_id`` (printed once, never stored); its hash is added to the file."""
        if not KEY_ID_PATTERN.fullmatch(key_id):
            raise KeysFileError(
                f"key id {key_id!r} must be 1-64 letters, digits, '-' or '_', starting with a letter or digit"
            )
        entries = self.entries()
        if key_id in entries:
            raise KeysFileError(f"key id {key_id!r} exists; revoke it first or choose another id")
        secret = secrets.token_urlsafe(SECRET_BYTES)
        created = datetime.now(UTC).isoformat(timespec="seconds")
        entries[key_id] = KeyEntry(key_id, hash_secret(secret), created)
        self._write(entries)
        return f"{key_id}.{secret}"

    def revoke(self, key_id: str) -> None:
        entries = self.entries()
        if key_id not in entries:
            raise KeysFileError(f"no key {key_id!r} in {self.path}")
        del entries[key_id]
        self._write(entries)

    def _write(self, entries: dict[str, KeyEntry]) -> None:
        """Replace the file atomically (a reader sees the old file or the new one, never half of
        one). A new file is readable by its owner only; a replaced one keeps its mode and group
        (e.g. 0640 and the group of the container's user, docs/security.md)."""
        document = {
            "version": KEYS_FILE_VERSION,
            "keys": [{"id": e.id, "hash": e.hash, "created": e.created} for e in entries.values()],
        }
        self.path.parent.mkdir(parents=True, exist_ok=True)
        handle, temporary = tempfile.mkstemp(dir=self.path.parent, prefix=f".{self.path.name}.")
        try:
            with os.fdopen(handle, "w") as output:
                json.dump(document, output, indent=2)
                output.write("\n")
            _keep_access(temporary, self.path)
            os.replace(temporary, self.path)
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise


def _keep_access(new: str, old: Path) -> None:
    """Give ``new`` the mode and group of ``old`` when there is one, else owner-only access."""
    try:
        previous = old.stat()
    except FileNotFoundError:
        os.chmod(new, 0o600)
        return
    os.chmod(new, previous.st_mode & 0o777)
    try:
        os.chown(new, -1, previous.st_gid)
    except PermissionError:  # not a member of that group: the file keeps ours, as it would anyway
        pass


def _entries_of(document: Any, path: Path) -> dict[str, KeyEntry]:
    if not isinstance(document, dict) or not isinstance(document.get("keys"), list):
        raise KeysFileError(f'{path} has no "keys" list (`avn keys add` writes the file)')
    entries = {}
    for item in document["keys"]:
        if not (isinstance(item, dict) and isinstance(item.get("id"), str) and isinstance(item.get("hash"), str)):
            raise KeysFileError(f'{path}: every key needs a text "id" and "hash"')
        entries[item["id"]] = KeyEntry(item["id"], item["hash"], str(item.get("created", "")))
    return entries


# ---------------------------------------------------------------- authenticators


class Authenticator(Protocol):
    """Turns an ``authorization`` value into the caller's key id, or raises :class:`Unauthenticated`."""

    mode: str

    async def authenticate(self, authorization: str | None) -> str: ...


class OpenAuthenticator:
    """``AVN_AUTH=off``: every request is ``anonymous`` (development on loopback)."""

    mode = "off"

    async def authenticate(self, authorization: str | None) -> str:
        return ANONYMOUS


class KeyAuthenticator:
    """API keys checked against the keys file, re-read whenever it changes."""

    mode = "api-key"

    def __init__(self, keys_file: Path | None) -> None:
        self.keys_file = KeysFile(keys_file) if keys_file is not None else None
        self._lock = threading.Lock()  # the gRPC and REST servers may run on different threads
        self._signature: tuple[int, int, int] | None = None
        self._entries: dict[str, KeyEntry] = {}
        self._verdicts: OrderedDict[bytes, str | None] = OrderedDict()  # SHA-256 of a key → its id or None
        self._problem_logged = False

    async def authenticate(self, authorization: str | None) -> str:
        key = bearer_key(authorization)
        if key is None:
            raise Unauthenticated("an API key is required: send the header `authorization: Bearer <key>`")
        parts = split_key(key)
        entries = self._current_entries()
        if parts is None or parts[0] not in entries:
            raise Unauthenticated("the API key is not valid")
        fingerprint = hashlib.sha256(key.encode()).digest()
        verdict = self._remembered(fingerprint)
        if verdict is _UNKNOWN:
            entry = entries[parts[0]]
            # scrypt takes tens of milliseconds: off the event loop.
            matches = await asyncio.to_thread(secret_matches, parts[1], entry.hash)
            verdict = entry.id if matches else None
            self._remember(fingerprint, verdict)
        if verdict is None:
            raise Unauthenticated("the API key is not valid")
        return verdict

    def _current_entries(self) -> dict[str, KeyEntry]:
        """The file's keys, re-read when its signature changed; an unreadable file lets no one in."""
        signature = _signature_of(self.keys_file.path) if self.keys_file is not None else None
        with self._lock:
            if signature == self._signature:
                return self._entries
        entries = self._read_entries()
        with self._lock:
            self._signature, self._entries = signature, entries
            self._verdicts.clear()  # a revoked key must not stay remembered
        if entries:
            logger.info("API keys loaded: %d (%s)", len(entries), ", ".join(sorted(entries)))
        return entries

    def _read_entries(self) -> dict[str, KeyEntry]:
        if self.keys_file is None:
            self._log_problem("no keys file is configured (AVN_API_KEYS_FILE): every request is refused")
            return {}
        try:
            entries = self.keys_file.entries()
        except KeysFileError as error:
            self._log_problem(f"{error}: every request is refused until it is fixed")
            return {}
        if not entries:
            self._log_problem(f"{self.keys_file.path} holds no key: every request is refused (`avn keys add`)")
        else:
            self._problem_logged = False
        return entries

    def _log_problem(self, message: str) -> None:
        if not self._problem_logged:  # once per problem, not once per request
            logger.warning("API keys: %s", message)
            self._problem_logged = True

    def _remembered(self, fingerprint: bytes) -> Any:
        with self._lock:
            if fingerprint not in self._verdicts:
                return _UNKNOWN
            self._verdicts.move_to_end(fingerprint)
            return self._verdicts[fingerprint]

    def _remember(self, fingerprint: bytes, verdict: str | None) -> None:
        with self._lock:
            self._verdicts[fingerprint] = verdict
            while len(self._verdicts) > VERDICTS_REMEMBERED:
                self._verdicts.popitem(last=False)


_UNKNOWN = object()


def _signature_of(path: Path) -> tuple[int, int, int] | None:
    try:
        status = path.stat()
    except OSError:
        return None
    return status.st_ino, status.st_size, status.st_mtime_ns


# ---------------------------------------------------------------- from settings


class InsecureAuthSetting(ValueError):
    """Authentication off on a server that binds an address other than loopback."""


def check_auth_setting(settings: Any) -> None:
    """Authentication may be off only while both servers bind loopback."""
    if settings.auth != "off":
        return
    exposed = [host for host in (settings.rest_host, settings.grpc_host) if not is_loopback(host)]
    if exposed:
        raise InsecureAuthSetting(
            f"authentication is off while a server binds {exposed[0]}: off is for development on loopback only"
        )


def authenticator_from(settings: Any) -> Authenticator:
    """The authenticator ``AVN_AUTH`` asks for (refusing ``off`` beyond loopback)."""
    check_auth_setting(settings)
    if settings.auth == "off":
        logger.warning("authentication is OFF (AVN_AUTH=off): every request is let in as %r", ANONYMOUS)
        return OpenAuthenticator()
    return KeyAuthenticator(settings.api_keys_file)

"""Authentication (issue #11): API keys hashed at rest and rotatable, checked on every REST route and
gRPC method but the health checks, off only on loopback, and TLS / mutual TLS on both servers.

The servers are real: uvicorn and grpc.aio on loopback ports, and ``python -m gateway.service`` for
TLS (certificates made here with the ``cryptography`` package). The models are beside the point:
an empty in-process backend answers 503 where a model would be needed, which is not 401.
"""

from __future__ import annotations

import asyncio
import json
import os
import ssl
import stat
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from fastapi.routing import APIRoute
from gateway_support import ApiKey, keyed_channel, write_api_key, write_tiny_store
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from service_support import GatewayProcess
from tls_support import Certificates
from typer.testing import CliRunner
from web_support import LiveGateway, live_gateway

import gateway.cli
from avn.pipeline.pipeline import Pipeline
from avn.serving.inprocess import InProcessBackend
from avn.serving.torchserve import LOOPBACK
from gateway.auth import (
    ANONYMOUS,
    InsecureAuthSetting,
    KeyAuthenticator,
    KeysFile,
    authenticator_from,
    bearer_key,
    secret_matches,
)
from gateway.configuration import ConfigurationError, check_startup, load_settings
from gateway.errors import Unauthenticated
from gateway.grpc_server import BackgroundGrpcServer, pb
from gateway.proto import SERVICE_NAME, load
from gateway.rest import create_app
from gateway.rest.app import OPEN_PATHS, is_open
from gateway.settings import Settings

STUBS = load()
RPC_TIMEOUT_S = 30


# ---------------------------------------------------------------- helpers


def http(
    url: str, method: str = "GET", headers: dict[str, str] | None = None, context: ssl.SSLContext | None = None
) -> tuple[int, dict[str, str], bytes]:
    data = b"" if method == "POST" else None
    request = urllib.request.Request(url, data=data, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=30, context=context) as response:
            return response.status, {k.lower(): v for k, v in response.headers.items()}, response.read()
    except urllib.error.HTTPError as error:
        return error.code, {k.lower(): v for k, v in error.headers.items()}, error.read()


def empty_pipeline() -> Pipeline:
    return Pipeline(InProcessBackend({}))  # no model: 503 where one is needed


@pytest.fixture(scope="module")
def rest(api_key: ApiKey) -> Iterator[LiveGateway]:
    app = create_app(empty_pipeline(), Settings(api_keys_file=api_key.file, case_bank=None))
    with live_gateway(app) as server:
        server.app = app  # the routes to walk
        yield server


def api_routes(routes: list) -> Iterator[APIRoute]:
    """Every APIRoute, also inside included routers (FastAPI keeps those as one route each that
    holds the router it includes)."""
    for route in routes:
        if isinstance(route, APIRoute):
            yield route
        elif hasattr(route, "original_router"):
            yield from api_routes(route.original_router.routes)


def closed_requests(app) -> list[tuple[str, str]]:  # noqa: ANN001
    """(method, path) of every route of the app that is not open, path parameters filled in."""
    found = []
    for route in api_routes(app.routes):
        if not is_open(route.path):
            path = route.path.replace("{case_id}", "1")
            found += [(method, path) for method in sorted(route.methods)]
    return found


# ---------------------------------------------------------------- the keys file and its command


def test_avn_keys_adds_lists_and_revokes_keys_stored_only_as_salted_hashes(tmp_path: Path) -> None:
    keys_file = tmp_path / "secrets" / "api_keys.json"
    runner = CliRunner()
    added = [runner.invoke(gateway.cli.app, ["keys", "add", name, "--file", str(keys_file)]) for name in ("a", "b")]
    assert all(result.exit_code == 0 for result in added), [result.output for result in added]
    key_a, key_b = (result.stdout.strip() for result in added)
    assert key_a.startswith("a.") and key_b.startswith("b.") and len(key_a.split(".")[1]) >= 40
    text = keys_file.read_text()
    assert key_a.split(".")[1] not in text and key_b.split(".")[1] not in text  # hashes only
    assert stat.S_IMODE(keys_file.stat().st_mode) == 0o600
    entries = KeysFile(keys_file).entries()
    assert secret_matches(key_a.split(".")[1], entries["a"].hash)
    assert not secret_matches(key_b.split(".")[1], entries["a"].hash)
    assert entries["a"].hash.split("$")[4] != entries["b"].hash.split("$")[4]  # a salt per key

    listed = runner.invoke(gateway.cli.app, ["keys", "list", "--file", str(keys_file)], env={"COLUMNS": "200"})
    assert listed.exit_code == 0 and " a " in listed.stdout and " b " in listed.stdout
    assert "scrypt" not in listed.stdout and key_a.split(".")[1] not in listed.stdout

    again = runner.invoke(gateway.cli.app, ["keys", "add", "a", "--file", str(keys_file)])
    assert again.exit_code == 1 and "exists" in again.output
    bad_id = runner.invoke(gateway.cli.app, ["keys", "add", "no spaces", "--file", str(keys_file)])
    assert bad_id.exit_code == 1 and "key id" in bad_id.output
    revoked = runner.invoke(gateway.cli.app, ["keys", "revoke", "a", "--file", str(keys_file)])
    assert revoked.exit_code == 0 and set(KeysFile(keys_file).entries()) == {"b"}
    assert runner.invoke(gateway.cli.app, ["keys", "revoke", "a", "--file", str(keys_file)]).exit_code == 1
    keys_file.chmod(0o640)  # shared with the container's group: later edits keep it so
    runner.invoke(gateway.cli.app, ["keys", "add", "c", "--file", str(keys_file)])
    assert stat.S_IMODE(keys_file.stat().st_mode) == 0o640


def test_the_keys_file_comes_from_the_settings_when_not_given(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("AVN_API_KEYS_FILE", str(tmp_path / "keys.json"))
    result = CliRunner().invoke(gateway.cli.app, ["keys", "add", "ward-3"])
    assert result.exit_code == 0 and set(KeysFile(tmp_path / "keys.json").entries()) == {"ward-3"}
    monkeypatch.delenv("AVN_API_KEYS_FILE")
    result = CliRunner().invoke(gateway.cli.app, ["keys", "list"])
    assert result.exit_code == 2 and "--file" in result.output


@pytest.mark.parametrize(
    "header",
    [None, "", "Bearer", "Bearer ", "Basic dGVzdDp0ZXN0", "Bearer test", "Bearer test.", "Bearer nobody.secret"],
)
def test_a_missing_or_malformed_key_is_refused(api_key: ApiKey, header: str | None) -> None:
    with pytest.raises(Unauthenticated):
        asyncio.run(api_key.authenticator().authenticate(header))


def test_the_bearer_scheme_is_case_insensitive(api_key: ApiKey) -> None:
    assert bearer_key(f"bearer {api_key.key}") == api_key.key
    assert asyncio.run(api_key.authenticator().authenticate(f"BEARER {api_key.key}")) == api_key.id


# ---------------------------------------------------------------- REST: closed but for health and the page


def test_every_rest_route_but_the_open_ones_refuses_a_request_without_a_valid_key(
    rest: LiveGateway, api_key: ApiKey
) -> None:
    requests = closed_requests(rest.app)
    paths = {path for _, path in requests}
    # What issue #11 names, and the OpenAPI document and its viewers, are among the closed routes.
    assert {"/metrics", "/docs", "/redoc", "/openapi.json", "/v1/cases", "/v1/cases/1/truth", "/v1/models"} <= paths
    assert {"/v1/diagnose", "/v1/studies", "/v1/render", "/v1/whoami"} <= paths
    wrong = {"authorization": f"Bearer {api_key.id}.not-the-secret"}
    for method, path in requests:
        for headers in ({}, wrong):
            status, response_headers, body = http(f"{rest.url}{path}", method, headers)
            assert status == 401, (method, path, status, body)
            assert response_headers["www-authenticate"].startswith("Bearer")
            assert response_headers["avn-error-type"] == "Unauthenticated"
            assert json.loads(body)["error"]["code"] == "Unauthenticated"
        status, _, body = http(f"{rest.url}{path}", method, api_key.headers)
        assert status != 401, (method, path, body)


def test_health_checks_and_the_web_page_are_open(rest: LiveGateway) -> None:
    assert OPEN_PATHS >= {"/healthz", "/readyz"}
    assert http(f"{rest.url}/healthz")[0] == 200
    assert http(f"{rest.url}/readyz")[0] == 503  # open, and honest: no model here
    status, headers, _ = http(f"{rest.url}/app/")
    assert status == 200 and headers["content-type"].startswith("text/html")
    assert http(f"{rest.url}/app/js/api.js")[0] == 200


def test_whoami_names_the_key_and_the_openapi_document_declares_the_scheme(rest: LiveGateway, api_key) -> None:
    status, _, body = http(f"{rest.url}/v1/whoami", headers=api_key.headers)
    assert status == 200 and json.loads(body) == {"caller": "test", "authentication": "api-key"}
    status, _, body = http(f"{rest.url}/openapi.json", headers=api_key.headers)
    document = json.loads(body)
    assert document["components"]["securitySchemes"]["HTTPBearer"]["scheme"] == "bearer"
    assert {"security"} <= set(document["paths"]["/v1/diagnose"]["post"])
    assert "security" not in document["paths"]["/healthz"]["get"]


def test_keys_rotate_without_a_restart(tmp_path: Path) -> None:
    """Two keys valid at once; a revoked key is refused from the next request on, a new one accepted,
    on REST and gRPC alike — the running servers re-read the file."""
    old = write_api_key(tmp_path, "old")
    keys = KeysFile(old.file)
    settings = Settings(api_keys_file=old.file, case_bank=None)
    with (
        live_gateway(create_app(empty_pipeline(), settings)) as rest,
        BackgroundGrpcServer(empty_pipeline(), authenticator=KeyAuthenticator(old.file)) as grpc_server,
    ):

        def rest_status(key: str) -> int:
            return http(f"{rest.url}/v1/whoami", headers={"authorization": f"Bearer {key}"})[0]

        def grpc_accepts(key: str) -> bool:
            """Whether the call gets past authentication (no model here: UNAVAILABLE beyond it)."""
            with keyed_channel(grpc_server.target, key) as channel:
                try:
                    STUBS.services.DiagnosisStub(channel).ListModels(pb.ListModelsRequest(), timeout=RPC_TIMEOUT_S)
                except grpc.RpcError as error:
                    return error.code() != grpc.StatusCode.UNAUTHENTICATED
                return True

        assert rest_status(old.key) == 200 and grpc_accepts(old.key)
        new = keys.add("new")
        assert rest_status(new) == 200 and rest_status(old.key) == 200  # both, during the move
        assert grpc_accepts(new)
        keys.revoke("old")
        assert rest_status(old.key) == 401 and not grpc_accepts(old.key)
        assert rest_status(new) == 200 and grpc_accepts(new)
        old.file.write_text("{not json")  # a broken file lets nobody in, and the gateway stays up
        assert rest_status(new) == 401 and http(f"{rest.url}/healthz")[0] == 200


# ---------------------------------------------------------------- gRPC: closed but for health


@pytest.fixture(scope="module")
def grpc_target(api_key: ApiKey) -> Iterator[str]:
    with BackgroundGrpcServer(empty_pipeline(), authenticator=api_key.authenticator()) as server:
        yield server.target


@pytest.mark.parametrize("method", ["Diagnose", "DiagnoseStudy", "ListModels"])
def test_every_diagnosis_method_refuses_a_call_without_a_key(grpc_target: str, method: str) -> None:
    requests = {
        "Diagnose": pb.DiagnoseRequest(),
        "DiagnoseStudy": pb.StudyRequest(),
        "ListModels": pb.ListModelsRequest(),
    }
    with grpc.insecure_channel(grpc_target) as channel:
        call = getattr(STUBS.services.DiagnosisStub(channel), method)
        for metadata in ((), (("authorization", "Bearer test.wrong"),)):
            with pytest.raises(grpc.RpcError) as raised:
                call(requests[method], timeout=RPC_TIMEOUT_S, metadata=metadata, wait_for_ready=True)
            error = raised.value
            assert error.code() == grpc.StatusCode.UNAUTHENTICATED, error.details()
            trailing = dict(error.trailing_metadata())
            assert trailing["avn-error-type"] == "Unauthenticated" and trailing["x-request-id"]


def test_reflection_is_closed_and_health_is_open(grpc_target: str, api_key: ApiKey) -> None:
    request = reflection_pb2.ServerReflectionRequest(list_services="")
    with grpc.insecure_channel(grpc_target) as channel:
        with pytest.raises(grpc.RpcError) as raised:
            list(reflection_pb2_grpc.ServerReflectionStub(channel).ServerReflectionInfo(iter([request]), timeout=10))
        assert raised.value.code() == grpc.StatusCode.UNAUTHENTICATED
        health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=SERVICE_NAME))
        assert health.status == health_pb2.HealthCheckResponse.NOT_SERVING  # open, and honest: no model
    with keyed_channel(grpc_target, api_key.key) as channel:
        answers = list(reflection_pb2_grpc.ServerReflectionStub(channel).ServerReflectionInfo(iter([request])))
        assert SERVICE_NAME in {service.name for service in answers[0].list_services_response.service}


def test_a_server_without_an_authenticator_refuses_everything_but_health() -> None:
    """Secure by default: forgetting the authenticator does not open the service."""
    with BackgroundGrpcServer(empty_pipeline()) as server, keyed_channel(server.target, "test.any") as channel:
        with pytest.raises(grpc.RpcError) as raised:
            STUBS.services.DiagnosisStub(channel).ListModels(pb.ListModelsRequest(), timeout=RPC_TIMEOUT_S)
        assert raised.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest()).status


# ---------------------------------------------------------------- off: development on loopback only


def test_authentication_off_lets_everyone_in_on_loopback(tmp_path: Path) -> None:
    app = create_app(empty_pipeline(), Settings(auth="off", case_bank=None))
    with live_gateway(app) as server:
        status, _, body = http(f"{server.url}/v1/whoami")
        assert status == 200 and json.loads(body) == {"caller": ANONYMOUS, "authentication": "off"}
        assert http(f"{server.url}/metrics")[0] == 200


@pytest.mark.parametrize("host_setting", ["rest_host", "grpc_host"])
def test_authentication_off_beyond_loopback_is_refused(host_setting: str) -> None:
    settings = Settings(auth="off", **{host_setting: "0.0.0.0"})
    with pytest.raises(InsecureAuthSetting, match="0.0.0.0"):
        authenticator_from(settings)
    with pytest.raises(InsecureAuthSetting):
        create_app(empty_pipeline(), settings)
    with pytest.raises(ConfigurationError, match="AVN_AUTH|auth"):
        check_startup(load_settings({"auth": "off", host_setting: "0.0.0.0"}), {})


def test_the_container_command_refuses_to_start_open_or_without_keys(tmp_path: Path) -> None:
    store = write_tiny_store(tmp_path)
    exposed = GatewayProcess(store, tmp_path, AVN_AUTH="off", AVN_REST_HOST="0.0.0.0")
    result = subprocess.run([sys.executable, "-m", "gateway.service"], env=exposed.environment, capture_output=True)
    assert result.returncode == 2
    [line] = result.stderr.decode().strip().splitlines()
    assert line.startswith("gateway: AVN_AUTH (environment): authentication is off while a server binds 0.0.0.0")
    keyless = GatewayProcess(store, tmp_path)
    result = subprocess.run([sys.executable, "-m", "gateway.service"], env=keyless.environment, capture_output=True)
    assert result.returncode == 2 and b"AVN_API_KEYS_FILE" in result.stderr


# ---------------------------------------------------------------- TLS and mutual TLS


@pytest.fixture(scope="module")
def certificates(tmp_path_factory: pytest.TempPathFactory) -> Certificates:
    return Certificates(tmp_path_factory.mktemp("tls"))


def test_both_servers_speak_mutual_tls_from_the_settings(
    certificates: Certificates, api_key: ApiKey, tmp_path: Path
) -> None:
    """`python -m gateway.service` with the three TLS settings: REST and gRPC answer over TLS to a
    client with a certificate of the CA (and the API key), and refuse a client without one."""
    variables = {
        "AVN_API_KEYS_FILE": str(api_key.file),
        "AVN_TLS_CERT_FILE": str(certificates.server_cert),
        "AVN_TLS_KEY_FILE": str(certificates.server_key),
        "AVN_TLS_CLIENT_CA_FILE": str(certificates.ca_file),
    }
    trusted = certificates.client_context(with_certificate=True)
    gateway = GatewayProcess(write_tiny_store(tmp_path), tmp_path, **variables)

    def ready() -> bool:
        try:
            return http(f"{gateway.rest_url}/readyz", context=trusted)[0] == 200
        except OSError:
            return False

    with gateway.start(ready):
        assert gateway.rest_url.startswith("https://")
        status, _, body = http(f"{gateway.rest_url}/v1/whoami", headers=api_key.headers, context=trusted)
        assert status == 200 and json.loads(body)["caller"] == api_key.id
        assert http(f"{gateway.rest_url}/v1/whoami", context=trusted)[0] == 401  # TLS does not replace the key
        with pytest.raises(OSError):  # no client certificate: the handshake (or the first read) fails
            http(f"{gateway.rest_url}/healthz", context=certificates.client_context(with_certificate=False))
        with pytest.raises(OSError):  # plain text to the TLS port
            http(f"http://{LOOPBACK}:{gateway.rest_port}/healthz")

        with grpc.secure_channel(gateway.grpc_target, certificates.grpc_credentials(with_certificate=True)) as channel:
            stub = STUBS.services.DiagnosisStub(channel)
            models = stub.ListModels(pb.ListModelsRequest(), timeout=RPC_TIMEOUT_S, metadata=api_key.metadata)
            assert len(models.models) == 5
            health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
            assert health.status == health_pb2.HealthCheckResponse.SERVING
        with grpc.secure_channel(gateway.grpc_target, certificates.grpc_credentials(with_certificate=False)) as channel:
            with pytest.raises(grpc.RpcError) as raised:
                health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
            assert raised.value.code() == grpc.StatusCode.UNAVAILABLE
        assert "mutual TLS" in gateway.output()
        # The container's health check gets through: TLS, its own certificate as the client's.
        check = [sys.executable, "-m", "gateway.healthcheck"]
        result = subprocess.run(check, env=gateway.environment, capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, result.stderr
    assert gateway.wait() == 0


def test_tls_files_that_do_not_fit_stop_the_start(certificates: Certificates, api_key: ApiKey) -> None:
    def problem(**tls: Path) -> str:
        with pytest.raises(ConfigurationError) as raised:
            check_startup(load_settings({"api_keys_file": api_key.file, **tls}), {})
        return str(raised.value)

    assert "tls_key_file" in problem(tls_cert_file=certificates.server_cert)
    assert "tls_cert_file" in problem(tls_key_file=certificates.server_key)
    assert "do not load together" in problem(
        tls_cert_file=certificates.server_cert, tls_key_file=certificates.client_key
    )
    assert "needs TLS on" in problem(tls_client_ca_file=certificates.ca_file)
    loaded = load_settings(
        {
            "api_keys_file": api_key.file,
            "tls_cert_file": certificates.server_cert,
            "tls_key_file": certificates.server_key,
            "tls_client_ca_file": certificates.ca_file,
        }
    )
    assert check_startup(loaded, {}) == []


def test_avn_run_serves_with_a_fresh_local_key_unless_keys_are_configured(tmp_path: Path, monkeypatch) -> None:
    for name in ("AVN_API_KEYS_FILE", "AVN_AUTH", "AVN_CONFIG"):
        monkeypatch.delenv(name, raising=False)
    keys_file = tmp_path / "data" / "api_keys.json"
    gateway.cli.prepare_local_key(keys_file)
    first = KeysFile(keys_file).entries()["local"].hash
    assert Path(os.environ["AVN_API_KEYS_FILE"]) == keys_file.resolve()
    monkeypatch.delenv("AVN_API_KEYS_FILE")
    gateway.cli.prepare_local_key(keys_file)  # a new run: a new key, the old one gone
    assert set(KeysFile(keys_file).entries()) == {"local"} and KeysFile(keys_file).entries()["local"].hash != first
    configured = tmp_path / "mine.json"
    monkeypatch.setenv("AVN_API_KEYS_FILE", str(configured))
    gateway.cli.prepare_local_key(keys_file)
    assert not configured.exists() and os.environ["AVN_API_KEYS_FILE"] == str(configured)

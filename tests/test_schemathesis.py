"""Schemathesis over the gateway's own OpenAPI document (issue #11 deliverable 7: the fuzz half that
is not mutated files): ``python -m gateway.service`` with the embedded backend over a tiny store and
an API key, every operation of ``/openapi.json`` driven with a few generated requests (valid and
invalid bodies, parameters and headers), with the key. No answer may be a 5xx, every answer must
conform to the document (status code, content type, body schema), and the service must still be
ready afterwards. Bounded: a few examples per operation, about half a minute on two cores."""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path

import pytest
import schemathesis
from gateway_support import write_api_key, write_tiny_store
from hypothesis import HealthCheck, Phase, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from service_support import GatewayProcess

pytestmark = pytest.mark.slow

EXAMPLES_PER_OPERATION = 8
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]


def test_generated_requests_for_every_operation_get_no_5xx_and_conform_to_the_document(tmp_path: Path) -> None:
    api_key = write_api_key(tmp_path)
    store = write_tiny_store(tmp_path)
    with GatewayProcess(store, tmp_path, AVN_API_KEYS_FILE=str(api_key.file)) as gateway:
        gateway.start()
        request = urllib.request.Request(f"{gateway.rest_url}/openapi.json", headers=api_key.headers)
        with urllib.request.urlopen(request, timeout=10) as response:
            document = json.loads(response.read())
        schema = schemathesis.openapi.from_dict(document)
        schema.config.update(base_url=gateway.rest_url)
        operations = [result.ok() for result in schema.get_all_operations()]
        assert operations, "the OpenAPI document lists no operation"
        seen: dict[str, set[int]] = {}

        for operation in operations:

            @given(case=operation.as_strategy())
            @settings(
                max_examples=EXAMPLES_PER_OPERATION,
                deadline=None,
                database=None,
                derandomize=True,
                phases=[Phase.explicit, Phase.generate],
                suppress_health_check=list(HealthCheck),
            )
            def exercise(case: schemathesis.Case) -> None:
                response = case.call(headers=api_key.headers, timeout=60)
                seen.setdefault(case.operation.label, set()).add(response.status_code)
                case.validate_response(response, checks=CHECKS, headers=api_key.headers)

            exercise()

        assert set(seen) == {operation.label for operation in operations}
        assert all(code < 500 for codes in seen.values() for code in codes), seen
        assert gateway._plain_ready(), "the gateway is not ready after the generated requests"
        assert gateway.process.poll() is None

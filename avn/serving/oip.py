"""The Open Inference Protocol (KServe v2) at the handlers: a ModelInfer of BYTES tensors in, one out.

TorchServe's OIP gRPC endpoint hands a handler the request as KServe v2 JSON (``inputs``: name,
datatype, shape, data; BYTES elements base64-encoded) and sends back the v2 JSON the handler
returns. The project's convention on top of the protocol (:mod:`gateway.oip_backend`): the input
tensor ``request`` holds the usual wire body (``.npy`` crops or radiograph), ``cam_stage`` the
optional stage, ``describe`` asks for the model card; the answer is the usual JSON in the output
tensor ``response`` (``card`` for the model card).
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass
from typing import Any

from avn.serving.codec import WireFormatError

REQUEST, CAM_STAGE, DESCRIBE = "request", "cam_stage", "describe"
RESPONSE, CARD = "response", "card"


@dataclass(frozen=True)
class OipCall:
    """One ModelInfer: its id and its BYTES tensors, decoded."""

    id: str
    tensors: dict[str, bytes]

    @property
    def describes(self) -> bool:
        return DESCRIBE in self.tensors

    def as_wire_request(self) -> dict[str, Any]:
        """The request in the handlers' usual form (``data`` and an optional ``cam_stage``)."""
        if REQUEST not in self.tensors:
            raise WireFormatError(f"an Open Inference Protocol request needs the BYTES input {REQUEST!r}")
        request: dict[str, Any] = {"data": self.tensors[REQUEST]}
        if CAM_STAGE in self.tensors:
            request["cam_stage"] = self.tensors[CAM_STAGE]
        return request


def oip_call(body: Any) -> OipCall | None:
    """The ModelInfer a request body holds, or None when it is not an OIP body (a plain request)."""
    if isinstance(body, (bytes, bytearray)):
        if not body[:1] == b"{":
            return None
        try:
            body = json.loads(body)
        except ValueError:
            return None
    if not isinstance(body, dict) or not isinstance(body.get("inputs"), list):
        return None
    tensors = {}
    for tensor in body["inputs"]:
        if not isinstance(tensor, dict) or tensor.get("datatype") != "BYTES":
            raise WireFormatError("Open Inference Protocol inputs must be BYTES tensors")
        data = tensor.get("data") or [""]
        try:
            tensors[str(tensor.get("name"))] = base64.b64decode(data[0], validate=True)
        except (binascii.Error, TypeError, ValueError) as error:
            raise WireFormatError(f"input {tensor.get('name')!r} is not base64 BYTES") from error
    return OipCall(str(body.get("id") or ""), tensors)


def oip_answer(call: OipCall, model: str, version: str, name: str, text: str) -> str:
    """The v2 JSON answer holding ``text`` as the BYTES output ``name``."""
    answer = {
        "id": call.id,
        "model_name": model,
        "model_version": version,
        "outputs": [{"name": name, "datatype": "BYTES", "shape": [1], "data": [text]}],
    }
    return json.dumps(answer, separators=(",", ":"))

"""The Open Inference Protocol backend: each model at addresses of its own, over OIP gRPC.

Ops teams scale the five models separately (KServe InferenceServices, TorchServe in KServe mode,
Triton): the gateway then reaches each model through the Open Inference Protocol (KServe v2)
``ModelInfer`` at the addresses configured for it, several replicas each.

The payloads are those of the TorchServe backend (``services/README.md``), carried as OIP
``BYTES`` tensors: the input tensor ``request`` holds the radiograph or crops as ``.npy`` bytes
(and ``cam_stage`` the stage whose CAM staging should draw), the output tensor ``response`` the
same JSON answer, so the handlers and the answers' checks are shared. The input ``describe``
asks for the model card (output ``card``). Tensor contents travel in the typed ``bytes_contents``
field: TorchServe's OIP endpoint ignores ``raw_input_contents``.

Replicas: calls go round-robin over a model's addresses; a replica that fails with
``UNAVAILABLE`` is set aside for :data:`REPLICA_COOLDOWN_S` and the call — an inference, so
idempotent — is retried once on the next replica. When every replica is down the answer is 503
(``ModelUnavailable``). The service name is a setting because servers publish the same messages
under different proto packages (:mod:`gateway.oip_stubs`).
"""

from __future__ import annotations

import itertools
import json
import logging
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import grpc

from avn.pipeline.backend import MODELS, ModelInfo
from avn.pipeline.errors import DiagnosisError, Internal, InvalidImage, ModelUnavailable
from avn.pipeline.tracing import note_batch_size
from gateway.oip_stubs import KSERVE_SERVICE, load_messages, method_path
from gateway.torchserve_backend import CHANNEL_OPTIONS, Credentials, TorchServeBackend, _model_info

logger = logging.getLogger(__name__)

# A name that resolves to several addresses (a headless Kubernetes Service) is balanced per call too.
OIP_CHANNEL_OPTIONS = (*CHANNEL_OPTIONS, ("grpc.lb_policy_name", "round_robin"))
REPLICA_COOLDOWN_S = 5.0  # a replica that refused a connection is skipped this long
REQUEST_TENSOR, CAM_STAGE_TENSOR, RESPONSE_TENSOR = "request", "cam_stage", "response"
DESCRIBE_TENSOR, CARD_TENSOR = "describe", "card"


class EndpointError(ValueError):
    """An endpoint list that names no address, or a model without one."""


def parse_endpoints(text: str) -> tuple[str, ...]:
    """``host:port[,host:port…]`` as a tuple of targets."""
    targets = tuple(part.strip() for part in text.split(",") if part.strip())
    for target in targets:
        host, _, port = target.rpartition(":")
        if not host or not port.isdigit():
            raise EndpointError(f"{target!r} is not host:port")
    if not targets:
        raise EndpointError("no address given")
    return targets


@dataclass
class Replica:
    target: str
    channel: grpc.Channel
    down_until: float = 0.0


@dataclass
class ModelReplicas:
    """The replicas of one model, taken in turn; those set aside recently come last."""

    replicas: list[Replica]
    _turn: itertools.count = field(default_factory=itertools.count)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def order(self) -> list[Replica]:
        with self._lock:
            start = next(self._turn) % len(self.replicas)
        rotated = self.replicas[start:] + self.replicas[:start]
        now = time.monotonic()
        return sorted(rotated, key=lambda replica: replica.down_until > now)  # stable: up ones first, in turn


class OipBackend(TorchServeBackend):
    """:class:`avn.pipeline.backend.ModelBackend` over Open Inference Protocol servers, per model."""

    def __init__(
        self,
        endpoints: Mapping[str, Sequence[str]],
        *,
        service: str = KSERVE_SERVICE,
        token: str | None = None,
        timeout_s: float = 30.0,
        retry_after_s: float = 5.0,
        info_ttl_s: float = 2.0,
    ) -> None:
        missing = [name for name in MODELS if not endpoints.get(name)]
        if missing:
            raise EndpointError(f"no Open Inference Protocol address for model(s) {', '.join(missing)}")
        self.service = service
        self.timeout_s, self.retry_after_s, self.info_ttl_s = timeout_s, retry_after_s, info_ttl_s
        self.inference_target = self.management_target = ", ".join(
            f"{name}={','.join(endpoints[name])}" for name in MODELS
        )
        self._credentials = Credentials(token, None, None)  # a bearer token for the servers, if they ask one
        self._messages = load_messages()
        channels: dict[str, grpc.Channel] = {}  # one channel per address, shared by the models it serves

        def channel(target: str) -> grpc.Channel:
            if target not in channels:
                channels[target] = grpc.insecure_channel(target, options=OIP_CHANNEL_OPTIONS)
            return channels[target]

        self._replicas = {
            name: ModelReplicas([Replica(target, channel(target)) for target in endpoints[name]]) for name in MODELS
        }
        self._channels = list(channels.values())
        self._infer = {
            id(channel): channel.unary_unary(
                method_path(service, "ModelInfer"),
                request_serializer=self._messages.ModelInferRequest.SerializeToString,
                response_deserializer=self._messages.ModelInferResponse.FromString,
            )
            for channel in self._channels
        }
        self._infos: list[ModelInfo] | None = None
        self._infos_at = 0.0
        self._warned_at = -60.0

    @classmethod
    def from_settings(cls, settings: Any) -> OipBackend:
        return cls(
            settings.oip_endpoints(),
            service=settings.oip_service,
            token=settings.secret(settings.oip_token),
            timeout_s=settings.deadline_s,
        )

    async def ping(self) -> bool:
        try:
            await self.models()
        except DiagnosisError:
            return False
        return True

    async def close(self) -> None:
        for channel in self._channels:
            channel.close()

    # ------------------------------------------------------------ calls

    async def _predict(self, model: str, inputs: Mapping[str, bytes]) -> dict[str, Any]:
        tensors = {REQUEST_TENSOR: inputs["data"]}
        if "cam_stage" in inputs:
            tensors[CAM_STAGE_TENSOR] = inputs["cam_stage"]
        answer = self._parse(model, await self._infer_bytes(model, tensors, RESPONSE_TENSOR))
        self._notice_version(model, answer.get("version"))
        note_batch_size(answer.get("batch_size"))
        return answer

    async def _describe(self, name: str) -> ModelInfo:
        card_bytes = await self._infer_bytes(name, {DESCRIBE_TENSOR: b""}, CARD_TENSOR)
        try:
            card = json.loads(card_bytes)
        except ValueError as error:
            raise self._malformed(name, f"the card is not JSON: {card_bytes[:200]!r}") from error
        return _model_info(name, {"customizedMetadata": card})

    async def _infer_bytes(self, model: str, tensors: Mapping[str, bytes], output: str) -> bytes:
        """One ModelInfer of BYTES tensors on a replica of ``model`` (retried once elsewhere when it is
        unavailable); the bytes of the output tensor named ``output``."""
        request = self._messages.ModelInferRequest(model_name=model)
        for name, data in tensors.items():
            tensor = request.inputs.add(name=name, datatype="BYTES", shape=[1])
            tensor.contents.bytes_contents.append(data)
        replicas = self._replicas[model].order()
        last: DiagnosisError | None = None
        for replica in replicas[:2]:  # the first, and once more on the next replica
            try:
                response = await self._call(self._infer[id(replica.channel)], request, "inference", model)
            except ModelUnavailable as error:
                replica.down_until = time.monotonic() + REPLICA_COOLDOWN_S
                logger.warning("model %s: replica %s unavailable", model, replica.target)
                last = error
                continue
            return self._output_bytes(model, response, output)
        raise last or ModelUnavailable(f"no replica of model {model!r} answered", self.retry_after_s)

    def _output_bytes(self, model: str, response: Any, name: str) -> bytes:
        for index, tensor in enumerate(response.outputs):
            if tensor.name != name:
                continue
            if tensor.contents.bytes_contents:
                data = tensor.contents.bytes_contents[0]
            elif index < len(response.raw_output_contents):
                data = response.raw_output_contents[index]
            else:
                break
            # TorchServe's OIP endpoint writes a BYTES element as its JSON text (a quoted string)
            if data[:1] == b'"':
                try:
                    data = json.loads(data).encode("utf-8")
                except ValueError as error:
                    raise self._malformed(model, f"output {name!r} is a broken JSON string") from error
            return data
        raise self._malformed(model, f"no BYTES output {name!r} in the answer")

    def _translated(self, error: grpc.RpcError, model: str, timeout_s: float) -> DiagnosisError:
        code = error.code() if isinstance(error, grpc.Call) else grpc.StatusCode.UNKNOWN
        if code == grpc.StatusCode.INVALID_ARGUMENT and model != "detection":
            logger.error("model %s refused the gateway's request: %s", model, error.details())
            return Internal(f"model {model!r} rejected the gateway's request")
        if code == grpc.StatusCode.INVALID_ARGUMENT:
            return InvalidImage(f"the detector rejected the radiograph: {error.details()}")
        return super()._translated(error, model, timeout_s)

"""The Python client of flexnnd: inference over the Open Inference Protocol, and control.

from flexnn_client.client import Client
with Client() as c:                          # FLEXNN_ADDRESS, else the daemon's default socket
    outs = c.infer("mobilenet_v2", {"input": x})
    c.set_budget("128M")
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING

import grpc
from flexnn_api.datatypes import DATATYPE_OF, WIRE_DTYPES
from flexnn_api.paths import default_address
from flexnn_api.proto import inference_pb2, inference_pb2_grpc
from flexnn_api.proto.flexnn.control.v1 import control_pb2, control_pb2_grpc

if TYPE_CHECKING:
    import numpy as np  # imported where arrays are made: `flexnnctl status` needs no numpy

MAX_MESSAGE_BYTES = 256 * 2**20
DATATYPES = WIRE_DTYPES  # OIP datatype -> numpy dtype of its wire bytes
SENT_AS = {**DATATYPE_OF, "float64": "FP32"}  # the daemon's float inputs are float32


class ClientError(Exception):
    """A request the daemon refused or could not answer; `code` is the gRPC status code."""

    def __init__(self, message: str, code: grpc.StatusCode | None = None):
        super().__init__(message)
        self.code = code


class NotRunning(ClientError):
    """Nothing answers at the address: the daemon is not running (or the socket is not ours to use)."""


def target(address: str) -> str:
    """A gRPC target: unix:PATH for socket paths, host:port as is."""
    if address.startswith(("unix:", "unix-abstract:", "dns:", "ipv4:", "ipv6:")):
        return address
    if "/" in address or address.endswith(".sock"):
        return f"unix:{os.path.abspath(address)}"
    return address


class Client:
    def __init__(
        self,
        address: str | None = None,
        token: str | None = None,
        timeout: float = 60.0,
        root_certificates: bytes | None = None,
    ):
        self.address = address or default_address()
        self.timeout = timeout
        options = [
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
        ]
        if root_certificates is not None:
            creds = grpc.ssl_channel_credentials(root_certificates)
            self.channel = grpc.secure_channel(target(self.address), creds, options=options)
        else:
            self.channel = grpc.insecure_channel(target(self.address), options=options)
        self._metadata = (("authorization", f"Bearer {token}"),) if token else ()
        self.inference = inference_pb2_grpc.GRPCInferenceServiceStub(self.channel)
        self.control = control_pb2_grpc.ControlStub(self.channel)

    def _call(self, method, request, timeout: float | None = None):
        try:
            return method(request, timeout=timeout or self.timeout, metadata=self._metadata)
        except grpc.RpcError as e:
            raise _error(e, self.address) from None

    # ----- inference --------------------------------------------------------------------------

    def server_live(self) -> bool:
        return self._call(self.inference.ServerLive, inference_pb2.ServerLiveRequest()).live

    def server_ready(self) -> bool:
        return self._call(self.inference.ServerReady, inference_pb2.ServerReadyRequest()).ready

    def model_metadata(self, model: str):
        return self._call(self.inference.ModelMetadata, inference_pb2.ModelMetadataRequest(name=model))

    def infer(
        self, model: str, inputs: Mapping[str, np.ndarray] | np.ndarray, outputs: list[str] | None = None
    ) -> dict[str, np.ndarray]:
        """Outputs by name. A bare array goes to the model's only input. Each array is sent as its own
        datatype (uint8 as UINT8, int64 as INT64, bool as BOOL, ...); float64 is sent as FP32."""
        import numpy as np

        if isinstance(inputs, np.ndarray):
            meta = self.model_metadata(model)
            inputs = {meta.inputs[0].name: inputs}
        request = inference_pb2.ModelInferRequest(model_name=model)
        for name, array in inputs.items():
            array = np.ascontiguousarray(array)
            datatype = SENT_AS.get(array.dtype.name)
            if datatype is None:
                raise ClientError(f"input {name!r} has dtype {array.dtype}, which has no OIP datatype")
            array = array.astype(DATATYPES[datatype], copy=False)
            request.inputs.add(name=name, datatype=datatype, shape=list(array.shape))
            request.raw_input_contents.append(array.tobytes())
        for name in outputs or ():
            request.outputs.add(name=name)
        response = self._call(self.inference.ModelInfer, request)
        return decode_outputs(response)

    # ----- control ----------------------------------------------------------------------------

    def set_budget(self, budget: str | int) -> control_pb2.SetBudgetResponse:
        return self._call(self.control.SetBudget, control_pb2.SetBudgetRequest(budget=str(budget)))

    def status(self) -> control_pb2.Status:
        return self._call(self.control.GetStatus, control_pb2.GetStatusRequest()).status

    def models(self) -> list:
        return list(self._call(self.control.ListModels, control_pb2.ListModelsRequest()).models)

    def plans(self, model: str) -> list:
        return list(self._call(self.control.ListPlans, control_pb2.ListPlansRequest(model=model)).plans)

    def load_model(self, name: str, path: str = ""):
        return self._call(
            self.control.LoadModel, control_pb2.LoadModelRequest(name=name, path=path), timeout=600
        )

    def unload_model(self, name: str) -> None:
        self._call(self.control.UnloadModel, control_pb2.UnloadModelRequest(name=name))

    def watch(self) -> Iterator:
        """Events as they happen (budget changes, swaps, pressure, errors) until the daemon stops."""
        try:
            yield from self.control.WatchEvents(control_pb2.WatchEventsRequest(), metadata=self._metadata)
        except grpc.RpcError as e:
            if e.code() != grpc.StatusCode.CANCELLED:
                raise _error(e, self.address) from None

    def close(self) -> None:
        self.channel.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def decode_outputs(response) -> dict[str, np.ndarray]:
    """Outputs of a ModelInferResponse, from raw_output_contents (one blob per output, in order)."""
    import numpy as np

    result = {}
    for i, out in enumerate(response.outputs):
        dtype = DATATYPES.get(out.datatype)
        if dtype is None:
            raise ClientError(
                f"output {out.name!r} has datatype {out.datatype}, which this client does not read"
            )
        raw = response.raw_output_contents[i]
        result[out.name] = np.frombuffer(raw, dtype=dtype).reshape(tuple(out.shape)).copy()
    return result


def _error(e: grpc.RpcError, address: str) -> ClientError:
    code, details = e.code(), e.details() or ""
    if code == grpc.StatusCode.UNAVAILABLE and "permission denied" in details.lower():
        return ClientError(
            f"permission denied on {address}: the socket is for root and the daemon's group "
            f"(sudo usermod -aG flexnn $USER, then log in again) ({details})",
            code,
        )
    if code == grpc.StatusCode.UNAVAILABLE and any(
        s in details.lower() for s in ("connect", "no such file", "connection refused", "dns resolution")
    ):
        return NotRunning(f"flexnnd is not running at {address} ({details})", code)
    return ClientError(details or code.name, code)

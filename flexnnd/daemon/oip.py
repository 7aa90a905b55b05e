"""Codec between Open Inference Protocol v2 messages and numpy arrays, and the Triton extensions'
answers (model configuration, statistics, repository index) built from plain values (no server here).

Inputs come raw (`raw_input_contents`: little-endian, row-major, one blob per input in the order of
`inputs`) or typed (`InferInputTensor.contents`), never both in one request. A float32 input takes
FP32, FP16 (widened) and UINT8 (camera frames: float32 with the values 0..255 unscaled); a float16
input (a model exported in half precision) FP16; a double input FP64, FP32 and FP16 (widened); an
integer or bool input takes its own datatype (an int64 one INT32 too, widened). BYTES is refused. Outputs go back raw, one
`raw_output_contents` blob per output in order: the common clients (tritonclient) read only that.
Every malformed request raises InvalidRequest with the numbers, and is rejected before any buffer is
sized from what it declares.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING

import numpy as np
from flexnn_api.datatypes import DATATYPE_OF, WIRE_DTYPES
from flexnn_api.proto import inference_pb2 as pb

from flexnnd.errors import InvalidRequest

if TYPE_CHECKING:
    from flexnnd.daemon.model_stats import Duration, ModelStats
    from flexnnd.graph.package import TensorSpec

# numpy dtype name -> OIP datatype, for metadata and responses.
DATATYPES = DATATYPE_OF
# numpy dtype name -> Triton model configuration DataType.
CONFIG_DATATYPES = {
    "float32": pb.TYPE_FP32,
    "float16": pb.TYPE_FP16,
    "float64": pb.TYPE_FP64,
    "uint8": pb.TYPE_UINT8,
    "uint16": pb.TYPE_UINT16,
    "int8": pb.TYPE_INT8,
    "int16": pb.TYPE_INT16,
    "int32": pb.TYPE_INT32,
    "int64": pb.TYPE_INT64,
    "bool": pb.TYPE_BOOL,
}
# Model states as Triton's repository index names them.
INDEX_STATES = {"ready": "READY", "loading": "LOADING"}  # the others (no-fit, failed): UNAVAILABLE
# Each datatype's wire dtype and the typed field that carries it (None: raw only, as Triton has it).
_TYPED_FIELD = {
    "FP32": "fp32_contents",
    "FP16": None,
    "FP64": "fp64_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "BOOL": "bool_contents",
}
WIRE = {name: (np.dtype(WIRE_DTYPES[name]), field) for name, field in _TYPED_FIELD.items()}
# The datatypes a model input of each dtype accepts (converted to the model's dtype, never narrowed).
ACCEPTED = {
    "float32": ("FP32", "FP16", "UINT8"),
    "float16": ("FP16",),
    "float64": ("FP64", "FP32", "FP16"),
    "int64": ("INT64", "INT32"),
    "int32": ("INT32",),
    "int16": ("INT16",),
    "int8": ("INT8",),
    "uint8": ("UINT8",),
    "uint16": ("UINT16",),
    "bool": ("BOOL",),
}
INPUT_DATATYPES = sorted({d for accepted in ACCEPTED.values() for d in accepted})
_CONTENT_FIELDS = tuple(f.name for f in pb.InferTensorContents.DESCRIPTOR.fields)
# Elements checked for NaN/Inf at a time: bounds the temporary mask whatever the input's size.
_FINITE_CHUNK = 1 << 16


def decode_infer_request(
    request: pb.ModelInferRequest,
    inputs: Sequence[TensorSpec],
    max_bytes: int,
    *,
    allow_nonfinite: bool = False,
) -> dict[str, np.ndarray]:
    """The request's inputs as arrays of the model's shapes and dtypes, keyed by name.

    `inputs` are the model's input specs (static shapes); `max_bytes` bounds the decoded inputs
    together. The declared shape must equal the model's; a raw blob must hold exactly
    prod(shape) x itemsize bytes, a typed field exactly prod(shape) values. UINT8 data (raw bytes or
    `uint_contents` values 0..255) is converted to float32 0.0..255.0 unscaled: no /255, no mean or
    std, as the model was exported. FP32 raw inputs are returned as read-only views of the request's
    bytes (no copy). NaN and Inf are rejected unless `allow_nonfinite`: from a camera or a
    preprocessing step they are a client bug, and the network would turn them into NaN outputs
    that look like an answer; the check is chunked, so it allocates a bounded mask.
    """
    _check_names(request, inputs)
    raw = request.raw_input_contents
    typed = [t.name for t in request.inputs if t.HasField("contents")]
    if len(raw) and typed:
        raise InvalidRequest(
            f"request mixes {len(raw)} raw_input_contents blob(s) with typed contents on {_names(typed)}: "
            "use one or the other",
            expected=0,
            got=len(typed),
        )
    if len(raw) and len(raw) != len(request.inputs):
        raise InvalidRequest(
            f"request has {len(raw)} raw_input_contents blob(s) for {len(request.inputs)} input(s): "
            "one blob per input, in order",
            expected=len(request.inputs),
            got=len(raw),
        )
    specs = {s.name: s for s in inputs}
    for tensor in request.inputs:
        _check_header(tensor, specs[tensor.name])
    total = sum(math.prod(s.shape) * np.dtype(s.dtype).itemsize for s in inputs)
    if total > max_bytes:
        raise InvalidRequest(
            f"the inputs take {total:,} bytes, above the limit of {max_bytes:,} bytes",
            expected=max_bytes,
            got=total,
        )
    feeds = {}
    for i, tensor in enumerate(request.inputs):
        spec = specs[tensor.name]
        array = _decode_raw(tensor, raw[i], spec) if len(raw) else _decode_typed(tensor, spec)
        if not allow_nonfinite and tensor.datatype in ("FP32", "FP16", "FP64"):
            _check_finite(tensor.name, array)
        feeds[tensor.name] = array
    return feeds


def requested_outputs(request: pb.ModelInferRequest, outputs: Sequence[TensorSpec]) -> list[str]:
    """The output names to answer with: those requested, in request order, or all in model order."""
    known = [s.name for s in outputs]
    if not request.outputs:
        return known
    names = [o.name for o in request.outputs]
    _reject_duplicates(names, "output")
    unknown = [n for n in names if n not in known]
    if unknown:
        raise InvalidRequest(
            f"unknown output(s) {_names(unknown)}; the model's outputs are {_names(known)}",
            expected=known,
            got=unknown,
        )
    for o in request.outputs:
        if "classification" in o.parameters:
            raise InvalidRequest(
                f"output {o.name!r}: the classification extension is not supported; "
                "request the raw output and take the top classes on the client",
                tensor=o.name,
            )
    return names


def encode_infer_response(
    model_name: str,
    model_version: str,
    request_id: str,
    outputs: Mapping[str, np.ndarray],
    names: Iterable[str],
) -> pb.ModelInferResponse:
    """A response with the `names` outputs, one little-endian raw_output_contents blob each, in order."""
    response = pb.ModelInferResponse(model_name=model_name, model_version=model_version, id=request_id)
    for name in names:
        array = np.asarray(outputs[name])
        response.outputs.add(name=name, datatype=_datatype(array.dtype, name), shape=array.shape)
        response.raw_output_contents.append(array.astype(array.dtype.newbyteorder("<"), copy=False).tobytes())
    return response


def model_metadata(
    name: str,
    versions: Sequence[str],
    inputs: Sequence[TensorSpec],
    outputs: Sequence[TensorSpec],
    platform: str = "flexnn",
) -> pb.ModelMetadataResponse:
    """The ModelMetadata answer: the model's tensors with their OIP datatypes and static shapes."""

    def tensors(specs: Sequence[TensorSpec]) -> list[pb.ModelMetadataResponse.TensorMetadata]:
        return [
            pb.ModelMetadataResponse.TensorMetadata(
                name=s.name, datatype=_datatype(np.dtype(s.dtype), s.name), shape=s.shape
            )
            for s in specs
        ]

    return pb.ModelMetadataResponse(
        name=name, versions=versions, platform=platform, inputs=tensors(inputs), outputs=tensors(outputs)
    )


def model_config(
    name: str, inputs: Sequence[TensorSpec], outputs: Sequence[TensorSpec], platform: str = "flexnn"
) -> pb.ModelConfigResponse:
    """The ModelConfig answer: no batching (max_batch_size 0), so dims are the whole static shapes."""

    def datatype(spec: TensorSpec) -> int:
        try:
            return CONFIG_DATATYPES[np.dtype(spec.dtype).name]
        except KeyError:
            raise TypeError(
                f"tensor {spec.name!r} has dtype {spec.dtype}, which has no Triton DataType here"
            ) from None

    config = pb.ModelConfig(
        name=name,
        platform=platform,
        backend=platform,
        max_batch_size=0,
        input=[pb.ModelInput(name=s.name, data_type=datatype(s), dims=s.shape) for s in inputs],
        output=[pb.ModelOutput(name=s.name, data_type=datatype(s), dims=s.shape) for s in outputs],
    )
    return pb.ModelConfigResponse(config=config)


def model_statistics(name: str, version: str, stats: ModelStats, memory_bytes: int) -> pb.ModelStatistics:
    """One model's ModelStatistics entry, read under the stats' lock; `memory_bytes` is what it holds now."""

    def duration(d: Duration) -> pb.StatisticDuration:
        return pb.StatisticDuration(count=d.count, ns=d.ns)

    with stats.lock:
        return pb.ModelStatistics(
            name=name,
            version=version,
            last_inference=stats.last_inference_ms,
            inference_count=stats.inferences,
            execution_count=stats.inferences,
            inference_stats=pb.InferStatistics(
                success=duration(stats.success),
                fail=duration(stats.fail),
                queue=duration(stats.queue),
                compute_input=duration(stats.compute_input),
                compute_infer=duration(stats.compute_infer),
                compute_output=duration(stats.compute_output),
            ),
            memory_usage=[pb.MemoryUsage(type="CPU", id=0, byte_size=memory_bytes)],
        )


def index_entry(name: str, state: str | None, reason: str = "") -> pb.RepositoryIndexResponse.ModelIndex:
    """A repository index entry; state None: in the models directory but not loaded."""
    if state is None:
        return pb.RepositoryIndexResponse.ModelIndex(name=name, state="UNAVAILABLE", reason="unloaded")
    triton = INDEX_STATES.get(state, "UNAVAILABLE")
    return pb.RepositoryIndexResponse.ModelIndex(
        name=name,
        version="1",
        state=triton,
        reason="" if triton == "READY" else f"{state}: {reason}".rstrip(": "),
    )


def server_metadata(
    version: str, extensions: Sequence[str], name: str = "flexnnd"
) -> pb.ServerMetadataResponse:
    """The ServerMetadata answer."""
    return pb.ServerMetadataResponse(name=name, version=version, extensions=extensions)


def _check_names(request: pb.ModelInferRequest, inputs: Sequence[TensorSpec]) -> None:
    names = [t.name for t in request.inputs]
    _reject_duplicates(names, "input")
    expected = [s.name for s in inputs]
    unknown = [n for n in names if n not in expected]
    if unknown:
        raise InvalidRequest(
            f"unknown input(s) {_names(unknown)}; the model's inputs are {_names(expected)}",
            expected=expected,
            got=unknown,
        )
    missing = [n for n in expected if n not in names]
    if missing:
        raise InvalidRequest(
            f"missing input(s) {_names(missing)}; the model's inputs are {_names(expected)}",
            expected=expected,
            got=names,
        )


def _check_header(tensor: pb.ModelInferRequest.InferInputTensor, spec: TensorSpec) -> None:
    """Datatype and declared shape against the model, before anything is sized from them."""
    accepted = ACCEPTED.get(spec.dtype, ())
    if tensor.datatype not in accepted:
        why = " (BYTES tensors are not served)" if tensor.datatype == "BYTES" else ""
        raise InvalidRequest(
            f"input {tensor.name[:64]!r}: datatype {tensor.datatype[:32]!r} is not accepted for this "
            f"{spec.dtype} input{why}; send {' or '.join(accepted) or 'nothing: no datatype fits'}",
            expected=list(accepted),
            got=tensor.datatype,
            tensor=tensor.name,
        )
    shape = tuple(tensor.shape)
    if shape != tuple(spec.shape):
        raise InvalidRequest(
            f"input {tensor.name!r}: shape {_shape(shape)} does not match the model's {_shape(spec.shape)}",
            expected=tuple(spec.shape),
            got=shape if len(shape) <= 16 else f"{len(shape)} dimensions",
            tensor=tensor.name,
        )


def _decode_raw(tensor: pb.ModelInferRequest.InferInputTensor, blob: bytes, spec: TensorSpec) -> np.ndarray:
    wire, _ = WIRE[tensor.datatype]
    count = math.prod(spec.shape)
    expected = count * wire.itemsize
    if len(blob) != expected:
        raise InvalidRequest(
            f"input {tensor.name!r}: raw contents are {len(blob):,} bytes, expected {expected:,} "
            f"({_shape(spec.shape)} x {wire.itemsize} byte(s) of {tensor.datatype})",
            expected=expected,
            got=len(blob),
            tensor=tensor.name,
        )
    if tensor.datatype == "BOOL":
        octets = np.frombuffer(blob, dtype=np.uint8)
        if count and int(octets.max()) > 1:
            raise InvalidRequest(
                f"input {tensor.name!r}: BOOL byte {int(octets.max())} at flat index {int(octets.argmax())} "
                "is neither 0 nor 1",
                expected=1,
                got=int(octets.max()),
                tensor=tensor.name,
            )
    array = np.frombuffer(blob, dtype=wire).reshape(spec.shape)
    return array.astype(spec.dtype, copy=False)


def _decode_typed(tensor: pb.ModelInferRequest.InferInputTensor, spec: TensorSpec) -> np.ndarray:
    if not tensor.HasField("contents"):
        raise InvalidRequest(
            f"input {tensor.name!r} has no data: neither raw_input_contents nor contents "
            "(shared memory is not supported)",
            tensor=tensor.name,
        )
    wire, field = WIRE[tensor.datatype]
    if field is None:
        raise InvalidRequest(
            f"input {tensor.name!r}: {tensor.datatype} has no typed contents field; send it as "
            "raw_input_contents",
            tensor=tensor.name,
        )
    stray = [f for f in _CONTENT_FIELDS if f != field and len(getattr(tensor.contents, f))]
    if stray:
        raise InvalidRequest(
            f"input {tensor.name!r} is {tensor.datatype}, carried in {field}, but has {', '.join(stray)}",
            expected=field,
            got=stray,
            tensor=tensor.name,
        )
    values = getattr(tensor.contents, field)
    count = math.prod(spec.shape)
    if len(values) != count:
        raise InvalidRequest(
            f"input {tensor.name!r}: {field} holds {len(values):,} values, expected {count:,} "
            f"(shape {_shape(spec.shape)})",
            expected=count,
            got=len(values),
            tensor=tensor.name,
        )
    if field == "fp32_contents":
        return (
            np.fromiter(values, dtype=np.float32, count=count)
            .astype(spec.dtype, copy=False)
            .reshape(spec.shape)
        )
    if field == "fp64_contents":
        return np.fromiter(values, dtype=np.float64, count=count).reshape(spec.shape)
    if field == "bool_contents":
        return np.fromiter(values, dtype=np.bool_, count=count).reshape(spec.shape)
    carrier = {"uint_contents": np.uint32, "int_contents": np.int32, "int64_contents": np.int64}[field]
    array = np.fromiter(values, dtype=carrier, count=count)
    info = np.iinfo(wire)
    if count and (int(array.max()) > info.max or int(array.min()) < info.min):
        worst = int(array.argmax()) if int(array.max()) > info.max else int(array.argmin())
        raise InvalidRequest(
            f"input {tensor.name!r}: {tensor.datatype} value {int(array[worst])} at flat index {worst} "
            f"is outside [{info.min}, {info.max}]",
            expected=[int(info.min), int(info.max)],
            got=int(array[worst]),
            tensor=tensor.name,
        )
    return array.astype(spec.dtype).reshape(spec.shape)


def _check_finite(name: str, array: np.ndarray) -> None:
    flat = array.reshape(-1)
    bad, first = 0, -1
    for start in range(0, flat.size, _FINITE_CHUNK):
        chunk_bad = ~np.isfinite(flat[start : start + _FINITE_CHUNK])
        n = int(np.count_nonzero(chunk_bad))
        if n and first < 0:
            first = start + int(np.argmax(chunk_bad))
        bad += n
    if bad:
        raise InvalidRequest(
            f"input {name!r} holds {bad:,} NaN/Inf value(s) of {flat.size:,}, the first at flat index {first}",
            expected=0,
            got=bad,
            tensor=name,
        )


def _datatype(dtype: np.dtype, name: str) -> str:
    try:
        return DATATYPES[dtype.name]
    except KeyError:
        raise TypeError(f"tensor {name!r} has dtype {dtype}, which has no OIP datatype here") from None


def _reject_duplicates(names: list[str], what: str) -> None:
    counts = Counter(names)
    duplicates = sorted(n for n, k in counts.items() if k > 1)
    if duplicates:
        raise InvalidRequest(
            f"duplicate {what}(s) {_names(duplicates)} in the request", expected=1, got=max(counts.values())
        )


def _names(names: Sequence[str], limit: int = 8) -> str:
    """Names for a message, at most `limit` of them: requests are untrusted and may carry thousands."""
    shown = ", ".join(repr(n[:64]) for n in names[:limit])
    return f"[{shown}{f', ... {len(names) - limit} more' if len(names) > limit else ''}]"


def _shape(shape: Sequence[int], limit: int = 8) -> str:
    dims = ", ".join(str(d) for d in shape[:limit])
    return f"[{dims}{f', ... {len(shape) - limit} more' if len(shape) > limit else ''}]"

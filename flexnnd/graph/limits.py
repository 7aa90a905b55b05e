"""Bounds on what an ONNX file may declare, checked from its numbers before anything is allocated.

A model file is untrusted input: its dims, counts and offsets are claims. Every tensor's size is
computed with Python integers (no overflow) from its declared dims and checked against the limits
here before numpy sees it; external data is read only from regular files inside the model's folder.
"""

from __future__ import annotations

import math
import os
import stat
from pathlib import Path, PurePath, PurePosixPath, PureWindowsPath

import numpy as np
import onnx
from onnx import TensorProto, numpy_helper

from flexnnd.errors import ExternalDataError, ModelFormatError, ShapeError, TensorTooLarge
from flexnnd.graph.import_limits import DEFAULT_LIMITS, GiB, ImportLimits  # noqa: F401 - re-exported

# Bytes per element of the data types an importer may hold; others (STRING, complex, 4/8-bit) are refused.
ITEMSIZE = {
    TensorProto.FLOAT: 4,
    TensorProto.UINT8: 1,
    TensorProto.INT8: 1,
    TensorProto.UINT16: 2,
    TensorProto.INT16: 2,
    TensorProto.INT32: 4,
    TensorProto.INT64: 8,
    TensorProto.BOOL: 1,
    TensorProto.FLOAT16: 2,
    TensorProto.DOUBLE: 8,
    TensorProto.UINT32: 4,
    TensorProto.UINT64: 8,
    TensorProto.BFLOAT16: 2,
}
# Types whose raw bytes are a little-endian numpy array as they stand (bfloat16 goes through onnx).
_PLAIN_DTYPES = {
    TensorProto.FLOAT: np.dtype("<f4"),
    TensorProto.UINT8: np.dtype("u1"),
    TensorProto.INT8: np.dtype("i1"),
    TensorProto.UINT16: np.dtype("<u2"),
    TensorProto.INT16: np.dtype("<i2"),
    TensorProto.INT32: np.dtype("<i4"),
    TensorProto.INT64: np.dtype("<i8"),
    TensorProto.BOOL: np.dtype("?"),
    TensorProto.FLOAT16: np.dtype("<f2"),
    TensorProto.DOUBLE: np.dtype("<f8"),
    TensorProto.UINT32: np.dtype("<u4"),
    TensorProto.UINT64: np.dtype("<u8"),
}
# The typed field that carries each data type's values when raw_data is empty (ONNX spec).
_TYPED_FIELD = {
    TensorProto.FLOAT: "float_data",
    TensorProto.INT64: "int64_data",
    TensorProto.DOUBLE: "double_data",
    TensorProto.UINT32: "uint64_data",
    TensorProto.UINT64: "uint64_data",
}


def type_name(data_type: int) -> str:
    try:
        return TensorProto.DataType.Name(data_type)
    except ValueError:
        return f"data type {data_type}"


def checked_nbytes(what: str, shape, itemsize: int, limits: ImportLimits = DEFAULT_LIMITS) -> int:
    """prod(shape) * itemsize, after refusing negative dims, too many dims and sizes above the limit."""
    shape = tuple(int(d) for d in shape)
    if len(shape) > limits.max_rank:
        raise ShapeError(f"{what}: {len(shape)} dimensions, above the limit of {limits.max_rank}")
    negative = [(axis, d) for axis, d in enumerate(shape) if d < 0]
    if negative:
        axis, d = negative[0]
        raise ShapeError(f"{what}: dimension {axis} is {d}; dimensions cannot be negative")
    nbytes = math.prod(shape) * itemsize
    if nbytes > limits.max_tensor_bytes:
        raise TensorTooLarge(what, shape, nbytes, limits.max_tensor_bytes)
    return nbytes


def tensor_proto_nbytes(tensor: TensorProto, what: str, limits: ImportLimits = DEFAULT_LIMITS) -> int:
    """The declared size of a TensorProto, checked: known type, sane dims, and data that matches them."""
    nbytes = _declared_nbytes(tensor, what, limits)
    if tensor.data_location == TensorProto.EXTERNAL:
        return nbytes  # the external-data reader checks the length against this
    if tensor.HasField("raw_data"):
        _check_raw(tensor, len(tensor.raw_data), nbytes, what)
        return nbytes
    _check_typed(tensor, nbytes, what)
    return nbytes


def tensor_to_array(tensor: TensorProto, what: str, limits: ImportLimits = DEFAULT_LIMITS) -> np.ndarray:
    """The tensor as an array, after the checks of tensor_proto_nbytes; raw data is copied out once."""
    nbytes = _declared_nbytes(tensor, what, limits)
    if tensor.data_location == TensorProto.EXTERNAL:
        raise ModelFormatError(f"{what}: external data not loaded (read the model with load_onnx)")
    if tensor.HasField("raw_data") and tensor.data_type in _PLAIN_DTYPES:
        raw = tensor.raw_data  # each access copies the bytes: hundreds of MiB for a large weight
        _check_raw(tensor, len(raw), nbytes, what)
        return np.frombuffer(raw, dtype=_PLAIN_DTYPES[tensor.data_type]).reshape(tuple(tensor.dims))
    tensor_proto_nbytes(tensor, what, limits)
    return numpy_helper.to_array(tensor)


def _declared_nbytes(tensor: TensorProto, what: str, limits: ImportLimits) -> int:
    if tensor.data_type not in ITEMSIZE:
        raise ModelFormatError(f"{what}: {type_name(tensor.data_type)} tensors are not supported")
    return checked_nbytes(what, tensor.dims, ITEMSIZE[tensor.data_type], limits)


def _check_raw(tensor: TensorProto, held: int, nbytes: int, what: str) -> None:
    if held != nbytes:
        raise ModelFormatError(
            f"{what}: raw_data holds {held:,} bytes, but shape {list(tensor.dims)} "
            f"of {type_name(tensor.data_type)} needs {nbytes:,}"
        )


def _check_typed(tensor: TensorProto, nbytes: int, what: str) -> None:
    count = nbytes // ITEMSIZE[tensor.data_type]
    field = _TYPED_FIELD.get(tensor.data_type, "int32_data")
    held = len(getattr(tensor, field))
    if held != count:
        raise ModelFormatError(
            f"{what}: {field} holds {held:,} values, but shape {list(tensor.dims)} needs {count:,}"
        )


def load_external_data(
    tensor: TensorProto, base: Path, what: str, limits: ImportLimits = DEFAULT_LIMITS
) -> None:
    """Read a tensor's external data into raw_data: only from a regular file inside `base`, in bounds."""
    nbytes = tensor_proto_nbytes(tensor, what, limits)
    info = {e.key: e.value for e in tensor.external_data}
    location = info.get("location", "")
    if not location:
        raise ExternalDataError(f"{what}: external data without a location")
    if "\0" in location:
        raise ExternalDataError(f"{what}: external data location {location[:200]!r} holds a NUL byte")
    if PurePosixPath(location).is_absolute() or PureWindowsPath(location).drive or location.startswith("\\"):
        raise ExternalDataError(
            f"{what}: external data location {location[:200]!r} is absolute, outside the model's folder"
        )
    if ".." in PurePosixPath(location.replace("\\", "/")).parts:
        raise ExternalDataError(
            f"{what}: external data location {location[:200]!r} climbs out with '..', outside the model's folder"
        )
    base = base.resolve()
    target = (base / PurePath(location)).resolve()
    if not target.is_relative_to(base):
        raise ExternalDataError(
            f"{what}: external data {location[:200]!r} resolves to {target}, outside the model's folder {base} "
            "(a symbolic link?)"
        )
    try:
        offset = int(info.get("offset", "0"))
        length = int(info["length"]) if "length" in info else None
    except ValueError:
        raise ExternalDataError(
            f"{what}: external data offset {info.get('offset')!r} / length {info.get('length')!r} are not integers"
        ) from None
    try:
        # O_NONBLOCK: a FIFO planted in the folder must not hang the import before fstat refuses it.
        fd = os.open(target, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOFOLLOW)
    except OSError as e:
        raise ExternalDataError(
            f"{what}: cannot open external data {location[:200]!r}: {e.strerror}"
        ) from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise ExternalDataError(f"{what}: external data {location[:200]!r} is not a regular file")
        size = st.st_size
        if length is None:
            length = size - offset
        if offset < 0 or length < 0 or offset + length > size:
            raise ExternalDataError(
                f"{what}: external data {location[:200]!r} offset {offset:,} + length {length:,} "
                f"does not fit the file of {size:,} bytes"
            )
        if length != nbytes:
            raise ExternalDataError(
                f"{what}: external data {location[:200]!r} has length {length:,}, but shape {list(tensor.dims)} "
                f"of {type_name(tensor.data_type)} needs {nbytes:,} bytes"
            )
        chunks, done = [], 0
        while done < length:
            chunk = os.pread(fd, min(length - done, 1 << 24), offset + done)
            if not chunk:
                raise ExternalDataError(f"{what}: external data {location[:200]!r} shrank while being read")
            chunks.append(chunk)
            done += len(chunk)
    finally:
        os.close(fd)
    tensor.raw_data = b"".join(chunks)
    del tensor.external_data[:]
    tensor.data_location = TensorProto.DEFAULT


def all_tensor_protos(graph: onnx.GraphProto, depth: int = 0):
    """(where, tensor) for every TensorProto in a graph: initializers and node attributes, subgraphs included."""
    if depth > 64:
        raise ModelFormatError(f"graph {graph.name!r}: subgraphs nested more than 64 deep")
    for init in graph.initializer:
        yield f"initializer {init.name!r}", init
    for index, node in enumerate(graph.node):
        label = node.name or f"{node.op_type}_{index}"
        for attr in node.attribute:
            if attr.HasField("t"):
                yield f"node {label!r} attribute {attr.name!r}", attr.t
            for k, t in enumerate(attr.tensors):
                yield f"node {label!r} attribute {attr.name!r}[{k}]", t
            if attr.HasField("g"):
                yield from all_tensor_protos(attr.g, depth + 1)
            for g in attr.graphs:
                yield from all_tensor_protos(g, depth + 1)

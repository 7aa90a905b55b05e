"""An ONNX file's structure without its weights: opsets, inputs, outputs, nodes, and each
initializer's name, type and dimensions, read by walking the protobuf and seeking past the tensor
bytes. `flexnnctl check` prints it; the importer refuses unknown ops with it before it reads a
weight, so refusing a 500 MB model costs a few MB, not twice its size.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import BinaryIO

import onnx
from google.protobuf.message import DecodeError

from flexnnd.errors import ModelFormatError

# Field numbers of onnx.proto3 (wire type 2 unless noted).
MODEL_OPSET_IMPORT, MODEL_GRAPH, MODEL_IR_VERSION = 8, 7, 1  # ir_version is a varint
GRAPH_NODE, GRAPH_NAME, GRAPH_INITIALIZER, GRAPH_INPUT, GRAPH_OUTPUT = 1, 2, 5, 11, 12
GRAPH_SPARSE_INITIALIZER = 15
TENSOR_DIMS, TENSOR_DATA_TYPE, TENSOR_NAME = 1, 2, 8  # dims and data_type are varints (dims maybe packed)
SMALL_FIELD = 1 << 20  # an input, output or name bigger than this is not plausible: a broken file


@dataclass
class Initializer:
    name: str
    data_type: int
    dims: tuple[int, ...]


@dataclass
class Scan:
    ir_version: int = 0
    opsets: dict[str, int] = field(default_factory=dict)
    graph_name: str = ""
    nodes: list[onnx.NodeProto] = field(default_factory=list)
    inputs: list[onnx.ValueInfoProto] = field(default_factory=list)
    outputs: list[onnx.ValueInfoProto] = field(default_factory=list)
    initializers: dict[str, Initializer] = field(default_factory=dict)

    @property
    def opset(self) -> int | None:
        return self.opsets.get("", self.opsets.get("ai.onnx"))


class _Reader:
    def __init__(self, f: BinaryIO, label: str, end: int):
        self.f, self.label, self.end = f, label, end

    def broken(self, why: str) -> ModelFormatError:
        return ModelFormatError(f"{self.label}: not a readable ONNX model ({why} at byte {self.f.tell():,})")

    def varint(self) -> int:
        value, shift = 0, 0
        while True:
            b = self.f.read(1)
            if not b:
                raise self.broken("truncated varint")
            value |= (b[0] & 0x7F) << shift
            if not b[0] & 0x80:
                return value
            shift += 7
            if shift > 63:
                raise self.broken("varint longer than 10 bytes")

    def fields(self, end: int):
        """(field number, wire type, value): a varint's value, or a length-delimited field's length
        with the file positioned at its first byte (the caller reads or skips it)."""
        while self.f.tell() < end:
            key = self.varint()
            number, wire = key >> 3, key & 7
            if wire == 0:
                yield number, wire, self.varint()
            elif wire == 2:
                length = self.varint()
                if self.f.tell() + length > end:
                    raise self.broken(f"field {number} of {length:,} bytes runs past its message")
                yield number, wire, length
            elif wire == 1:
                self.skip(8)
            elif wire == 5:
                self.skip(4)
            else:
                raise self.broken(f"wire type {wire}")
        if self.f.tell() != end:
            raise self.broken("a field runs past its message")

    def skip(self, n: int) -> None:
        self.f.seek(n, os.SEEK_CUR)

    def read(self, n: int, what: str, limit: int = SMALL_FIELD) -> bytes:
        if n > limit:
            raise self.broken(f"a {what} of {n:,} bytes")
        data = self.f.read(n)
        if len(data) != n:
            raise self.broken(f"truncated {what}")
        return data


def scan_onnx(path: str | os.PathLike) -> Scan:
    """The structure of the ONNX file at `path`, its tensors' bytes skipped, not read."""
    label = str(path)
    size = os.path.getsize(path)
    scan = Scan()
    with open(path, "rb") as f:
        r = _Reader(f, label, size)
        graph_seen = False
        for number, wire, value in r.fields(size):
            if number == MODEL_IR_VERSION and wire == 0:
                scan.ir_version = value
            elif number == MODEL_OPSET_IMPORT and wire == 2:
                opset = _parse(onnx.OperatorSetIdProto, r.read(value, "opset import"), r)
                scan.opsets[opset.domain] = int(opset.version)
            elif number == MODEL_GRAPH and wire == 2:
                graph_seen = True
                _scan_graph(r, f.tell() + value, scan)
            elif wire == 2:
                r.skip(value)
        if not graph_seen or not scan.nodes:
            raise ModelFormatError(
                f"{label}: not an ONNX model (no graph nodes; truncated or another format?)"
            )
    return scan


def _scan_graph(r: _Reader, end: int, scan: Scan) -> None:
    for number, wire, value in r.fields(end):
        if wire != 2:
            continue
        if number == GRAPH_NODE:
            # A node may be big: a Constant's tensor, or an If/Loop holding whole subgraphs.
            scan.nodes.append(_parse(onnx.NodeProto, r.read(value, "node", limit=end), r))
        elif number == GRAPH_INPUT:
            scan.inputs.append(_parse(onnx.ValueInfoProto, r.read(value, "graph input"), r))
        elif number == GRAPH_OUTPUT:
            scan.outputs.append(_parse(onnx.ValueInfoProto, r.read(value, "graph output"), r))
        elif number == GRAPH_NAME:
            scan.graph_name = r.read(value, "graph name").decode(errors="replace")
        elif number == GRAPH_INITIALIZER:
            init = _scan_tensor(r, r.f.tell() + value)
            scan.initializers[init.name] = init
        else:  # sparse initializers, value_info, docs: not needed to judge the model
            r.skip(value)


def _scan_tensor(r: _Reader, end: int) -> Initializer:
    name, data_type, dims = "", 0, []
    for number, wire, value in r.fields(end):
        if number == TENSOR_NAME and wire == 2:
            name = r.read(value, "tensor name").decode(errors="replace")
        elif number == TENSOR_DATA_TYPE and wire == 0:
            data_type = value
        elif number == TENSOR_DIMS and wire == 0:
            dims.append(value)
        elif number == TENSOR_DIMS and wire == 2:  # packed dims
            stop = r.f.tell() + value
            while r.f.tell() < stop:
                dims.append(r.varint())
        elif wire == 2:
            r.skip(value)  # the data, never read here
    return Initializer(name, data_type, tuple(_signed(d) for d in dims))


def _signed(v: int) -> int:
    return v - (1 << 64) if v >= 1 << 63 else v


def _parse(cls, data: bytes, r: _Reader):
    message = cls()
    try:
        message.ParseFromString(data)
    except (DecodeError, RuntimeWarning, ValueError) as e:
        raise r.broken(f"{cls.__name__}: {e}") from None
    return message

"""The Open Inference Protocol's tensor datatypes as both sides name them: the daemon's codec and
the client read this one table (plain strings: importing it costs no numpy)."""

# OIP datatype -> the numpy dtype of its bytes on the wire (little-endian).
WIRE_DTYPES = {
    "FP32": "<f4",
    "FP16": "<f2",
    "FP64": "<f8",
    "UINT8": "u1",
    "UINT16": "<u2",
    "INT8": "i1",
    "INT16": "<i2",
    "INT32": "<i4",
    "INT64": "<i8",
    "BOOL": "?",
}
# numpy dtype name -> OIP datatype.
DATATYPE_OF = {
    "float32": "FP32",
    "float16": "FP16",
    "float64": "FP64",
    "uint8": "UINT8",
    "uint16": "UINT16",
    "int8": "INT8",
    "int16": "INT16",
    "int32": "INT32",
    "int64": "INT64",
    "bool": "BOOL",
}

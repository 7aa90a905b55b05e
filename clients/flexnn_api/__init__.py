"""What the daemon and its clients share, kept import-light: the generated gRPC code and byte sizes.

Nothing here imports numpy, numba, onnx or the engine, so a client on a camera stays small."""

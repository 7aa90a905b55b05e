"""What the daemon and its clients share, kept import-light: the generated gRPC code (`proto`), byte
sizes (`sizes`) and where the daemon's socket is by default (`paths`).

Nothing here imports numpy, numba, onnx or the engine, so a client on a camera stays small."""

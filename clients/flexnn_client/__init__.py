"""The flexnn client: flexnnctl and the Python client library. Neither imports the engine (numba, onnx)."""

# Exit codes of flexnnctl, distinct so scripts can tell failures apart.
EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_NOT_RUNNING = 3
EXIT_BUDGET_TOO_SMALL = 4
EXIT_INTERRUPTED = 130  # Ctrl-C: 128 + SIGINT, as shells report it

"""The flexnnd daemon: configuration, memory monitor, budget policy, gRPC services, lifecycle."""

"""The gRPC service: the server process, servicer, interceptors, health and the engine holder."""

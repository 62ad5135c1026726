"""What every package shares: numpy-only records, metrics and matrices (imports neither grpc nor onnxruntime)."""

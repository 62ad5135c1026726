"""Export: text encoder and Keras towers to ONNX with parity checks, manifest and Triton repository."""

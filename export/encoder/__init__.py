"""The text encoder to ONNX: variants (fp32, optimised, int8, fp16), optimum, parity, the encoder folder."""

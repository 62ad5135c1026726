"""The serving engine: ONNX Runtime towers, user inputs and histories, ranking, scoring and evaluation."""

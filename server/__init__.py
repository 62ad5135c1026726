"""Serving: ONNX Runtime inference behind the gRPC Recommender service (never imports TensorFlow or torch)."""

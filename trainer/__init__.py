"""Training: data loading, synthetic data, splits, text embeddings and the Keras two-tower models."""

"""Training: data loading, synthetic data, splits, text embeddings and the Keras two-tower models."""

import os as _os

# Set before any submodule imports TensorFlow or Keras: the Keras 3 backend, and no C++ start-up
# chatter (CPU feature notices, graph-attribute warnings) burying the progress bars. Users can
# still override both from the environment.
_os.environ.setdefault("KERAS_BACKEND", "tensorflow")
_os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

"""Keras towers -> ONNX with tf2onnx: user tower, item tower and the full model, with stable tensor names."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from towerserve.server.core.features import feature_matrix

_LOGGER = logging.getLogger(__name__)

USER_OUTPUT, ITEM_OUTPUT, SCORE_OUTPUT = "user_vector", "item_vector", "score"
# Catalogue passes build and feed this many entities' feature rows at a time: ~1.2 GB of item
# features at 1,000,000 items instead of the whole 4.6 GB matrix (one pass at the seed scale).
CHUNK = 262_144


def _rename_output(proto, new: str) -> None:
    """Gives the graph's single output a contract name (tf2onnx names it after the last Keras layer)."""
    old = proto.graph.output[0].name
    if old == new:
        return
    for node in proto.graph.node:
        for j, name in enumerate(node.output):
            if name == old:
                node.output[j] = new
        for j, name in enumerate(node.input):
            if name == old:
                node.input[j] = new
    proto.graph.output[0].name = new


def input_signature(model) -> tuple:
    """One TensorSpec per Keras input, with its own dtype and shape: float32 [batch, dim] features,
    int32 [batch] ids, int32 [batch, L] histories. The batch axis (and any axis Keras left open, such
    as L) stays dynamic; tf2onnx would otherwise trace the int inputs as float."""
    import tensorflow as tf

    def dims(shape) -> tuple:
        return (None,) + tuple(None if d is None else int(d) for d in shape[1:])

    return tuple(
        tf.TensorSpec(dims(t.shape), tf.as_dtype(str(t.dtype)), name=t.name.split(":")[0])
        for t in model.inputs
    )


def keras_to_onnx(model, path: Path, output_name: str, opset: int = 17) -> Path:
    """Converts a Keras functional model (inputs as :func:`input_signature` reads them)."""
    import tf2onnx

    # tf2onnx logs every optimizer pass at INFO; the parity lines are what the reader needs.
    logging.getLogger("tf2onnx").setLevel(logging.WARNING)

    spec = input_signature(model)
    proto, _ = tf2onnx.convert.from_keras(model, input_signature=spec, opset=opset)
    _rename_output(proto, output_name)
    path.write_bytes(proto.SerializeToString())
    return path


def export_model(model_path: Path, kind: str, out_dir: Path, opset: int = 17) -> dict[str, Path]:
    """Writes user_tower.onnx, item_tower.onnx and full.onnx for one trained model.

    Returns:
        {"user_tower": path, "item_tower": path, "full": path, "keras": the loaded model (for parity)}.
    """
    import keras

    from towerserve.server.core.manifest import ArtifactError
    from towerserve.trainer.models import serving_towers

    try:
        # Custom layers (the hybrid's) are registered when trainer.models is imported: before loading.
        model = keras.saving.load_model(model_path)
        user, item = serving_towers(model, kind)
    except (ValueError, KeyError, OSError) as err:
        raise ArtifactError(model_path, f"is not a loadable {kind!r} model ({err})") from err
    out_dir.mkdir(parents=True, exist_ok=True)
    return {
        "user_tower": keras_to_onnx(user, out_dir / "user_tower.onnx", USER_OUTPUT, opset),
        "item_tower": keras_to_onnx(item, out_dir / "item_tower.onnx", ITEM_OUTPUT, opset),
        "full": keras_to_onnx(model, out_dir / "full.onnx", SCORE_OUTPUT, opset),
        "keras": (model, user, item),
    }


def catalogue_vectors(sess, keras_tower, specs, tables, raw, n: int) -> tuple[np.ndarray, np.ndarray]:
    """(Keras, ONNX) item tower vectors for all ``n`` items, their feature rows built chunk by chunk."""
    ref, got = [], []
    for start in range(0, n, CHUNK):
        x = feature_matrix(specs, tables, raw, np.arange(start, min(n, start + CHUNK)))
        ref.append(np.asarray(keras_tower(x), dtype=np.float32))
        got.append(sess.run([ITEM_OUTPUT], {"item_features": x})[0])
    return np.concatenate(ref), np.concatenate(got)

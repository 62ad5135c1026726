"""trainer.text: pooling against hand computations, the TextEncoder on a real tiny BERT, its disk cache."""

import os

os.environ["USE_TF"] = "0"  # before transformers: see trainer/text.py
# No network here: without these, a hub name costs ~20 s of retries before failing.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import logging  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from towerserve.trainer.text import EncoderConfig, TextEncoder, model_fingerprint, pool  # noqa: E402

TEXTS = [
    "student",
    "a retired marine biologist who writes about coral reefs and tides",
    "chef",
    "software engineer working on distributed databases",
]


@pytest.fixture(scope="module")
def other_bert(tmp_path_factory, bert) -> Path:
    """The same architecture and tokenizer as ``bert``, different random weights (seed 1, not 0)."""
    from transformers import BertConfig, BertModel, BertTokenizerFast

    path = tmp_path_factory.mktemp("other_bert")
    tok = BertTokenizerFast.from_pretrained(str(bert))
    torch.manual_seed(1)
    cfg = BertConfig(
        vocab_size=tok.vocab_size,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=256,
    )
    BertModel(cfg).eval().save_pretrained(path)
    tok.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def reference(bert):
    """(tokenizer, model) loaded directly with transformers, independent of TextEncoder._load."""
    from transformers import AutoModel, AutoTokenizer

    return AutoTokenizer.from_pretrained(str(bert)), AutoModel.from_pretrained(str(bert)).eval()


def encoder(model: Path, pooling: str = "mean", cache_dir=None, batch_size: int = 64) -> TextEncoder:
    return TextEncoder(
        EncoderConfig(model=str(model), pooling=pooling, batch_size=batch_size, cache_dir=cache_dir)
    )


def manual(reference, text: str, pooling: str, pad_to: int | None = None) -> np.ndarray:
    """One text through the reference model, pooled by hand (no call to text.pool)."""
    tok, model = reference
    if pad_to is None:
        enc = tok([text], truncation=True, max_length=50, return_tensors="pt")
    else:
        enc = tok([text], padding="max_length", truncation=True, max_length=pad_to, return_tensors="pt")
    with torch.inference_mode():
        hidden = model(**enc).last_hidden_state[0].numpy().astype(np.float64)  # [t, 32]
    mask = enc["attention_mask"][0].numpy().astype(bool)
    return hidden[mask].mean(axis=0) if pooling == "mean" else hidden.mean(axis=0)


# --- pool ------------------------------------------------------------------------------------------


def test_pool_mean_and_notebook_against_hand_computation():
    hidden = torch.tensor([[[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]], [[7.0, 8.0], [9.0, 10.0], [11.0, 12.0]]])
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    # mean: row 0 = ([1,2] + [3,4]) / 2 = [2, 3]; row 1 = [7,8] / 1 = [7, 8]
    np.testing.assert_allclose(pool(hidden, mask, "mean").numpy(), [[2.0, 3.0], [7.0, 8.0]])
    # notebook: padding averaged in. row 0 = ([1,2] + [3,4] + [5,6]) / 3 = [3, 4];
    # row 1 = ([7,8] + [9,10] + [11,12]) / 3 = [27/3, 30/3] = [9, 10]
    np.testing.assert_allclose(pool(hidden, mask, "notebook").numpy(), [[3.0, 4.0], [9.0, 10.0]])


def test_pool_mean_of_all_padding_row_is_zero_not_nan():
    # masked sum 0 / clamp(count 0, 1e-9) = 0
    out = pool(torch.ones(1, 2, 3), torch.zeros(1, 2, dtype=torch.long), "mean").numpy()
    np.testing.assert_array_equal(out, np.zeros((1, 3)))


# --- TextEncoder on the tiny BERT --------------------------------------------------------------------


def test_encode_shape_dtype_and_dim(bert):
    enc = encoder(bert)
    out = enc.encode(TEXTS, 50, progress=False)
    assert out.shape == (4, 32)
    assert out.dtype == np.float32
    assert enc.dim == 32
    assert np.isfinite(out).all()


def test_duplicates_embedded_once_and_identical(bert, tmp_path):
    enc = encoder(bert, cache_dir=tmp_path)
    out = enc.encode(["chef", "student", "chef", "chef"], 50, progress=False)
    np.testing.assert_array_equal(out[0], out[2])
    np.testing.assert_array_equal(out[0], out[3])
    assert not np.allclose(out[0], out[1])
    # The cache holds what was embedded: 2 distinct texts, not 4 rows.
    (cache_file,) = tmp_path.glob("*.npz")
    with np.load(cache_file) as z:
        assert z["vecs"].shape == (2, 32)


def test_order_preserved_across_batches(bert):
    # batch_size 1 and 3 force length-sorted, multi-batch embedding; rows must come back in input order.
    texts = list(reversed(TEXTS)) + ["x"]
    alone = np.stack([encoder(bert).encode([t], 50, progress=False)[0] for t in texts])
    for bs in (1, 3):
        np.testing.assert_allclose(
            encoder(bert, batch_size=bs).encode(texts, 50, progress=False), alone, atol=1e-5
        )


def test_mean_pooling_matches_manual_torch(bert, reference):
    got = encoder(bert).encode([TEXTS[1]], 50, progress=False)[0]
    np.testing.assert_allclose(got, manual(reference, TEXTS[1], "mean"), atol=1e-6)


def test_mean_pooling_ignores_padding(bert):
    enc = encoder(bert)
    batch = enc.encode(TEXTS, 50, progress=False)  # one padded batch: lengths differ a lot
    for j, t in enumerate(TEXTS):
        np.testing.assert_allclose(batch[j], enc.encode([t], 50, progress=False)[0], atol=1e-5)


def test_max_length_truncates(bert, reference):
    tok, _ = reference
    long = TEXTS[1]
    assert len(tok(long)["input_ids"]) > 5
    enc = encoder(bert)
    five = enc.encode([long], 5, progress=False)[0]
    # truncated to [CLS] + 3 tokens + [SEP]; must differ from the full text's vector
    assert not np.allclose(five, enc.encode([long], 50, progress=False)[0], atol=1e-3)
    ids = tok([long], truncation=True, max_length=5, return_tensors="pt")
    with torch.inference_mode():
        want = reference[1](**ids).last_hidden_state[0].mean(0).numpy()
    np.testing.assert_allclose(five, want, atol=1e-6)


def test_notebook_pooling_pads_to_longest_text_in_the_call(bert, reference):
    tok, _ = reference
    enc = encoder(bert, pooling="notebook")
    lengths = [len(tok(t)["input_ids"]) for t in TEXTS]
    assert len(set(lengths)) > 1
    assert enc.padded_length(TEXTS, 50) == max(lengths)
    assert enc.padded_length(TEXTS, 4) == 4  # capped at max_length
    assert enc.padded_length(["chef"], 50) == len(tok("chef")["input_ids"])  # [CLS] chef [SEP] = 3

    batch = enc.encode(TEXTS, 50, progress=False)
    for j, t in enumerate(TEXTS):
        np.testing.assert_allclose(batch[j], manual(reference, t, "notebook", pad_to=max(lengths)), atol=1e-5)


def test_notebook_pooling_depends_on_pad_length(bert):
    enc = encoder(bert, pooling="notebook")
    short = "chef"
    alone = enc.encode([short], 50, progress=False)[0]
    in_batch = enc.encode([short, TEXTS[1]], 50, progress=False)[0]
    # the padding positions are averaged in, so the same text gets another vector in a longer call
    assert np.abs(alone - in_batch).max() > 1e-3
    # mean pooling does not have that property
    menc = encoder(bert)
    np.testing.assert_allclose(
        menc.encode([short], 50, progress=False)[0],
        menc.encode([short, TEXTS[1]], 50, progress=False)[0],
        atol=1e-5,
    )


def test_encode_empty_list(bert):
    out = encoder(bert).encode([], 50, progress=False)
    assert out.shape == (0, 32)


# --- cache ------------------------------------------------------------------------------------------


def test_cache_second_encoder_never_loads_the_model(bert, tmp_path):
    first = encoder(bert, cache_dir=tmp_path)
    want = first.encode(TEXTS, 50, progress=False)
    cache_file = tmp_path / f"{first.fingerprint}-mean-50-None.npz"
    assert cache_file.is_file()

    second = encoder(bert, cache_dir=tmp_path)
    got = second.encode(TEXTS[::-1], 50, progress=False)
    assert second._model is None  # lazy: every vector came from the cache file
    np.testing.assert_array_equal(got, want[::-1])

    # A text not in the cache does load the model (the assertion above can fail).
    second.encode(["a text never seen"], 50, progress=False)
    assert second._model is not None


def test_cache_is_per_max_length(bert, tmp_path):
    enc = encoder(bert, cache_dir=tmp_path)
    a = enc.encode([TEXTS[1]], 50, progress=False)
    b = enc.encode([TEXTS[1]], 5, progress=False)
    assert not np.allclose(a, b, atol=1e-3)
    assert len(list(tmp_path.glob("*.npz"))) == 2


def test_different_weights_give_different_vectors_without_cache(bert, other_bert):
    a = encoder(bert).encode(TEXTS, 50, progress=False)
    b = encoder(other_bert).encode(TEXTS, 50, progress=False)
    assert np.abs(a - b).max() > 1e-2


def test_cache_key_includes_model_weights(bert, other_bert, tmp_path):
    a = encoder(bert, cache_dir=tmp_path).encode(TEXTS, 50, progress=False)
    b_fresh = encoder(other_bert).encode(TEXTS, 50, progress=False)
    b_cached = encoder(other_bert, cache_dir=tmp_path).encode(TEXTS, 50, progress=False)
    assert model_fingerprint(str(bert)) != model_fingerprint(str(other_bert))
    np.testing.assert_allclose(b_cached, b_fresh, atol=1e-6)
    assert np.abs(b_cached - a).max() > 1e-2


def _write_cache(bert, tmp_path) -> tuple[np.ndarray, Path]:
    enc = encoder(bert, cache_dir=tmp_path)
    want = enc.encode(TEXTS, 50, progress=False)
    return want, tmp_path / f"{enc.fingerprint}-mean-50-None.npz"


def test_foreign_cache_file_is_ignored_with_a_warning(bert, tmp_path, caplog):
    want, path = _write_cache(bert, tmp_path)
    path.write_bytes(b"this is not an npz archive")
    with caplog.at_level(logging.WARNING, logger="towerserve.trainer.text"):
        got = encoder(bert, cache_dir=tmp_path).encode(TEXTS, 50, progress=False)
    np.testing.assert_allclose(got, want, atol=1e-6)
    assert any(
        "ignoring unreadable embedding cache" in r.getMessage() and path.name in r.getMessage()
        for r in caplog.records
    )
    with np.load(path) as z:  # rebuilt
        assert z["vecs"].shape == (4, 32)


_TORN = (
    "BUG: trainer/text.py _Cache.__init__ catches only (OSError, ValueError, KeyError); a torn or "
    "empty .npz raises zipfile.BadZipFile / EOFError, so a killed writer's leftover is fatal instead of "
    "rebuilt. Catch Exception (or add zipfile.BadZipFile, EOFError) there."
)


@pytest.mark.parametrize(
    "damage",
    [
        pytest.param(lambda b: b[: len(b) // 2], id="truncated"),
        pytest.param(lambda b: b"", id="empty"),
    ],
)
def test_torn_cache_file_is_ignored(bert, tmp_path, damage):
    want, path = _write_cache(bert, tmp_path)
    path.write_bytes(damage(path.read_bytes()))
    got = encoder(bert, cache_dir=tmp_path).encode(TEXTS, 50, progress=False)
    np.testing.assert_allclose(got, want, atol=1e-6)


# --- configuration and model names ------------------------------------------------------------------


def test_encoder_config_rejects_bad_pooling_and_batch_size():
    with pytest.raises(ValueError, match=r"pooling must be one of \('mean', 'notebook'\) \(got 'max'\)"):
        EncoderConfig(pooling="max")
    with pytest.raises(ValueError, match=r"batch_size must be >= 1 \(got 0\)"):
        EncoderConfig(batch_size=0)


@pytest.fixture
def offline(monkeypatch):
    """Offline mode even if transformers was imported before this module set the variables."""
    import transformers.utils.hub as hub

    monkeypatch.setattr(hub, "_is_offline_mode", True, raising=False)


def test_nonexistent_model_path_error_names_it(offline):
    with pytest.raises((ValueError, OSError)) as err:
        TextEncoder(EncoderConfig(model="/nonexistent/path", cache_dir=None)).encode(
            ["x"], 50, progress=False
        )
    assert "/nonexistent/path" in str(err.value)


@pytest.mark.parametrize("name", ["/nonexistent/path", "no-such-model-xyz"])
def test_unknown_model_gives_the_clear_error(offline, name):
    with pytest.raises(ValueError, match=f"cannot load text encoder '{name}'.*local path"):
        TextEncoder(EncoderConfig(model=name, cache_dir=None)).encode(["x"], 50, progress=False)


def test_bert_base_uncased_by_name(offline):
    from transformers import AutoConfig

    try:
        AutoConfig.from_pretrained("bert-base-uncased", local_files_only=True)
    except OSError:
        pytest.skip("bert-base-uncased not in the local Hugging Face cache")
    enc = TextEncoder(EncoderConfig(model="bert-base-uncased", cache_dir=None))
    out = enc.encode(["hello world"], 50, progress=False)
    assert out.shape == (1, 768)
    assert out.dtype == np.float32

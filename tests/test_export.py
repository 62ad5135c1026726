"""export: the serving folder and its manifest, ONNX parity, tamper refusal, atomic export, Triton repository."""

import os

os.environ["USE_TF"] = "0"
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import hashlib  # noqa: E402
import json  # noqa: E402
import re  # noqa: E402
import shutil  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import onnxruntime as ort  # noqa: E402
import pandas as pd  # noqa: E402
import pipeline  # noqa: E402
import pytest  # noqa: E402

from towerserve.export.bundle import ExportConfig, main_export  # noqa: E402
from towerserve.export.encoder.variants import EncoderExportConfig  # noqa: E402
from towerserve.export.parity import ParityError, ParityReport  # noqa: E402
from towerserve.server.core.features import feature_matrix, load_tables  # noqa: E402
from towerserve.server.core.manifest import ArtifactError, ServingManifest  # noqa: E402
from towerserve.server.core.numerics import sigmoid  # noqa: E402
from towerserve.server.engine.encoder import OnnxTextEncoder  # noqa: E402
from towerserve.server.engine.info import model_info  # noqa: E402

FIELDS = ("category", "description", "features", "personality", "profession")
# Failure-path exports need no optimised/int8/fp16 encoder variants: they only have to get far enough to break.
LEAN = EncoderExportConfig(optimize=False, int8=False, fp16=False)


@pytest.fixture(scope="module")
def manifest(serving) -> ServingManifest:
    return ServingManifest.load(serving)


@pytest.fixture(scope="module")
def train_manifest(built) -> dict:
    return json.loads((built["artifacts"] / "manifest.json").read_text())


def _session(path: Path):
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def _artifacts_copy(built, dst: Path) -> Path:
    shutil.copytree(built["artifacts"], dst, ignore=shutil.ignore_patterns("serving"))
    return dst


def _catalog_features(serving: Path, specs, side: str) -> np.ndarray:
    """Model inputs rebuilt from the serving folder's own catalogue with server.features."""
    tables = load_tables(serving / "catalog" / "embeddings.npz")
    key, column = ("item_id", "price") if side == "item" else ("user_id", "age")
    raw = pd.read_csv(serving / "catalog" / f"{side}s.csv", dtype={key: str})[column].to_numpy(np.float64)
    return feature_matrix(specs, tables, {column: raw})


def _model_splits(manifest: ServingManifest):
    return [(kind, split, entry) for kind, m in manifest.models.items() for split, entry in m.splits.items()]


# --- the serving manifest ----------------------------------------------------------------------------


def test_manifest_lists_every_file_with_its_sha256(serving, manifest):
    on_disk = {p.relative_to(serving).as_posix() for p in serving.rglob("*") if p.is_file()} - {
        "manifest.json"
    }
    assert set(manifest.files) == on_disk
    for rel, entry in manifest.files.items():
        data = (serving / rel).read_bytes()
        assert entry.sha256 == hashlib.sha256(data).hexdigest(), rel
        assert entry.bytes == len(data), rel
    assert manifest.format == "towerserve-serving" and manifest.format_version == 1


def test_manifest_file_is_the_typed_manifest_exactly(serving, manifest):
    """Every key export wrote is a field of the typed manifest: reading and writing loses nothing."""
    assert manifest.to_json() == json.loads((serving / "manifest.json").read_text())


def test_manifest_records_catalogue_and_splits(serving, manifest, train_manifest):
    assert manifest.default_model == train_manifest["default_model"]
    assert (manifest.catalog.users, manifest.catalog.items) == (pipeline.N_USERS, pipeline.N_ITEMS)
    assert {name: split.file for name, split in manifest.splits.items()} == {
        "cold": "splits/cold.npz",
        "holdout": "splits/holdout.npz",
    }
    assert manifest.training.metrics["holdout"]["seed"]["ndcg@10"] > 0
    assert manifest.models["seed"].user_independent is True
    assert manifest.models["two_tower"].user_independent is False


def test_encoder_variants_and_parity(serving, manifest):
    enc = manifest.encoder
    variants = enc.variants
    for name in ("fp32", "optimized"):
        assert variants[name].accepted is True
        assert (serving / variants[name].file).is_file()
    assert variants["fp16"].precision == "fp16" and (serving / variants["fp16"].file).is_file()
    parity = manifest.parity
    by_name = {c.name: c for c in parity}
    for name in ("fp32", "optimized"):
        for field in FIELDS:
            (label,) = [n for n in by_name if n.startswith(f"encoder {name} / {field} ")]
            assert by_name[label].ok and by_name[label].required
    assert all(c.ok for c in parity if c.required)
    int8_lines = [c for c in parity if c.name.startswith("encoder int8 /")]
    assert int8_lines and not any(c.required for c in int8_lines)
    # int8 is offered exactly when every one of its cosine checks passed
    accepted = all(c.ok for c in int8_lines)
    assert ("int8" in variants) == accepted == (serving / "encoder" / "model.int8.onnx").is_file()
    assert enc.default_variant == ("int8" if accepted else "fp32")
    assert (serving / enc.tokenizer_file).is_file() and enc.tokenizer_file == "encoder/tokenizer.json"


def test_onnx_encoder_reproduces_training_vectors(serving, manifest):
    enc = manifest.encoder
    tables = load_tables(serving / "catalog" / "embeddings.npz")
    runner = OnnxTextEncoder(serving / enc.variants["fp32"].file, serving / enc.tokenizer_file, enc.pooling)
    for field in ("profession", "description"):
        got = runner.encode(list(tables[field].texts), enc.max_lengths[field])
        np.testing.assert_allclose(got, tables[field].vectors, atol=1e-4)


def test_tower_graphs_have_the_manifest_dims(serving, manifest, train_manifest):
    for kind, split, entry in _model_splits(manifest):
        trained = train_manifest["models"][kind]["splits"][split]
        want_out = (
            2 if kind == "seed" else train_manifest["recipe"]["embedding_dim"] + 1
        )  # seed: [s_u, 1]; 8 + bias
        for info, in_dim in (
            (entry.user_tower, trained["user_dim"]),
            (entry.item_tower, trained["item_dim"]),
        ):
            assert (info.input_dim, info.output_dim) == (in_dim, want_out)
            sess = _session(serving / info.file)
            (i,), (o,) = sess.get_inputs(), sess.get_outputs()
            assert (i.name, i.shape[1], i.type) == (info.input, info.input_dim, "tensor(float)")
            assert (o.name, o.shape[1]) == (info.output, info.output_dim)
            assert not isinstance(i.shape[0], int)  # dynamic batch axis
        full = _session(serving / entry.full.file)
        assert [(x.name, x.shape[1]) for x in full.get_inputs()] == [
            ("user_features", trained["user_dim"]),
            ("item_features", trained["item_dim"]),
        ]
        assert [o.name for o in full.get_outputs()] == [entry.full.output] == ["score"]


def test_item_vectors_equal_item_tower_on_catalogue_features(serving, manifest):
    for kind, split, entry in _model_splits(manifest):
        I = _catalog_features(serving, entry.features.item, "item")
        assert I.shape == (pipeline.N_ITEMS, entry.item_tower.input_dim)
        got = _session(serving / entry.item_tower.file).run(None, {"item_features": I})[0]
        saved = np.load(serving / entry.item_vectors_file)
        assert saved.dtype == np.float32 and saved.shape == (pipeline.N_ITEMS, entry.item_tower.output_dim)
        np.testing.assert_allclose(saved, got, atol=1e-5, err_msg=f"{kind}/{split}")


def test_full_graph_equals_sigmoid_of_tower_dot(serving, manifest):
    rng = np.random.default_rng(0)
    for kind, split, entry in _model_splits(manifest):
        U = _catalog_features(serving, entry.features.user, "user")
        I = _catalog_features(serving, entry.features.item, "item")
        users = rng.integers(0, len(U), 30)
        items = rng.integers(0, len(I), 30)
        u = _session(serving / entry.user_tower.file).run(None, {"user_features": U[users]})[0]
        v = np.load(serving / entry.item_vectors_file)[items]
        score = (
            _session(serving / entry.full.file)
            .run(None, {"user_features": U[users], "item_features": I[items]})[0]
            .reshape(-1)
        )
        np.testing.assert_allclose(score, sigmoid((u * v).sum(1)), atol=1e-5, err_msg=f"{kind}/{split}")


# --- ParityReport ------------------------------------------------------------------------------------


def test_parity_report_prints_one_line_per_check_and_raises_once_for_all(capsys):
    r = ParityReport()
    r.allclose("same", [[1.0, 2.0]], [[1.0, 2.00001]])  # |diff| 1e-5 <= 1e-4
    r.allclose("off", [[0.0, 0.0]], [[0.0, 1.0]])  # |diff| 1 > 1e-4
    r.cosine("turned", [[1.0, 0.0]], [[0.0, 1.0]], min_mean=0.99)  # cosine 0 < 0.99
    r.cosine("optional", [[1.0, 0.0]], [[-1.0, 0.0]], min_mean=0.99, required=False)  # cosine -1
    r.allclose("shape", np.zeros((2, 3)), np.zeros((2, 4)), required=False)
    lines = capsys.readouterr().out.splitlines()
    assert [ln.split(" ")[0] for ln in lines] == ["✓", "✗", "✗", "✗", "✗"]
    assert lines[1] == "✗ off: max |diff| 1.00e+00 (atol 1e-04, 1 rows)"
    assert lines[3].startswith("✗ (variant dropped) optional: cosine mean -1.00000")
    assert "shape (2, 4) != reference (2, 3)" in lines[4]

    with pytest.raises(ParityError) as err:
        r.raise_if_failed()
    msg = str(err.value)
    assert msg.startswith("2 parity check(s) failed:")
    assert "off:" in msg and "turned:" in msg
    assert "same:" not in msg and "optional" not in msg and "shape" not in msg
    assert isinstance(err.value, AssertionError)
    assert [c.ok for c in r.checks] == [True, False, False, False, False]


def test_parity_report_optional_failures_do_not_raise(capsys):
    r = ParityReport(echo=False)
    r.allclose("fine", [[1.0]], [[1.0]])
    r.cosine("int8", [[1.0, 0.0]], [[0.0, 1.0]], min_mean=0.99, required=False)
    r.raise_if_failed()
    assert capsys.readouterr().out == ""


# --- tampering ---------------------------------------------------------------------------------------


def test_flipped_byte_is_refused_by_name(serving, tmp_path):
    copy = pipeline.copy_serving(serving, tmp_path / "s")
    target = copy / "encoder" / "model.onnx"
    data = bytearray(target.read_bytes())
    data[len(data) // 2] ^= 0x01
    target.write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match="sha256 does not match") as err:
        ServingManifest.load(copy)
    assert "model.onnx" in str(err.value)
    assert err.value.path == str(target)
    ServingManifest.load(copy, verify_hashes=False)  # same size: only the hash can tell


def test_missing_file_is_refused_by_name(serving, tmp_path):
    copy = pipeline.copy_serving(serving, tmp_path / "s")
    (copy / "models" / "two_tower" / "holdout" / "item_vectors.npy").unlink()
    with pytest.raises(ArtifactError, match="listed in manifest.json but missing") as err:
        ServingManifest.load(copy, verify_hashes=False)
    assert "item_vectors.npy" in str(err.value)


def _drop_input_dim(m: dict) -> None:
    del m["models"]["two_tower"]["splits"]["holdout"]["user_tower"]["input_dim"]


def _stringify_dim(m: dict) -> None:
    m["encoder"]["dim"] = str(m["encoder"]["dim"])


@pytest.mark.parametrize(
    "edit, culprit, words",
    [
        pytest.param(
            lambda m: m.update(format="towerserve-train"),
            "manifest.json",
            ("format", "'towerserve-train'", "'towerserve-serving'"),
            id="format",
        ),
        pytest.param(
            lambda m: m.update(format_version=2), "manifest.json", ("format_version", "2", "1"), id="version"
        ),
        pytest.param(
            _drop_input_dim,
            "manifest.json",
            ("models.two_tower.splits.holdout.user_tower.input_dim", "missing"),
            id="missing-field",
        ),
        pytest.param(_stringify_dim, "manifest.json", ("encoder.dim", "int", "str"), id="mistyped-field"),
        pytest.param(
            lambda m: m["files"].pop("encoder/tokenizer.json"),
            "encoder/tokenizer.json",
            ("no sha256 entry",),
            id="unlisted-file",
        ),
    ],
)
def test_edited_manifest_is_refused_naming_file_and_field(serving, tmp_path, edit, culprit, words):
    copy = pipeline.copy_serving(serving, tmp_path / "s")
    m = json.loads((copy / "manifest.json").read_text())
    edit(m)
    (copy / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(ArtifactError) as err:
        ServingManifest.load(copy)
    assert err.value.path == str(copy / culprit)
    assert str(err.value).startswith(f"{copy / culprit}: ")
    for word in words:
        assert word in err.value.problem, (word, err.value.problem)


# --- atomic export -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def broken(built, tmp_path_factory) -> Path:
    """Training artifacts whose two_tower/holdout model.keras is really a seed model."""
    art = _artifacts_copy(built, tmp_path_factory.mktemp("broken") / "artifacts")
    shutil.copy2(art / "models/seed/holdout/model.keras", art / "models/two_tower/holdout/model.keras")
    return art


def _leftovers(target: Path) -> list[Path]:
    return sorted(target.parent.glob(f".{target.name}.*"))


@pytest.mark.parametrize("existing", [False, True], ids=["fresh-target", "existing-target"])
def test_failed_export_leaves_no_half_written_folder(broken, tmp_path, existing):
    out, triton = tmp_path / "serving2", tmp_path / "triton"
    if existing:
        out.mkdir()
        (out / "manifest.json").write_text("previous export")
    with pytest.raises(ValueError):  # whatever breaks: a seed model has no user_tower layer to export
        main_export(broken, ExportConfig(out=out, triton=triton, parity_users=50, encoder=LEAN))
    if existing:
        assert sorted(p.name for p in out.iterdir()) == ["manifest.json"]
        assert (out / "manifest.json").read_text() == "previous export"
    else:
        assert not out.exists()
    assert not triton.exists()
    assert _leftovers(out) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == (["serving2"] if existing else [])


def test_failed_parity_keeps_the_previous_export(built, tmp_path, capsys):
    art = _artifacts_copy(built, tmp_path / "artifacts")
    out = tmp_path / "serving3"
    out.mkdir()
    (out / "manifest.json").write_text("previous export")
    # atol -1: every allclose line fails (|diff| >= 0 > -1); export must list them all, then replace nothing
    with pytest.raises(ParityError) as err:
        main_export(art, ExportConfig(out=out, parity_users=50, encoder=LEAN, atol=-1.0))
    # fp32 encoder: 5 fields; 2 models x 2 splits x (user, item, full, sigmoid-dot) = 16; 5 + 16 = 21
    assert str(err.value).startswith("21 parity check(s) failed:")
    assert len(re.findall(r"^✗ ", str(err.value), flags=re.M)) == 21
    assert sorted(p.name for p in out.iterdir()) == ["manifest.json"]
    assert (out / "manifest.json").read_text() == "previous export"
    assert _leftovers(out) == []
    printed = capsys.readouterr().out
    assert printed.count("✗ ") == 21


def test_notebook_pooling_exports_with_training_pad_lengths(built, tmp_path):
    from towerserve.trainer.text import EncoderConfig
    from towerserve.trainer.train import FitConfig, TrainConfig, train

    art = tmp_path / "artifacts"
    train(
        built["data"],
        art,
        TrainConfig(
            models=("two_tower",),
            fit=FitConfig(epochs=1, batch_size=256, patience=0),
            cold=False,
            progress=False,
            encoder=EncoderConfig(model=str(built["bert"]), pooling="notebook", cache_dir=None),
            embedding_dim=8,
            hidden=(16,),
        ),
    )
    m = main_export(art, ExportConfig(parity_users=50, encoder=LEAN))
    enc = m.encoder
    assert enc.pooling == "notebook"
    trained = json.loads((art / "manifest.json").read_text())["encoder"]["padded_lengths"]
    assert enc.padded_lengths == trained and set(trained) == set(FIELDS)
    assert all(c.ok for c in m.parity)
    serving = art / "serving"
    tables = load_tables(serving / "catalog" / "embeddings.npz")
    runner = OnnxTextEncoder(serving / enc.variants["fp32"].file, serving / enc.tokenizer_file, "notebook")
    for field in ("profession", "description"):
        texts = list(tables[field].texts)
        got = runner.encode(texts, enc.max_lengths[field], trained[field])
        np.testing.assert_allclose(got, tables[field].vectors, atol=1e-4)
    # without the training pad length, short texts batched together pad less and get other vectors
    texts = list(tables["description"].texts)
    unpadded = OnnxTextEncoder(
        serving / enc.variants["fp32"].file, serving / enc.tokenizer_file, "notebook", batch_size=1
    ).encode(texts, enc.max_lengths["description"])
    assert np.abs(unpadded - tables["description"].vectors).max() > 1e-3


# --- Triton ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def triton(built, tmp_path_factory) -> tuple[Path, ServingManifest]:
    root = tmp_path_factory.mktemp("triton")
    art = _artifacts_copy(built, root / "artifacts")
    m = main_export(art, ExportConfig(out=root / "serving", triton=root / "triton", parity_users=50))
    return root, m


def _pbtxt_tensors(text: str, block: str) -> list[tuple[str, str, str]]:
    body = re.search(rf"^{block} \[\n(.*?)\n\]", text, flags=re.M | re.S).group(1)
    return re.findall(r'name: "([^"]+)" data_type: (\w+) dims: \[ ([^\]]*) \]', body)


def test_triton_repository(triton):
    root, m = triton
    repo = root / "triton"
    default = m.models[m.default_model].splits["holdout"]
    u_in, u_out = default.user_tower.input_dim, default.user_tower.output_dim
    i_in, i_out = default.item_tower.input_dim, default.item_tower.output_dim
    tokens = [(n, "TYPE_INT64", "-1") for n in ("input_ids", "attention_mask", "token_type_ids")]
    want = {
        "text_encoder": (tokens, [("embedding", "TYPE_FP32", "32")], root / "serving/encoder/model.onnx"),
        "user_tower": (
            [("user_features", "TYPE_FP32", str(u_in))],
            [("user_vector", "TYPE_FP32", str(u_out))],
            root / "serving" / default.user_tower.file,
        ),
        "item_tower": (
            [("item_features", "TYPE_FP32", str(i_in))],
            [("item_vector", "TYPE_FP32", str(i_out))],
            root / "serving" / default.item_tower.file,
        ),
    }
    assert set(want) <= {p.name for p in repo.iterdir() if p.is_dir()}
    assert (repo / "README.md").is_file()
    for name, (inputs, outputs, source) in want.items():
        text = (repo / name / "config.pbtxt").read_text()
        assert f'name: "{name}"\n' in text
        assert 'platform: "onnxruntime_onnx"' in text
        assert _pbtxt_tensors(text, "input") == inputs, name
        assert _pbtxt_tensors(text, "output") == outputs, name
        graph = repo / name / "1" / "model.onnx"
        assert graph.read_bytes() == source.read_bytes()
        sess = _session(graph)
        assert [i.name for i in sess.get_inputs()] == [t[0] for t in inputs]


def test_triton_fp16_encoder(triton):
    root, m = triton
    # The default export writes the fp16 variant and the tiny encoder passes its gate: no skip.
    assert m.encoder.variants["fp16"].precision == "fp16"
    text = (root / "triton" / "text_encoder_fp16" / "config.pbtxt").read_text()
    assert 'platform: "onnxruntime_onnx"' in text
    # keep_io_types: fp16 inside, fp32 embedding out
    assert _pbtxt_tensors(text, "output") == [("embedding", "TYPE_FP32", "32")]


def test_triton_export_is_a_valid_serving_folder_too(triton):
    root, m = triton
    assert ServingManifest.load(root / "serving") == m


def test_an_index_below_the_recall_floor_is_refused_and_nothing_replaced(built, tmp_path):
    from towerserve.export.index import RecallError

    out = tmp_path / "serving_ivf"
    out.mkdir()
    (out / "manifest.json").write_text("previous export")
    # recall@10 can never exceed 1: a floor above it refuses any approximate index.
    with pytest.raises(RecallError, match="ivf reaches recall@10 .* below the floor 1.01"):
        main_export(
            built["artifacts"],
            ExportConfig(out=out, parity_users=50, encoder=LEAN, index="ivf", min_recall=1.01),
        )
    assert (out / "manifest.json").read_text() == "previous export"
    assert _leftovers(out) == []


def test_an_hnsw_bundle_serves_the_exact_answers_and_takes_upserts(built, tmp_path):
    from towerserve.server.core.types import NewItemData
    from towerserve.server.engine.engine import Engine, EngineConfig

    out = tmp_path / "serving_hnsw"
    m = main_export(built["artifacts"], ExportConfig(out=out, parity_users=50, encoder=LEAN, index="hnsw"))
    entry = m.models["two_tower"].splits["holdout"].index
    assert entry.kind == "hnsw" and entry.recall_at_10 >= 0.95 and entry.queries > 0
    assert entry.file in m.files  # covered by the manifest's sha256
    assert m.models["seed"].splits["holdout"].index is None  # user-independent: one precomputed order
    ann = Engine(out, EngineConfig(model="two_tower", candidates=0))
    exact = Engine(out, EngineConfig(model="two_tower", candidates=0, exact=True))
    info = model_info(ann)
    assert (info.index_kind, info.index_recall_at_10) == ("hnsw", entry.recall_at_10)
    assert model_info(exact).index_kind == "exact"
    # A catalogue this small is searched whole by HNSW: the answers must be the exact ones.
    for user in ann.user_ids[:40]:
        for kw in ({}, {"categories": ann.catalog.categories[:1]}, {"exclude_seen": False}):
            assert ann.recommend(user, 5, **kw)[1:] == exact.recommend(user, 5, **kw)[1:], (user, kw)
    user = ann.user_ids[0]
    cat = ann.catalog
    j = ann.recommend(user, 1)[1][0]
    twin = NewItemData("twin", cat.description[j], cat.features[j], float(cat.price[j]), cat.category[j])
    gone = NewItemData(cat.ids[j], "a different item now", "nothing alike", 1.0, cat.category[j])
    for e in (ann, exact):
        assert e.upsert_items([twin, gone]) == (1, 1, len(cat) + 1)
    got, want = ann.recommend(user, 5), exact.recommend(user, 5)
    assert got[1:] == want[1:]
    assert ann.catalog.row("twin") == got[1][0]
    # Deleting the twin and the user's next favourite: both gone from the index path as from exact.
    doomed = ["twin", ann.catalog.ids[got[1][1]]]
    for e in (ann, exact):
        assert e.delete_items(doomed) == (2, len(cat) - 1)
    got, want = ann.recommend(user, 5), exact.recommend(user, 5)
    assert got[1:] == want[1:]
    assert not {ann.catalog.row(x) for x in doomed} - {None}
    assert not {got[0].ids[r] for r in got[1]} & set(doomed)


def test_encoder_parity_checks_every_text_up_to_the_cap_then_a_seeded_sample():
    from towerserve.export.parity import PARITY_TEXTS, parity_rows

    assert parity_rows(995).tolist() == list(range(995))  # seed scale: every description
    big = parity_rows(400_000)
    assert len(big) == PARITY_TEXTS == len(set(big.tolist()))
    assert (np.diff(big) > 0).all() and big.max() < 400_000
    assert np.array_equal(big, parity_rows(400_000))  # the same texts on every export

"""server.manifest: the typed serving manifest round-trips, and names the field and file of any bad entry."""

import copy
import json
from pathlib import Path

import pytest

from towerserve.server.catalog import snapshot
from towerserve.server.core.features import FieldSpec
from towerserve.server.core.manifest import (
    MANIFEST_FILE,
    ArtifactError,
    EncoderVariant,
    FileEntry,
    ServingManifest,
    file_entries,
)

FILES = [
    "encoder/tokenizer.json",
    "encoder/model.onnx",
    "encoder/model.int8.onnx",
    "models/seed/holdout/user_tower.onnx",
    "models/seed/holdout/item_tower.onnx",
    "models/seed/holdout/full.onnx",
    "models/seed/holdout/item_vectors.npy",
    "catalog/users.csv",
    "catalog/items.csv",
    "catalog/embeddings.npz",
    "splits/holdout.npz",
]


def _tower(side: str, dims: tuple[int, int]) -> dict:
    return {
        "file": f"models/seed/holdout/{side}_tower.onnx",
        "input": f"{side}_features",
        "output": f"{side}_vector",
        "input_dim": dims[0],
        "output_dim": dims[1],
    }


def _valid() -> dict:
    """A manifest laid out as export writes one (keys and types copied from a real export)."""
    text = {"dim": 4, "hi": 1.0, "kind": "text", "lo": 0.0, "max_length": 50, "name": "profession"}
    age = {"dim": 1, "hi": 75.0, "kind": "minmax", "lo": 18.0, "max_length": 0, "name": "age"}
    price = {"dim": 1, "hi": 1737.0, "kind": "minmax", "lo": 9.0, "max_length": 0, "name": "price"}
    return {
        "format": "towerserve-serving",
        "format_version": 1,
        "created_utc": "2026-11-30T10:13:23Z",
        "default_model": "seed",
        "encoder": {
            "model": "sentence-transformers/all-MiniLM-L6-v2",
            "name": "all-MiniLM-L6-v2",
            "fingerprint": "192474e8644be492",
            "pooling": "mean",
            "dim": 4,
            "max_lengths": {"profession": 50},
            "padded_lengths": {},
            "inputs": ["input_ids", "attention_mask", "token_type_ids"],
            "output": "embedding",
            "tokenizer_file": "encoder/tokenizer.json",
            "opset": 17,
            "variants": {
                "fp32": {
                    "file": "encoder/model.onnx",
                    "precision": "fp32",
                    "device": "cpu",
                    "accepted": True,
                    "cosine_mean": 1.0,
                },
                # the exporting machine could not run it: no accepted/cosine_mean keys at all
                "int8": {
                    "file": "encoder/model.int8.onnx",
                    "precision": "int8",
                    "device": "cpu",
                    "parity": "skipped: the exporting machine cannot run it",
                },
            },
            "default_variant": "int8",
            "gpu_variant": "fp32",
            "build_seconds": 3.9,
        },
        "models": {
            "seed": {
                "kind": "seed",
                "model_version": "seed-ac99a79536",
                "user_independent": True,
                "splits": {
                    "holdout": {
                        "user_tower": _tower("user", (5, 2)),
                        "item_tower": _tower("item", (1, 2)),
                        "full": {
                            "file": "models/seed/holdout/full.onnx",
                            "inputs": ["user_features", "item_features"],
                            "output": "score",
                        },
                        "item_vectors_file": "models/seed/holdout/item_vectors.npy",
                        "features": {"user": [text, age], "item": [price]},
                    }
                },
            }
        },
        "catalog": {
            "users_file": "catalog/users.csv",
            "items_file": "catalog/items.csv",
            "embeddings_file": "catalog/embeddings.npz",
            "users": 240,
            "items": 48,
        },
        "splits": {"holdout": {"file": "splits/holdout.npz"}},
        "training": {
            "data": {"users": 240, "items": 48, "root": "/data"},
            "recipe": {"hidden": [16], "fit": {"epochs": 3}},
            "metrics": {"holdout": {"seed": {"ndcg@10": 0.23, "epochs": 3}}},
        },
        "parity": [
            {"name": "encoder fp32 / profession", "ok": True, "detail": "max |diff| 2e-07", "required": True}
        ],
        "export_seconds": 23.2,
        "versions": {"onnxruntime": "1.32.0"},
        "files": {rel: {"sha256": "0" * 64, "bytes": 1} for rel in FILES},
    }


def _get(d, path: tuple):
    for key in path:
        d = d[key]
    return d


def _leaf_paths(node, path=()):
    """Every (key path) in a JSON tree: objects by key, lists by index."""
    if isinstance(node, dict):
        for k, v in node.items():
            yield path + (k,)
            yield from _leaf_paths(v, path + (k,))
    elif isinstance(node, list):
        for j, v in enumerate(node):
            yield from _leaf_paths(v, path + (j,))


def _dotted(path: tuple) -> str:
    out = ""
    for key in path:
        out += f"[{key}]" if isinstance(key, int) else (f".{key}" if out else key)
    return out


# --- round trip ------------------------------------------------------------------------------------


def test_round_trip_is_exact():
    data = _valid()
    m = ServingManifest.from_json(data)
    assert m.to_json() == data  # every key written back, none added (absent optional keys stay absent)
    assert ServingManifest.from_json(json.loads(json.dumps(m.to_json()))) == m


def test_fields_are_typed_records():
    m = ServingManifest.from_json(_valid())
    split = m.models["seed"].splits["holdout"]
    assert split.user_tower.input_dim == 5 and split.full.inputs == ("user_features", "item_features")
    assert split.features.user[1] == FieldSpec("age", "minmax", 1, 0, 18.0, 75.0)
    assert m.encoder.variants["int8"] == EncoderVariant(
        "encoder/model.int8.onnx", "int8", "cpu", parity="skipped: the exporting machine cannot run it"
    )
    assert m.encoder.variants["int8"].accepted is None  # not checked at export: the server checks it
    assert m.files["catalog/users.csv"] == FileEntry("0" * 64, 1)
    assert m.training.metrics["holdout"]["seed"]["epochs"] == 3
    with pytest.raises(AttributeError):
        m.default_model = "two_tower"  # frozen


def test_optional_fields_may_be_absent():
    data = _valid()
    for key in ("created_utc", "export_seconds", "parity", "training", "versions"):
        del data[key]
    for key in ("name", "padded_lengths"):
        del data["encoder"][key]
    del data["encoder"]["variants"]["fp32"]["accepted"]
    m = ServingManifest.from_json(data)
    assert (m.training, m.versions, m.parity, m.encoder.name, m.encoder.padded_lengths) == (
        None,
        {},
        (),
        None,
        {},
    )
    assert m.encoder.variants["fp32"].accepted is None


def test_a_skipped_metrics_row_is_null():
    # Data without generator truth (every real data set) has no oracle row: the bundle must still load.
    data = _valid()
    data["training"]["metrics"]["holdout"]["oracle"] = None
    m = ServingManifest.from_json(data)
    assert m.training.metrics["holdout"]["oracle"] is None
    assert m.to_json()["training"]["metrics"]["holdout"]["oracle"] is None


def test_unknown_keys_are_ignored():
    data = _valid()
    data["from_a_newer_exporter"] = {"anything": 1}
    data["models"]["seed"]["splits"]["holdout"]["user_tower"]["note"] = "extra"
    assert ServingManifest.from_json(data) == ServingManifest.from_json(_valid())


def test_ints_are_accepted_where_floats_are_expected():
    data = _valid()
    data["models"]["seed"]["splits"]["holdout"]["features"]["user"][1]["lo"] = 18  # JSON writes 18.0 as 18
    assert ServingManifest.from_json(data).models["seed"].splits["holdout"].features.user[1].lo == 18


# --- missing and mistyped fields -------------------------------------------------------------------

# Keys a manifest may leave out (the record has a default); every other key is required.
OPTIONAL = {
    "created_utc",
    "export_seconds",
    "parity",
    "training",
    "versions",
    "encoder.name",
    "encoder.padded_lengths",
    "encoder.variants.fp32.accepted",
    "encoder.variants.fp32.cosine_mean",
    "encoder.variants.int8.parity",
    "parity[0].required",
}
# Objects whose keys are data (file names, model names), not fields of a record.
FREE = {
    ("files",),
    ("splits",),
    ("models",),
    ("models", "seed", "splits"),
    ("encoder", "variants"),
    ("encoder", "max_lengths"),
    ("versions",),
}


def _required_paths() -> list[tuple]:
    out = []
    for path in _leaf_paths(_valid()):
        if path[:-1] in FREE or path[0] == "training" and len(path) > 1 or isinstance(path[-1], int):
            continue
        if _dotted(path) in OPTIONAL:
            continue
        if "features" in path and path[-1] in ("max_length", "lo", "hi"):  # FieldSpec's defaults
            continue
        out.append(path)
    return out


@pytest.mark.parametrize("path", _required_paths(), ids=_dotted)
def test_every_missing_required_field_is_named(path):
    data = _valid()
    del _get(data, path[:-1])[path[-1]]
    with pytest.raises(ArtifactError) as err:
        ServingManifest.from_json(data, "/art/serving/manifest.json")
    assert err.value.path == "/art/serving/manifest.json"
    if path in (("format",), ("format_version",)):  # checked first, as before, with the expected value
        assert err.value.problem.startswith(f"{path[0]} ")
    else:
        assert err.value.problem.startswith(f"{_dotted(path)} is missing (expected ")


def test_the_required_list_reaches_deep_fields():
    """Guards the test above against enumerating nothing: the issue's example is among them."""
    dotted = {_dotted(p) for p in _required_paths()}
    assert "models.seed.splits.holdout.user_tower.input_dim" in dotted
    assert "models.seed.splits.holdout.features.user[0].dim" in dotted
    assert "encoder.variants.int8.device" in dotted and "files.catalog/users.csv.sha256" in dotted
    assert len(dotted) > 50


@pytest.mark.parametrize(
    "path, value, expected, got",
    [
        (("models", "seed", "splits", "holdout", "user_tower", "input_dim"), "5", "int", "str '5'"),
        (("models", "seed", "splits", "holdout", "user_tower", "input_dim"), 5.0, "int", "float 5.0"),
        (("models", "seed", "splits", "holdout", "user_tower", "input_dim"), True, "int", "bool True"),
        (("models", "seed", "user_independent"), 1, "bool", "int 1"),
        (("models", "seed", "model_version"), None, "str", "NoneType None"),
        (("encoder", "max_lengths", "profession"), "50", "int", "str '50'"),
        (("encoder", "inputs"), "input_ids", "list[str]", "str 'input_ids'"),
        (("encoder", "inputs", 1), 7, "str", "int 7"),
        (("encoder", "variants"), ["fp32"], "dict[str, EncoderVariant]", "list ['fp32']"),
        (
            ("models", "seed", "splits", "holdout", "full"),
            "full.onnx",
            "an object (FullGraph)",
            "str 'full.onnx'",
        ),
        (("models", "seed", "splits", "holdout", "features", "user", 1, "hi"), "75", "float", "str '75'"),
        (("files", "catalog/users.csv", "bytes"), "1", "int", "str '1'"),
        (("training",), [], "an object (Training) or null", "list []"),
        (("export_seconds",), "23 s", "float or null", "str '23 s'"),
    ],
    ids=lambda v: _dotted(v) if isinstance(v, tuple) else None,
)
def test_a_mistyped_field_is_named_with_what_was_expected_and_what_arrived(path, value, expected, got):
    data = _valid()
    _get(data, path[:-1])[path[-1]] = value
    with pytest.raises(ArtifactError) as err:
        ServingManifest.from_json(data, "/art/serving/manifest.json")
    assert err.value.path == "/art/serving/manifest.json"
    assert err.value.problem == f"{_dotted(path)} must be {expected} (got {got})"


def test_a_manifest_that_is_not_an_object_is_refused():
    with pytest.raises(ArtifactError, match=r"^m\.json: must be a JSON object \(got list\)$"):
        ServingManifest.from_json([1, 2], "m.json")


def _rename(d: dict, key: str, new: str) -> None:
    d[new] = d.pop(key)


def _holdout(d: dict) -> dict:
    return d["models"]["seed"]["splits"]["holdout"]


@pytest.mark.parametrize(
    "edit, words",
    [
        pytest.param(
            lambda d: d.update(default_model="two_tower"),
            ("default_model 'two_tower'", "['seed']"),
            id="model",
        ),
        pytest.param(lambda d: d["models"].clear(), ("models is empty",), id="no-models"),
        pytest.param(
            lambda d: d["encoder"].update(gpu_variant="fp16"),
            ("encoder.gpu_variant 'fp16'", "['fp32', 'int8']"),
            id="gpu-variant",
        ),
        pytest.param(
            lambda d: (
                _rename(d["encoder"]["variants"], "fp32", "fp32x") or d["encoder"].update(gpu_variant="int8")
            ),
            ("encoder.variants ['fp32x', 'int8']", "'fp32'", "fall-back"),
            id="no-fp32",
        ),
        pytest.param(
            lambda d: _rename(d["splits"], "holdout", "cold"),
            ("splits ['cold']", "'holdout'"),
            id="no-holdout",
        ),
        pytest.param(
            lambda d: _rename(d["models"]["seed"]["splits"], "holdout", "cold"),
            ("models.seed.splits ['cold']", "'holdout'"),
            id="model-without-holdout",
        ),
        pytest.param(
            lambda d: d["models"]["seed"]["splits"].update(cold=_holdout(d)),
            ("models.seed.splits.cold has no recorded split", "['holdout']"),
            id="split-not-recorded",
        ),
        pytest.param(
            lambda d: d["encoder"]["max_lengths"].pop("profession"),
            ("models.seed.splits.holdout.features.user[0]", "'profession'", "encoder.max_lengths []"),
            id="text-field-without-length",
        ),
    ],
)
def test_names_that_point_nowhere_are_refused(edit, words):
    data = _valid()
    edit(data)
    with pytest.raises(ArtifactError) as err:
        ServingManifest.from_json(data, "manifest.json")
    for word in words:
        assert word in err.value.problem


# --- reading a folder ------------------------------------------------------------------------------


def _folder(root: Path, data: dict | None = None) -> Path:
    """A serving folder with one small file per manifest entry and real hashes."""
    for j, rel in enumerate(FILES):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(bytes([j]) * (j + 1))
    data = data or _valid()
    data["files"] = {rel: e.to_json() for rel, e in file_entries(root).items()}
    (root / MANIFEST_FILE).write_text(json.dumps(data))
    return root


def test_load_reads_a_folder_and_lists_every_referenced_file(tmp_path):
    root = _folder(tmp_path)
    m = ServingManifest.load(root)
    assert sorted(m.referenced_files()) == sorted(FILES)
    assert m.files["encoder/model.onnx"].bytes == FILES.index("encoder/model.onnx") + 1


def test_load_names_the_manifest_file_and_the_field(tmp_path):
    data = _valid()
    del data["models"]["seed"]["splits"]["holdout"]["user_tower"]["input_dim"]
    root = _folder(tmp_path, data)
    with pytest.raises(ArtifactError) as err:
        ServingManifest.load(root)
    assert err.value.path == str(root / MANIFEST_FILE)
    assert "models.seed.splits.holdout.user_tower.input_dim is missing" in str(err.value)


@pytest.mark.parametrize(
    "text, words", [("{", "not valid JSON"), ("", "not valid JSON")], ids=["cut", "empty"]
)
def test_load_refuses_a_manifest_that_is_not_json(tmp_path, text, words):
    root = _folder(tmp_path)
    (root / MANIFEST_FILE).write_text(text)
    with pytest.raises(ArtifactError, match=words) as err:
        ServingManifest.load(root)
    assert err.value.path == str(root / MANIFEST_FILE)


def test_a_file_field_without_a_hash_is_named(tmp_path):
    data = _valid()
    data["catalog"]["users_file"] = "catalog/people.csv"
    root = _folder(tmp_path, data)
    with pytest.raises(ArtifactError, match="used by manifest.json but has no sha256 entry") as err:
        ServingManifest.load(root)
    assert err.value.path == str(root / "catalog" / "people.csv")


def test_the_record_shares_nothing_with_the_parsed_json():
    """Frozen means frozen: editing the dict it was built from afterwards changes nothing in the record."""
    data = _valid()
    m = ServingManifest.from_json(data)
    before = copy.deepcopy(m.to_json())
    data["encoder"]["max_lengths"]["profession"] = 1
    data["training"]["recipe"]["hidden"].append(32)
    data["models"]["seed"]["splits"]["holdout"]["features"]["user"].pop()
    assert m.to_json() == before


# --- what the manifest cannot say: the catalogue files' columns ------------------------------------


@pytest.mark.parametrize("reader", ["read_csv", "read_columns"])
def test_a_catalogue_csv_without_a_needed_column_is_named(tmp_path, reader):
    read = getattr(snapshot, reader)
    path = tmp_path / "users.csv"
    path.write_text("user_id,years\nu1,30\n")
    with pytest.raises(ArtifactError, match=r"lacks columns \['age'\] \(has \['user_id', 'years'\]\)") as err:
        read(path, ("user_id",), numeric=("age",))
    assert err.value.path == str(path)


@pytest.mark.parametrize("reader", ["read_csv", "read_columns"])
def test_a_non_number_in_a_numeric_column_is_named_with_its_row(tmp_path, reader):
    read = getattr(snapshot, reader)
    path = tmp_path / "items.csv"
    path.write_text("item_id,price\ni1,9.5\ni2,cheap\n")
    with pytest.raises(ArtifactError, match=r"row 2: price 'cheap' is not a number"):
        read(path, ("item_id",), numeric=("price",))
    assert snapshot.read_columns(path, ("item_id",))["price"] == ["9.5", "cheap"]  # not numeric: not checked


def test_columns_read_as_the_rows_say_and_a_short_row_is_named(tmp_path):
    path = tmp_path / "items.csv"
    path.write_text('item_id,price,description\ni1,9.5,"a, quoted\nline"\ni2,3,\n')
    rows = snapshot.read_csv(path)
    assert snapshot.read_columns(path) == {k: [r[k] for r in rows] for k in rows[0]}
    path.write_text("item_id,price\n")
    assert snapshot.read_columns(path, ("item_id",), numeric=("price",)) == {"item_id": [], "price": []}
    path.write_text("item_id,price\ni1,1\ni2\n")
    with pytest.raises(ArtifactError, match=r"row 2: 1 fields, the header names 2"):
        snapshot.read_columns(path)


# --- the hybrid model's user tower (ids and history) ---------------------------------------------------


def test_a_hybrid_user_tower_names_its_id_and_history_inputs():
    data = _valid()
    tower = data["models"]["seed"]["splits"]["holdout"]["user_tower"]
    tower.update(id_input="user_index", history_input="history", history_pooling="mean", max_history=100)
    m = ServingManifest.from_json(data)
    user = m.models["seed"].splits["holdout"].user_tower
    assert (user.id_input, user.history_input, user.history_pooling, user.max_history) == (
        "user_index",
        "history",
        "mean",
        100,
    )
    assert m.to_json() == data  # written back exactly
    # A features-only tower (every manifest written before the hybrid) has none of them.
    plain = ServingManifest.from_json(_valid()).models["seed"].splits["holdout"].user_tower
    assert (plain.id_input, plain.history_input, plain.history_pooling, plain.max_history) == (None,) * 4
    assert (
        "id_input"
        not in ServingManifest.from_json(_valid()).to_json()["models"]["seed"]["splits"]["holdout"][
            "user_tower"
        ]
    )


@pytest.mark.parametrize(
    "key, value, expected",
    [("max_history", "100", "must be int"), ("id_input", 3, "must be str")],
)
def test_a_mistyped_hybrid_field_is_named(key, value, expected):
    data = _valid()
    data["models"]["seed"]["splits"]["holdout"]["user_tower"][key] = value
    with pytest.raises(ArtifactError) as err:
        ServingManifest.from_json(data)
    assert f"models.seed.splits.holdout.user_tower.{key}" in str(err.value)
    assert expected in str(err.value)

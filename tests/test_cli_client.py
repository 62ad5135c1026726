"""The client subcommands of the `towerserve` CLI (recommend, score, evaluate, info) and `serve`, as real processes."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pipeline
import pytest

from towerserve.clients.client import RecommenderClient, User

TOKEN = "t0k"


@contextlib.contextmanager
def running_server(serving: Path, **overrides):
    with pipeline.running_server(serving, **overrides) as running:
        yield f"127.0.0.1:{running.port}"


@pytest.fixture(scope="module")
def target(serving) -> str:
    with running_server(serving, model="two_tower") as target:
        yield target


@pytest.fixture(scope="module")
def token_target(serving) -> str:
    with running_server(serving, model="two_tower", token=TOKEN) as target:
        yield target


@pytest.fixture(scope="module")
def client(target):
    with RecommenderClient(target) as c:
        yield c


def cli(
    *args: str, target: str | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    """Runs `python -m towerserve.clients.cli ARGS` with no TOWERSERVE_* variables but those in ``env``."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("TOWERSERVE_")}
    cmd = [sys.executable, "-m", "towerserve.clients.cli", *args, *(["--target", target] if target else [])]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60, env={**base, **(env or {})})


def ok(done: subprocess.CompletedProcess) -> str:
    assert done.returncode == 0, f"exit {done.returncode}\n{done.stderr[-3000:]}"
    return done.stdout


def failed(done: subprocess.CompletedProcess, code: int = 2) -> str:
    """The exit code and a one-line error (no traceback); returns stderr."""
    assert done.returncode == code, f"exit {done.returncode}\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}"
    assert "Traceback" not in done.stderr, done.stderr[-3000:]
    assert done.stdout == ""
    return done.stderr


# ---------------------------------------------------------------------------------------- recommend


def test_recommend_table(target, users, client):
    user = users[0]["user_id"]
    lines = ok(cli("recommend", "--user", user, "-n", "3", target=target)).splitlines()
    expected = client.recommend(user, top_n=3)
    # Header, rule, three numbered rows, then the model line.
    assert lines[0].split() == ["#", "item_id", "score", "price", "category", "description"]
    assert set(lines[1].replace(" ", "")) == {"-"}
    rows = lines[2:-1]
    assert len(rows) == 3
    assert [r.split()[:2] for r in rows] == [[str(j + 1), it.item_id] for j, it in enumerate(expected.items)]
    assert [float(r.split()[2]) for r in rows] == pytest.approx([it.score for it in expected.items], abs=1e-4)
    assert lines[-1] == f"model {expected.model_version}"


def test_recommend_json(target, users, client):
    user = users[1]["user_id"]
    out = json.loads(ok(cli("recommend", "--user", user, "-n", "4", "--json", target=target)))
    expected = client.recommend(user, top_n=4)
    assert [it["item_id"] for it in out["items"]] == [it.item_id for it in expected.items]
    assert set(out["items"][0]) == {"item_id", "score", "price", "description", "features", "category"}
    assert out["model_version"] == expected.model_version


def test_recommend_filters_reach_the_server(target, users, client):
    user = users[2]["user_id"]
    full = [it.item_id for it in client.recommend(user, top_n=1000, exclude_seen=False).items]
    info = client.model_info()
    expected = client.recommend(
        user,
        top_n=5,
        exclude_seen=False,
        price_min=20,
        price_max=900,
        categories=info.categories[:4],
        exclude_item_ids=full[:2],
    )
    out = json.loads(
        ok(
            cli(
                "recommend",
                "--user",
                user,
                "-n",
                "5",
                "--include-seen",
                "--price-min",
                "20",
                "--price-max",
                "900",
                "--category",
                info.categories[0],
                "--category",
                info.categories[1],
                "--category",
                info.categories[2],
                "--category",
                info.categories[3],
                "--exclude",
                full[0],
                "--exclude",
                full[1],
                "--json",
                target=target,
            )
        )
    )
    assert [it["item_id"] for it in out["items"]] == [it.item_id for it in expected.items]
    assert len(out["items"]) > 0
    # Without --include-seen the user's seen items are dropped.
    default = json.loads(ok(cli("recommend", "--user", user, "-n", "1000", "--json", target=target)))
    assert [it["item_id"] for it in default["items"]] == [
        it.item_id for it in client.recommend(user, top_n=1000).items
    ]
    assert len(default["items"]) < len(full)


def test_recommend_by_attributes(target, users, client):
    row = users[3]
    out = json.loads(
        ok(
            cli(
                "recommend",
                "--age",
                row["age"],
                "--profession",
                row["profession"],
                "--personality",
                row["personality"],
                "-n",
                "5",
                "--json",
                target=target,
            )
        )
    )
    expected = client.recommend(user=User(float(row["age"]), row["profession"], row["personality"]), top_n=5)
    assert [it["item_id"] for it in out["items"]] == [it.item_id for it in expected.items]


def test_recommend_needs_exactly_one_way_to_name_the_user(target, users):
    err = failed(cli("recommend", "--user", users[0]["user_id"], "--age", "30", target=target))
    assert err.strip() == (
        "towerserve recommend: error: give --user ID or --age/--profession[/--personality], not both"
    )
    err = failed(cli("recommend", "--age", "30", target=target))
    assert "give --user ID, or --age and --profession" in err


def test_recommend_user_with_personality_is_refused(target, users):
    err = failed(cli("recommend", "--user", users[0]["user_id"], "--personality", "Gamer", target=target))
    assert "not both" in err


def test_recommend_unknown_user(target):
    err = failed(cli("recommend", "--user", "nobody_42", target=target))
    assert (
        err.strip() == "towerserve recommend: error: Recommend failed: NOT_FOUND: unknown user_id 'nobody_42'"
    )


def test_personality_missing_for_two_tower_is_the_servers_message(target):
    err = failed(cli("recommend", "--age", "30", "--profession", "science", target=target))
    assert "INVALID_ARGUMENT" in err and "personality is required" in err


def test_unreachable_server():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    err = failed(cli("info", "--timeout", "2", target=f"127.0.0.1:{port}"))
    assert "UNAVAILABLE" in err


# --------------------------------------------------------------------------------------------- score


def test_score_table_and_json(target, users, client):
    a, b = users[0]["user_id"], users[1]["user_id"]
    pairs = [(a, "item_0003"), (b, "item_0001"), (a, "item_0002")]
    expected = client.score(pairs)
    args = [x for u, i in pairs for x in ("--pair", f"{u}:{i}")]

    lines = ok(cli("score", *args, target=target)).splitlines()
    assert lines[0].split() == ["user_id", "item_id", "score"]
    assert [r.split()[:2] for r in lines[2:-1]] == [[u, i] for u, i in pairs]
    assert [float(r.split()[2]) for r in lines[2:-1]] == pytest.approx(expected.scores, abs=1e-4)
    assert lines[-1] == f"model {expected.model_version}"

    out = json.loads(ok(cli("score", *args, "--json", target=target)))
    assert out["scores"] == pytest.approx(expected.scores, abs=1e-6)
    assert out["model_version"] == expected.model_version


@pytest.mark.parametrize("spec", ["tra_0001", "tra_0001:", ":item_0001"])
def test_score_bad_pair(target, spec):
    err = failed(cli("score", "--pair", spec, target=target))
    assert err.strip() == f"towerserve score: error: --pair takes USER_ID:ITEM_ID (got {spec!r})"


def test_score_needs_a_pair(target):
    done = cli("score", target=target)
    assert done.returncode == 2
    assert "the following arguments are required: --pair" in done.stderr


def test_score_unknown_item(target, users):
    err = failed(cli("score", "--pair", f"{users[0]['user_id']}:item_9999", target=target))
    assert "Score failed: NOT_FOUND: unknown item_id 'item_9999' (pair 0)" in err


# ------------------------------------------------------------------------------------------ evaluate


def test_evaluate_json(target, client):
    out = json.loads(ok(cli("evaluate", "--ks", "5", "--json", target=target)))
    assert (out["split"], out["protocol"]) == ("holdout", "full")
    assert "ndcg@5" in out["metrics"] and "ndcg@10" not in out["metrics"]
    assert out["metrics"]["ndcg@5"] == pytest.approx(client.evaluate(ks=(5,)).metrics["ndcg@5"], abs=1e-9)
    assert out["users"] > 0 and out["model_version"] == client.model_info().model_version

    cold = json.loads(ok(cli("evaluate", "--split", "cold", "--ks", "3,7", "--json", target=target)))
    assert cold["split"] == "cold" and {"ndcg@3", "ndcg@7"} <= set(cold["metrics"])


def test_evaluate_notebook_table(target, client):
    lines = ok(cli("evaluate", "--protocol", "notebook", target=target)).splitlines()
    expected = client.evaluate(protocol="notebook")
    assert lines[0].split() == ["metric", "value"]
    assert lines[2].split()[0] == "notebook_score" and len(lines) == 4
    assert float(lines[2].split()[1]) == pytest.approx(expected.metrics["notebook_score"], abs=1e-4)
    assert lines[3].startswith(f"holdout split, notebook protocol, {expected.users} users, ")
    assert lines[3].endswith(f"model {expected.model_version}")


@pytest.mark.parametrize(
    "ks,message", [("0", "every k must be >= 1"), ("5,x", "expected comma-separated integers")]
)
def test_evaluate_bad_ks(target, ks, message):
    done = cli("evaluate", "--ks", ks, target=target)
    assert done.returncode == 2 and message in done.stderr


# ---------------------------------------------------------------------------------------------- info


def test_info_table_and_json(target, client):
    info = client.model_info()
    rows = {
        line.split(None, 1)[0]: line.split(None, 1)[1].strip()
        for line in ok(cli("info", target=target)).splitlines()[2:]
        if not line.startswith("training")
    }
    assert rows["health"] == "SERVING"
    assert (rows["model_version"], rows["model_kind"]) == (info.model_version, "two_tower")
    assert (rows["items"], rows["users"]) == (str(info.item_count), str(info.user_count))
    assert rows["providers"] == "CPUExecutionProvider"

    out = json.loads(ok(cli("info", "--json", target=target)))
    assert out["health"] == "SERVING"
    assert (out["model_version"], out["model_kind"], out["item_count"]) == (
        info.model_version,
        "two_tower",
        info.item_count,
    )
    assert out["categories"] == info.categories


# ------------------------------------------------------------------------------------ token and target


def test_token_from_the_environment(token_target, users):
    user = users[0]["user_id"]
    err = failed(cli("recommend", "--user", user, target=token_target))
    assert "UNAUTHENTICATED" in err and "missing authorization metadata" in err

    out = json.loads(
        ok(
            cli(
                "recommend",
                "--user",
                user,
                "-n",
                "2",
                "--json",
                target=token_target,
                env={"TOWERSERVE_TOKEN": TOKEN},
            )
        )
    )
    assert len(out["items"]) == 2
    assert (
        len(
            json.loads(
                ok(
                    cli(
                        "recommend",
                        "--user",
                        user,
                        "-n",
                        "2",
                        "--json",
                        "--token",
                        TOKEN,
                        target=token_target,
                    )
                )
            )["items"]
        )
        == 2
    )
    # The flag wins over the environment.
    err = failed(cli("info", "--token", "wrong", target=token_target, env={"TOWERSERVE_TOKEN": TOKEN}))
    assert "UNAUTHENTICATED" in err and "invalid bearer token" in err


def test_target_from_the_environment(target):
    out = json.loads(ok(cli("info", "--json", env={"TOWERSERVE_TARGET": target})))
    assert out["health"] == "SERVING"


@pytest.fixture(scope="module")
def tls_target(serving, tmp_path_factory):
    """A TLS server with a self-signed certificate for localhost; yields (target, certificate)."""
    d = tmp_path_factory.mktemp("cli_tls")
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=localhost",
            "-addext",
            "subjectAltName=DNS:localhost",
            "-keyout",
            "server.key",
            "-out",
            "server.crt",
        ],
        cwd=d,
        check=True,
        capture_output=True,
        timeout=60,
    )
    with running_server(serving, tls_cert=d / "server.crt", tls_key=d / "server.key") as target:
        yield target.replace("127.0.0.1", "localhost"), d / "server.crt"


def test_tls_ca(tls_target):
    target, cert = tls_target
    out = json.loads(ok(cli("info", "--json", "--tls-ca", str(cert), target=target)))
    assert out["health"] == "SERVING"
    err = failed(cli("info", "--timeout", "5", target=target))  # plaintext to a TLS port
    assert "UNAVAILABLE" in err


# ---------------------------------------------------------------------------------------------- serve


def test_serve_the_training_folder_serves_its_export(serving):
    """`serve --artifacts A` with A the training folder serves A/serving (what export wrote), and says so."""
    artifacts = serving.parent
    base = {k: v for k, v in os.environ.items() if not k.startswith("TOWERSERVE_")}
    cmd = [sys.executable, "-m", "towerserve.clients.cli", "serve", "--artifacts", str(artifacts)]
    cmd += ["--host", "127.0.0.1", "--port", "0"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=base)
    try:
        log: list[str] = []
        deadline = time.monotonic() + 120
        while not any(" SERVING " in line for line in log):
            line = proc.stderr.readline()
            assert line and time.monotonic() < deadline, "".join(log)[-3000:]
            log.append(line)
        text = "".join(log)
        assert f"{artifacts} is a training folder: serving {serving}, which `towerserve export` wrote" in text
        port = re.search(r"listening on 127\.0\.0\.1:(\d+)", text).group(1)
        out = json.loads(ok(cli("info", "--json", target=f"127.0.0.1:{port}")))
        assert out["health"] == "SERVING" and out["artifacts"] == str(serving)
    finally:
        proc.terminate()
        rest = proc.communicate(timeout=60)[1]
    assert proc.returncode == 0, rest[-3000:]


def test_serve_a_training_folder_not_exported_yet(serving, tmp_path):
    artifacts = tmp_path / "artifacts"
    shutil.copytree(serving.parent, artifacts, ignore=shutil.ignore_patterns("serving"))
    err = failed(cli("serve", "--artifacts", str(artifacts)))
    assert err.splitlines() == [
        f"towerserve serve: error: {artifacts}: a training folder with no serving/ inside: "
        f"run `towerserve export --artifacts {artifacts}` first"
    ]


@pytest.mark.slow
def test_export_command_piped(serving, tmp_path):
    """`towerserve export` end to end with its output in a file: the summary lines, no progress frames."""
    out, log = tmp_path / "serving", tmp_path / "export.log"
    cmd = [sys.executable, "-m", "towerserve.clients.cli", "export", "--artifacts", str(serving.parent)]
    cmd += ["--out", str(out), "--parity-users", "50", "--no-optimize", "--no-int8", "--no-fp16"]
    with open(log, "wb") as fh:
        done = subprocess.run(cmd, stdout=fh, stderr=subprocess.STDOUT, timeout=600)
    text = log.read_bytes().decode()
    assert done.returncode == 0, text[-3000:]
    assert "\r" not in text
    assert f"serving artifacts: {out}\n" in text
    assert re.search(
        r"default model: (seed|two_tower) \((seed|two_tower)-[0-9a-f]+\); encoder variant: fp32 \(of fp32\)",
        text,
    )
    assert (out / "manifest.json").is_file()


# ---------------------------------------------------------------------------------------------- help


@pytest.mark.parametrize("command", ["recommend", "score", "evaluate", "info", "loadtest"])
def test_help(command):
    out = ok(cli(command, "--help"))
    assert out.startswith(f"usage: towerserve {command} ")
    for flag in ("--target", "--token", "--tls-ca", "--timeout", "--json"):
        assert flag in out
    assert "$TOWERSERVE_TARGET" in out and "$TOWERSERVE_TOKEN" in out

"""The load-test harness: durations, percentiles, id files, config checks, and real runs against a real server."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from dataclasses import asdict

import pipeline
import pytest
from messages import missing
from pipeline import running_server

from towerserve.clients.loadtest import (
    LoadTestConfig,
    LoadTestResult,
    parse_duration,
    percentiles,
    read_ids,
    result_json,
    run_loadtest,
)

LATENCY_KEYS = {"p50", "p90", "p99", "max", "mean"}


@pytest.fixture(scope="module")
def target(serving) -> str:
    with running_server(serving) as running:
        yield f"127.0.0.1:{running.port}"


@pytest.fixture(scope="module")
def user_ids(serving) -> list[str]:
    return read_ids(serving)


def _dead_target() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{s.getsockname()[1]}"


def _run(target: str, **kwargs) -> LoadTestResult:
    defaults = dict(duration=0.5, warmup=0.1, concurrency=2, progress=False)
    return run_loadtest(LoadTestConfig(target=target, **{**defaults, **kwargs}))


def _check_ok(result: LoadTestResult) -> None:
    assert result.ok > 0 and result.requests == result.ok
    assert result.errors == {} and result.dropped == 0
    assert result.qps == pytest.approx(result.ok / result.seconds)
    lat = result.latency_ms
    assert set(lat) == LATENCY_KEYS
    assert 0 < lat["p50"] <= lat["p90"] <= lat["p99"] <= lat["max"]


# ------------------------------------------------------------------------------------------ durations


@pytest.mark.parametrize(
    "text,seconds",
    [
        ("30s", 30.0),
        ("2m", 120.0),
        ("500ms", 0.5),
        ("1h", 3600.0),
        ("10", 10.0),
        ("1.5m", 90.0),
        (" 2 s ", 2.0),
        (".25s", 0.25),
        (3, 3.0),
    ],
)
def test_parse_duration(text, seconds):
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "s", "abc", "10x", "-5s", "1e3", "5 sec", "1m30s"])
def test_parse_duration_rejects(text):
    with pytest.raises(ValueError) as err:
        parse_duration(text)
    assert missing(str(err.value), ("duration", repr(text))) == [], err.value


# ---------------------------------------------------------------------------------------- percentiles


def test_percentiles_nearest_rank():
    # Sorted, in ms: 1 2 3 4 5 7 9 12 15 20 (n = 10). Nearest rank r = ceil(q * n):
    # p50 -> r = 5 -> 5 ms; p90 -> r = 9 -> 15 ms; p99 -> ceil(9.9) = 10 -> 20 ms; max 20 ms;
    # mean = (1+2+3+4+5+7+9+12+15+20) / 10 = 78 / 10 = 7.8 ms.
    latencies = [0.012, 0.003, 0.007, 0.001, 0.020, 0.005, 0.009, 0.002, 0.015, 0.004]
    assert percentiles(latencies) == pytest.approx(
        {"p50": 5.0, "p90": 15.0, "p99": 20.0, "max": 20.0, "mean": 7.8}
    )
    assert percentiles([0.004]) == pytest.approx(
        {"p50": 4.0, "p90": 4.0, "p99": 4.0, "max": 4.0, "mean": 4.0}
    )
    assert percentiles([]) == {}


def test_percentiles_nearest_rank_when_q_times_n_is_fractional():
    # n = 5, ms 1..5: p50 -> ceil(2.5) = 3 -> 3 ms (round(2.5) = 2 gives 2 ms).
    assert percentiles([k / 1000 for k in range(1, 6)])["p50"] == pytest.approx(3.0)
    # n = 7, ms 1..7: p90 -> ceil(6.3) = 7 -> 7 ms (round(6.3) = 6 gives 6 ms); p99 -> ceil(6.93) = 7.
    assert percentiles([k / 1000 for k in range(1, 8)])["p90"] == pytest.approx(7.0)


# --------------------------------------------------------------------------------------------- ids


def test_read_ids_from_a_csv_file(tmp_path):
    path = tmp_path / "mine.csv"
    path.write_text("age,user_id\n30,u_1\n41,u_2\n")
    assert read_ids(path) == ["u_1", "u_2"]
    with pytest.raises(ValueError, match=r"mine\.csv: no 'item_id' column"):
        read_ids(path, "item_id")


def test_read_ids_from_folders(built, serving):
    data, artifacts = built["data"], built["artifacts"]
    expected = (serving / "catalog" / "users.csv").read_text().splitlines()[1:]
    expected = [line.split(",")[0] for line in expected]
    assert len(expected) == pipeline.N_USERS
    assert read_ids(data) == expected  # a data folder: ./users.csv
    assert read_ids(serving) == expected  # a serving folder: catalog/users.csv
    assert read_ids(artifacts) == expected  # an artifacts folder: serving/catalog/users.csv
    assert read_ids(serving / "catalog" / "users.csv") == expected
    items = read_ids(serving, "item_id")
    assert len(items) == pipeline.N_ITEMS and items[0] == "item_0001"


def test_read_ids_from_a_folder_without_one(tmp_path):
    (tmp_path / "catalog").mkdir()
    with pytest.raises(
        FileNotFoundError, match=r"no users\.csv \(looked in \., catalog/, serving/catalog/\)"
    ):
        read_ids(tmp_path)
    with pytest.raises(FileNotFoundError, match=r"no items\.csv"):
        read_ids(tmp_path, "item_id")


# -------------------------------------------------------------------------------------------- config


@pytest.mark.parametrize(
    "kwargs,says",
    [  # says: what the message must name, from the config: the setting, the value given, what is missing
        ({"rpc": "Recommend"}, ("rpc", "'Recommend'")),
        ({"rpc": "recommend"}, ("recommend", "user ids")),
        ({"rpc": "score", "user_ids": ["u"]}, ("score", "item ids")),
        ({"rpc": "score", "item_ids": ["i"]}, ("score", "user ids")),
        ({"rpc": "health", "rate": 0.0}, ("rate", "0.0")),
        ({"rpc": "health", "rate": -5.0}, ("rate", "-5.0")),
        ({"rpc": "health", "concurrency": 0}, ("concurrency",)),
        ({"rpc": "health", "procs": 0}, ("procs",)),
        ({"rpc": "health", "duration": 0.0}, ("duration",)),
    ],
)
def test_config_validate(kwargs, says):
    cfg = LoadTestConfig(target=_dead_target(), **kwargs)
    with pytest.raises(ValueError) as err:
        cfg.validate()
    assert missing(str(err.value), says) == [], err.value
    with pytest.raises(ValueError) as err:  # before any connection is tried
        run_loadtest(cfg)
    assert missing(str(err.value), says) == [], err.value


def test_config_valid_without_ids_for_health_and_evaluate():
    for rpc in ("health", "evaluate"):
        LoadTestConfig(target="x:1", rpc=rpc).validate()
    assert "s3cret" not in repr(LoadTestConfig(target="x:1", token="s3cret"))  # configs get logged


def test_config_rejects_an_unknown_evaluate_protocol():
    with pytest.raises(ValueError, match="evaluate_protocol"):
        LoadTestConfig(target="x:1", rpc="evaluate", evaluate_protocol="notebok").validate()


# ---------------------------------------------------------------------------------------- real runs


def test_closed_loop_recommend(target, user_ids):
    result = _run(target, rpc="recommend", user_ids=user_ids, concurrency=4, duration=1.0, warmup=0.2)
    assert (result.rpc, result.mode, result.concurrency, result.rate, result.seconds) == (
        "recommend",
        "closed",
        4,
        None,
        1.0,
    )
    _check_ok(result)


def test_health_rpc(target):
    result = _run(target, rpc="health")
    assert result.rpc == "health"
    _check_ok(result)


def test_score_rpc(target, serving, user_ids):
    result = _run(
        target, rpc="score", user_ids=user_ids, item_ids=read_ids(serving, "item_id"), score_pairs=5
    )
    _check_ok(result)


def test_evaluate_rpc(target):
    result = _run(target, rpc="evaluate", evaluate_protocol="notebook")
    _check_ok(result)


def test_open_loop(target, user_ids):
    result = _run(target, rpc="recommend", user_ids=user_ids, rate=200.0, duration=1.0, warmup=0.5)
    assert (result.mode, result.rate) == ("open", 200.0)
    # Poisson arrivals at 200/s for 1 s: 200 expected, standard deviation ~14 (counts follow the
    # scheduled times, not the machine's speed). Counting the warmup's arrivals too would give ~300.
    assert 150 <= result.requests <= 260
    _check_ok(result)


def test_errors_are_counted_by_code(target):
    result = _run(target, rpc="recommend", user_ids=["nobody"])
    assert result.ok == 0 and result.qps == 0.0 and result.latency_ms == {}
    assert set(result.errors) == {"NOT_FOUND"} and result.errors["NOT_FOUND"] > 0
    assert result.requests == result.errors["NOT_FOUND"]
    assert f"errors by code: NOT_FOUND: {result.requests}" in result.table()


def test_nobody_listening_is_a_connection_error():
    target = _dead_target()
    t0 = time.monotonic()
    with pytest.raises(ConnectionError, match=rf"cannot connect to {target} within 1 s"):
        _run(target, rpc="health", timeout=1.0)
    assert time.monotonic() - t0 < 5.0


def test_two_processes(target, user_ids):
    result = _run(target, rpc="recommend", user_ids=user_ids, procs=2, concurrency=4)
    assert (result.mode, result.concurrency) == ("closed", 4)
    _check_ok(result)


def test_two_processes_share_the_open_loop_rate(target):
    # Each process offers rate / procs, and both processes' requests are added up: about 300 in 1 s.
    # One process only would give ~150, an undivided rate ~600 (standard deviation ~17 either way).
    result = _run(target, rpc="health", procs=2, rate=300.0, duration=1.0, warmup=0.2)
    assert 220 <= result.requests <= 380
    _check_ok(result)


# ----------------------------------------------------------------------------------------- results


def test_result_table_and_json():
    latency = {"p50": 1.0, "p90": 2.0, "p99": 3.5, "max": 4.25, "mean": 1.2}
    result = LoadTestResult(
        rpc="recommend",
        mode="open",
        concurrency=32,
        rate=200.0,
        seconds=1.0,
        requests=210,
        ok=200,
        qps=200.0,
        latency_ms=latency,
        errors={"UNAVAILABLE": 3, "NOT_FOUND": 7},
        dropped=2,
    )
    lines = result.table().splitlines()
    assert lines[0].split() == [
        "rpc",
        "mode",
        "load",
        "requests",
        "qps",
        "p50",
        "ms",
        "p90",
        "ms",
        "p99",
        "ms",
        "max",
        "ms",
        "errors",
    ]
    assert "p99 ms" in lines[0]
    # errors = 3 + 7 by code, plus 2 dropped.
    assert lines[2].split() == [
        "recommend",
        "open",
        "200/s",
        "210",
        "200.000",
        "1.000",
        "2.000",
        "3.500",
        "4.250",
        "12",
    ]
    assert lines[3] == "errors by code: NOT_FOUND: 7, UNAVAILABLE: 3"
    assert lines[4] == "dropped (client in-flight cap reached): 2"
    assert json.loads(result_json(result)) == asdict(result) == result.to_json()

    closed = LoadTestResult("health", "closed", 8, None, 1.0, 5, 5, 5.0, {}, {})
    assert closed.table().splitlines()[2].split()[:3] == ["health", "closed", "8"]
    assert len(closed.table().splitlines()) == 3


# --------------------------------------------------------------------------------------------- CLI


def _cli(*args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TOWERSERVE_")}
    return subprocess.run(
        [sys.executable, "-m", "towerserve.clients.cli", "loadtest", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )


def test_cli_json_and_out(target, serving, tmp_path):
    out = tmp_path / "result.json"
    done = _cli(
        "--target",
        target,
        "--json",
        "--duration",
        "1s",
        "--warmup",
        "0.2s",
        "--concurrency",
        "2",
        "--users",
        str(serving),
        "--out",
        str(out),
    )
    assert done.returncode == 0, done.stderr[-3000:]
    printed = json.loads(done.stdout)
    assert printed == json.loads(out.read_text())
    assert (printed["rpc"], printed["mode"], printed["concurrency"], printed["seconds"]) == (
        "recommend",
        "closed",
        2,
        1.0,
    )
    assert printed["qps"] > 0 and printed["ok"] > 0 and printed["errors"] == {}
    assert set(printed["latency_ms"]) == LATENCY_KEYS


def test_cli_table_for_score(target, serving):
    done = _cli(
        "--target",
        target,
        "--rpc",
        "score",
        "--users",
        str(serving),
        "--duration",
        "500ms",
        "--warmup",
        "0s",
        "--concurrency",
        "2",
    )
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.splitlines()
    assert "p99 ms" in lines[0]
    assert lines[2].split()[:3] == ["score", "closed", "2"]
    assert lines[2].split()[-1] == "0"  # no errors: item ids came from the same folder


def test_cli_exits_1_when_nothing_succeeds(target, tmp_path):
    users = tmp_path / "users.csv"
    users.write_text("user_id\nnobody\n")
    done = _cli(
        "--target",
        target,
        "--json",
        "--users",
        str(users),
        "--duration",
        "300ms",
        "--warmup",
        "0s",
        "--concurrency",
        "1",
    )
    assert done.returncode == 1, done.stderr[-3000:]
    result = json.loads(done.stdout)
    assert result["ok"] == 0 and result["errors"]["NOT_FOUND"] > 0


@pytest.mark.parametrize(
    "args,says",
    [
        (["--duration", "5x"], ("duration", "'5x'")),
        (["--rpc", "recommend"], ("recommend", "user ids")),
        (["--users", "/nonexistent/folder/users.csv"], ("/nonexistent/folder/users.csv",)),
    ],
)
def test_cli_argument_errors(target, args, says):
    done = _cli("--target", target, *args)
    assert done.returncode == 2, done.stderr[-3000:]
    assert missing(done.stderr, says) == [] and "Traceback" not in done.stderr, done.stderr[-3000:]


def test_cli_nobody_listening_is_a_one_line_error():
    done = _cli(
        "--target", _dead_target(), "--rpc", "health", "--timeout", "1", "--duration", "1s", "--warmup", "0s"
    )
    assert "Traceback" not in done.stderr, done.stderr[-3000:]
    assert done.returncode == 2
    assert "towerserve loadtest: error: cannot connect to" in done.stderr

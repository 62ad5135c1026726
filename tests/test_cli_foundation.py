"""The `towerserve` console script, run for real in a subprocess: help, generate, baselines, errors."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def towerserve_command() -> list[str]:
    """The installed console script beside this interpreter (what users run), else the module."""
    script = shutil.which("towerserve", path=str(Path(sys.executable).parent))
    return [script] if script else [sys.executable, "-m", "towerserve.clients.cli"]


def run(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "MPLBACKEND": "Agg"}
    return subprocess.run(
        [*towerserve_command(), *map(str, args)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=cwd,
        env=env,
    )


@pytest.fixture(scope="module")
def cli_data(tmp_path_factory) -> Path:
    """A small data set written by `towerserve generate` itself."""
    out = tmp_path_factory.mktemp("cli") / "data"
    proc = run("generate", "--out", out, "--users", "250", "--items", "50", "--seed", "5", "--quiet")
    assert proc.returncode == 0, proc.stderr
    assert "250 users x 50 items" in proc.stdout and "matrix form" in proc.stdout
    return out


def test_console_script_is_installed():
    assert towerserve_command()[0].endswith("towerserve"), "console script missing from the virtualenv"


def test_top_level_help():
    proc = run("--help")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("usage: towerserve")
    assert "two-tower recommender" in proc.stdout
    # Every package registers its own commands; all of them are listed.
    for sub in (
        "generate",
        "baselines",
        "train",
        "export",
        "serve",
        "recommend",
        "score",
        "evaluate",
        "info",
        "loadtest",
    ):
        assert f"\n    {sub} " in proc.stdout, sub


@pytest.mark.parametrize(
    "sub,words",
    [
        (
            "generate",
            ["--out", "--users", "--items", "--seed", "--density", "--long", "same seed, same bytes"],
        ),
        (
            "baselines",
            [
                "--data",
                "--split",
                "--ks",
                "--plot",
                "--json",
                "Random, MostPopular, ItemKNN, EASE and Oracle",
            ],
        ),
        ("train", ["--data", "--out", "--model", "--preset", "--encoder", "--progress", "--quiet"]),
        ("export", ["--artifacts", "--out", "--triton", "--opset", "--parity-users", "--no-int8"]),
        ("serve", ["--artifacts", "--port", "--workers", "--token", "the training folder ARTIFACTS itself"]),
    ],
)
def test_subcommand_help(sub, words):
    proc = run(sub, "--help")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith(f"usage: towerserve {sub}")
    text = " ".join(proc.stdout.split())  # argparse wraps lines
    for word in words:
        assert word in text, word


def test_no_subcommand_is_a_usage_error():
    proc = run()
    assert proc.returncode == 2
    assert "usage: towerserve" in proc.stderr


@pytest.mark.slow
def test_generate_json_summary(tmp_path):
    proc = run(
        "generate",
        "--out",
        tmp_path / "d",
        "--users",
        "40",
        "--items",
        "10",
        "--seed",
        "1",
        "--long",
        "--json",
        "--quiet",
    )
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout)
    assert (summary["users"], summary["items"], summary["seed"], summary["form"]) == (40, 10, 1, "long")
    assert (tmp_path / "d" / "interactions.csv").is_file()


@pytest.mark.slow
def test_piped_generate_writes_no_progress_frames(tmp_path):
    """Output to a file: no carriage-return frames unless --progress asks for the bar anyway."""
    for flags, bar in (((), False), (("--progress",), True)):
        log = tmp_path / f"generate{len(flags)}.log"
        out = tmp_path / f"d{len(flags)}"
        with open(log, "wb") as fh:
            done = subprocess.run(
                [
                    *towerserve_command(),
                    "generate",
                    "--out",
                    str(out),
                    "--users",
                    "300",
                    "--items",
                    "40",
                    *flags,
                ],
                stdout=fh,
                stderr=subprocess.STDOUT,
                timeout=120,
            )
        text = log.read_bytes().decode()
        assert done.returncode == 0, text[-3000:]
        assert ("\r" in text) == bar, text[-3000:]
        assert f"wrote {out}: 300 users x 40 items" in text


def test_progress_and_quiet_exclude_each_other(tmp_path):
    proc = run("generate", "--out", tmp_path / "d", "--progress", "--quiet")
    assert proc.returncode == 2
    assert "argument -q/--quiet: not allowed with argument --progress" in proc.stderr


@pytest.mark.slow
def test_baselines_json(cli_data):
    proc = run("baselines", "--data", cli_data, "--json", "--ks", "5,10")
    assert proc.returncode == 0, proc.stderr
    results = json.loads(proc.stdout)
    names = ("random", "mostpop", "itemknn", "ease", "oracle")
    assert set(results) == set(names)
    for name in names:
        assert 0.0 <= results[name]["ndcg@10"] <= 1.0
        assert "ndcg@5" in results[name] and "ndcg@20" not in results[name]
    assert results["oracle"]["ndcg@10"] > results["random"]["ndcg@10"]


@pytest.mark.slow
def test_baselines_table_and_plot(cli_data, tmp_path):
    png = tmp_path / "plots" / "x.png"
    proc = run("baselines", "--data", cli_data, "--split", "cold", "--plot", png)
    assert proc.returncode == 0, proc.stderr
    assert "cold split of" in proc.stdout
    for row in ("random", "mostpop", "itemknn", "ease", "oracle", "ndcg@10"):
        assert row in proc.stdout
    assert png.read_bytes()[:8] == PNG_MAGIC
    assert png.stat().st_size > 1000


@pytest.mark.slow
def test_malformed_data_exits_2_naming_the_file(cli_data, tmp_path):
    bad = tmp_path / "bad"
    shutil.copytree(cli_data, bad)
    users = (bad / "users.csv").read_text().splitlines()
    uid = users[3].split(",")[0]
    users[3] = f"{uid},-4,{','.join(users[3].split(',')[2:])}"  # line 4: a negative age
    (bad / "users.csv").write_text("\n".join(users) + "\n")
    proc = run("baselines", "--data", bad)
    assert proc.returncode == 2
    assert proc.stdout == ""
    assert "Traceback" not in proc.stderr
    assert (
        f"towerserve baselines: error: {bad / 'users.csv'}: line 4, column 'age': age '-4' is negative"
        in proc.stderr
    )


def test_missing_data_folder_exits_2(tmp_path):
    proc = run("baselines", "--data", tmp_path / "nowhere")
    assert proc.returncode == 2
    assert "data folder not found" in proc.stderr and str(tmp_path / "nowhere") in proc.stderr


@pytest.mark.parametrize(
    "ks,why", [("5,x", "expected comma-separated integers"), ("0,10", "every k must be >= 1")]
)
def test_bad_ks_is_an_argparse_error(cli_data, ks, why):
    proc = run("baselines", "--data", cli_data, "--ks", ks)
    assert proc.returncode == 2
    assert "usage: towerserve baselines" in proc.stderr
    assert "argument --ks" in proc.stderr and why in proc.stderr


def test_every_serve_option_is_one_config_field_and_one_grouped_flag(monkeypatch):
    # Options are written once (server/core/config.py); the parser is derived from them.
    from dataclasses import fields

    from towerserve.clients.cli import build_parser
    from towerserve.server.api import cli as serve_cli
    from towerserve.server.core.config import GROUPS, ServerConfig

    options = serve_cli.serve_options()
    assert set(options) == {f.name for f in fields(ServerConfig)}
    parser = build_parser()
    serve = parser._subparsers._group_actions[0].choices["serve"]
    by_group = {g.title.split(":")[0]: {a.dest for a in g._group_actions} for g in serve._action_groups}
    for name, f in options.items():
        assert name in by_group[f.metadata["group"]], name
    assert set(GROUPS) <= set(by_group)
    # Flags become the config's values; flags left off leave defaults and the environment in charge.
    seen = {}
    monkeypatch.setattr("towerserve.server.api.app.serve", lambda cfg: seen.setdefault("cfg", cfg) and 0)
    monkeypatch.setenv("TOWERSERVE_GRACE", "3.5")
    args = parser.parse_args(["serve", "--artifacts", "A", "--port", "0", "--exact", "--device", "cpu"])
    args.func(args)
    cfg = seen["cfg"]
    assert (cfg.artifacts, cfg.port, cfg.exact, cfg.grace, cfg.insecure) == (Path("A"), 0, True, 3.5, False)
    assert cfg.max_concurrent_rpcs == ServerConfig().max_concurrent_rpcs

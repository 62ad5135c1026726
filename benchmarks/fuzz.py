"""Fuzzes every RPC of a real `towerserve serve` process: 10,000+ hypothesis cases, each answered as documented.

The strategies are the test suite's (tests/fuzzing.py): every field of Recommend, Score, Evaluate,
GetModelInfo, UpsertItems, DeleteItems, RecordInteractions, Admin.Reload (the served folder or
paths that do not exist) and health Check, built valid from known and odd values, half of them with
one defect injected from the RPC's catalogue, batches at and over their limits, and raw garbage to
every method path. Each case carries the codes its contract allows: a valid one must answer OK, an
invalid one its documented code, and none INTERNAL, UNKNOWN, UNAVAILABLE or DEADLINE_EXCEEDED. The
server runs with a catalogue journal (--state-dir), so writes and reloads replay through it. Prints
the calls per RPC as expected -> got counts, how many of each RPC's defects were drawn, every case
that broke the contract with its request, and the server's RSS before and after.

    python benchmarks/fuzz.py [--artifacts A/serving] [--cases 10000] [--seed 0] [--state-dir D]

Without --artifacts it builds the tests' tiny pipeline (tests/pipeline.py, about a minute) under
benchmarks/out/fuzz-pipeline and serves that. Exit 1 on any contract failure or a dead server.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from _common import OUT_DIR, ServerProcess, serving_dir, write_result  # noqa: E402


class ServerDied(Exception):
    """The server process is gone: no point sending more cases."""


def tiny_serving() -> Path:
    """The tests' tiny pipeline (real training and export), built once under benchmarks/out."""
    import pipeline

    return pipeline.build_all(OUT_DIR / "fuzz-pipeline")["serving"]


def fuzz(channel, world, server: ServerProcess, cases: int, seed: int, timeout: float):
    """Sends ``cases`` hypothesis cases; returns (tally, seconds, slowest call, why the server died,
    the server's RSS every 1,000 cases)."""
    import fuzzing
    from hypothesis import HealthCheck, Phase, given, settings
    from hypothesis import seed as fixed_seed

    call, tally = fuzzing.Caller(channel, timeout), fuzzing.Tally()
    t0, slowest, rss = time.perf_counter(), (0.0, ""), []  # rss: (cases, kB) every 1,000 cases

    @fixed_seed(seed)
    @settings(
        max_examples=cases,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
        phases=[Phase.generate],  # count every case; a failure is printed, not shrunk
    )
    @given(case=fuzzing.cases(world))
    def one(case: fuzzing.Case) -> None:
        nonlocal slowest
        t = time.perf_counter()
        why = tally.record(case, *call(case))
        if (took := time.perf_counter() - t) > slowest[0]:  # describing a 200,000-entry request is slow
            slowest = (took, case.describe(160))
        if why is not None:
            print(f"!! {tally.failures[-1]}", flush=True)
        if server.proc.poll() is not None:
            raise ServerDied(f"exit code {server.proc.returncode}")
        if tally.total % 1000 == 0:
            rss.append((tally.total, server.status()["VmRSS"]))
            print(
                f"   {tally.total} cases, {time.perf_counter() - t0:.0f} s, server RSS {rss[-1][1]} kB",
                flush=True,
            )

    died = None
    try:
        one()
    except Exception as err:  # noqa: BLE001 - hypothesis may wrap ServerDied; the process tells
        if server.proc.poll() is None:
            raise
        died = f"exit code {server.proc.returncode} ({type(err).__name__})"
    return tally, time.perf_counter() - t0, slowest, died, rss


def _info(channel):
    from towerserve.server.core.rpcs import RPCS

    rpc = RPCS["GetModelInfo"]
    stub = channel.unary_unary(rpc.path, rpc.request.SerializeToString, rpc.response.FromString)
    return stub(rpc.request(), timeout=60)


def run(serving: Path, cases: int, seed: int, state_dir: Path, timeout: float) -> dict:
    import fuzzing
    import grpc

    extra = ("--host", "127.0.0.1", "--state-dir", str(state_dir), "--grace", "5")
    with (
        ServerProcess(serving, *extra, tag="fuzz") as server,
        grpc.insecure_channel(f"127.0.0.1:{server.port}", options=fuzzing.CHANNEL_OPTIONS) as channel,
    ):
        world = fuzzing.world(channel, serving, state_dir / "no-such-folder")
        rss_before, items_before = server.status(), _info(channel).item_count
        tally, seconds, slowest, died, rss = fuzz(channel, world, server, cases, seed, timeout)
        health = "dead" if died else fuzzing.health_status(channel)
        rss_after = server.status() if not died else {}
        # RSS after = what the accepted upserts left in the catalogue plus the allocator's hold on the
        # largest requests' buffers; the series every 1,000 cases tells a leak (steady climb) from that.
        info = None if died else _info(channel)
    return {
        "serving": str(serving),
        "cases": tally.total,
        "seed": seed,
        "seconds": round(seconds, 1),
        "codes": {f"{rpc} {code}": n for (rpc, code), n in sorted(tally.codes.items())},
        # (rpc, codes the contract allows, code got) -> calls
        "outcomes": {f"{rpc} {want}->{got}": n for (rpc, want, got), n in sorted(tally.outcomes.items())},
        "defects": {f"{rpc}: {d or 'valid'}": n for (rpc, d), n in sorted(tally.defects.items())},
        "lines": tally.lines(),
        "failures": tally.failures,
        "health_after": health,
        "died": died,
        "item_count_before": items_before,
        "item_count_after": info.item_count if info else None,
        "journal_entries_after": info.journal_entries if info else None,
        "rss_kb_before": rss_before.get("VmRSS"),
        "rss_kb_after": rss_after.get("VmRSS"),
        "hwm_kb_after": rss_after.get("VmHWM"),
        "rss_kb_every_1000_cases": rss,
        "slowest_call": {"seconds": round(slowest[0], 3), "request": slowest[1]},
        "server_log": str(server.log_path),
    }


def _defect_lines(defects: dict[str, int]) -> str:
    """Per RPC: valid cases, and how many distinct defects of its catalogue were drawn (the rarest
    named), so a run that never reached a defect says so."""
    per: dict[str, dict[str, int]] = {}
    for key, n in defects.items():
        rpc, defect = key.split(": ", 1)
        per.setdefault(rpc, {})[defect] = n
    lines = []
    for rpc, got in sorted(per.items()):
        drawn = {d: n for d, n in got.items() if d != "valid"}
        rare = min(drawn, key=drawn.get) if drawn else None
        lines.append(
            f"{rpc:<22} valid {got.get('valid', 0):>5}, {len(drawn)} defects drawn"
            + (f" (rarest: {rare!r}, {drawn[rare]})" if rare else "")
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--artifacts", type=Path, help="serving bundle (default: the tests' tiny pipeline)")
    ap.add_argument("--cases", type=int, default=10_000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--state-dir", type=Path, help="catalogue journal folder (default: a new temporary one)")
    ap.add_argument("--timeout", type=float, default=120.0, help="per-call deadline in seconds")
    args = ap.parse_args(argv)
    import fuzzing

    serving = serving_dir(args.artifacts) if args.artifacts else tiny_serving()
    with tempfile.TemporaryDirectory(prefix="fuzz-state-") as tmp:
        result = run(serving, args.cases, args.seed, args.state_dir or Path(tmp), args.timeout)

    print(f"\n{result['cases']} cases against {serving} in {result['seconds']} s (seed {args.seed})")
    print("\n".join(result["lines"]))
    print(_defect_lines(result["defects"]))
    bad = [k for k in result["codes"] if k.rsplit(" ", 1)[1] in fuzzing.BAD_CODES]
    print(
        f"INTERNAL/UNKNOWN/UNAVAILABLE/DEADLINE_EXCEEDED: {sum(result['codes'][k] for k in bad)}; "
        f"contract failures (those, and any code outside a case's expected ones): {len(result['failures'])}"
    )
    for f in result["failures"]:
        print(f"  {f}")
    before, after = result["rss_kb_before"], result["rss_kb_after"]
    growth = f" ({(after - before) / before:+.1%})" if before and after else ""
    print(f"server RSS before {before} kB, after {after} kB{growth}; peak {result['hwm_kb_after']} kB")
    print(f"server RSS every 1,000 cases (kB): {[kb for _, kb in result['rss_kb_every_1000_cases']]}")
    print(
        f"catalogue {result['item_count_before']} items before, {result['item_count_after']} after "
        f"({result['journal_entries_after']} journal entries)"
    )
    print(f"slowest call {result['slowest_call']['seconds']} s: {result['slowest_call']['request']}")
    print(
        f"health at the end: {result['health_after']}"
        + (f"; server died: {result['died']}" if result["died"] else "")
    )
    print(f"wrote {write_result('fuzz', result)}; server log {result['server_log']}")
    return 0 if not result["failures"] and result["health_after"] == "SERVING" else 1


if __name__ == "__main__":
    sys.exit(main())

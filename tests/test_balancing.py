"""Replicas behind one client (clients/balancing.py): targets, round_robin, the channel's failover and
its budget, keepalive; three real `towerserve serve` processes, one killed mid-run."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from contextlib import ExitStack
from pathlib import Path

import grpc
import pytest
from pipeline import running_server
from prometheus_client import CollectorRegistry

from towerserve.clients import balancing, cli
from towerserve.clients.base import RETRIED_CALLS
from towerserve.clients.client import AsyncRecommenderClient, RecommenderClient, RetryPolicy, TowerserveError
from towerserve.server.core.rpcs import HEALTH_CHECK, RPCS

RECOMMEND = RPCS["Recommend"].path
LIST3 = "ipv4:127.0.0.1:5001,127.0.0.1:5002,127.0.0.1:5003"


# ------------------------------------------------------------------------------ targets and settings


@pytest.mark.parametrize(
    ("target", "n"),
    [
        ("localhost:50051", 1),
        ("127.0.0.1:50051", 1),
        ("[::1]:50051", 1),
        ("dns:///recommender.prod.svc:50051", 1),  # a name: its records are unknown until resolved
        ("unix:/run/towerserve.sock", 1),
        ("ipv4:127.0.0.1:5001", 1),
        (LIST3, 3),
        ("ipv6:[::1]:5001,[::1]:5002", 2),
        ("IPV4:10.0.0.1:1,10.0.0.2:1,", 2),  # a trailing comma names nothing
    ],
)
def test_listed_addresses(target, n):
    assert balancing.listed_addresses(target) == n


def test_failover_is_one_attempt_per_listed_replica_within_grpc_cap():
    default = RetryPolicy()
    assert balancing.failover_attempts(LIST3, default) == 3
    seven = "ipv4:" + ",".join(f"10.0.0.{i}:1" for i in range(7))
    assert balancing.failover_attempts(seven, default) == 5  # gRPC reads more as 5 anyway
    assert balancing.failover_attempts("localhost:50051", default) == 1
    assert balancing.failover_attempts("dns:///svc:50051", RetryPolicy(failover=3)) == 3
    # One attempt means one attempt, unless failover is asked for explicitly.
    assert balancing.failover_attempts(LIST3, RetryPolicy(attempts=1)) == 1
    assert balancing.failover_attempts(LIST3, RetryPolicy(attempts=1, failover=2)) == 2
    for bad in ({"failover": 0}, {"failover": 6}, {"attempts": 0}):
        with pytest.raises(ValueError, match="RetryPolicy"):
            RetryPolicy(**bad)


def test_service_config_retries_every_rpc_but_reload():
    config = balancing.service_config(3)
    assert config["loadBalancingConfig"] == [{"round_robin": {}}]
    (method,) = config["methodConfig"]
    paths = {f"/{n['service']}/{n['method']}" for n in method["name"]}
    assert paths == {rpc.path for name, rpc in RPCS.items() if name != "Reload"} | {HEALTH_CHECK}
    policy = method["retryPolicy"]
    assert policy["maxAttempts"] == 3 and policy["retryableStatusCodes"] == ["UNAVAILABLE"]
    assert config["retryThrottling"] == {"maxTokens": 10, "tokenRatio": 0.1}
    # One address: round_robin alone; the client's loop is the only retry layer.
    assert balancing.service_config(1) == {"loadBalancingConfig": [{"round_robin": {}}]}
    # The client loop repeats the same calls: everything but Reload.
    assert {"Health", *RPCS} - {"Reload"} == RETRIED_CALLS


def test_channel_options_keepalive_and_caller_overrides():
    options = dict(balancing.channel_options(LIST3, RetryPolicy()))
    assert json.loads(options["grpc.service_config"]) == balancing.service_config(3)
    assert options["grpc.service_config_disable_resolution"] == 1
    # gRPC servers' defaults strike a ping sooner than 5 minutes after the previous one (calls in
    # flight or not) and close the connection at the third strike; idle pings are never allowed.
    assert options["grpc.keepalive_time_ms"] >= 300_000
    assert options["grpc.keepalive_permit_without_calls"] == 0
    mine = balancing.channel_options(LIST3, RetryPolicy(), [("grpc.keepalive_time_ms", 600_000)])
    assert [v for k, v in mine if k == "grpc.keepalive_time_ms"] == [600_000]


def test_reload_is_refused_on_a_list_of_replicas():
    # Refused before any RPC: nothing listens on these ports.
    with RecommenderClient(LIST3) as client, pytest.raises(ValueError, match="lists 3 addresses"):
        client.reload()

    async def main():
        async with AsyncRecommenderClient(LIST3) as client:
            with pytest.raises(ValueError, match="give each replica's own address"):
                await client.reload()

    asyncio.run(main())


@pytest.mark.parametrize(
    "target", ["ipv4:127.0.0.1:5001,127.0.0.1:5002", "ipv6:[::1]:5001,[::1]:5002", "dns:///h:1", "unix:/s"]
)
def test_cli_takes_any_target_verbatim(target):
    for command in (["recommend", "--user", "u"], ["score", "--pair", "u:i"], ["info"], ["evaluate"]):
        args = cli.build_parser().parse_args([*command, "--target", target])
        assert args.target == target
    with cli._client(args) as client:
        assert client.target == target


def test_cli_target_help_names_the_forms(capsys):
    with pytest.raises(SystemExit):
        cli.main(["recommend", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "dns:///host:port" in text and "ipv4:IP:PORT,IP:PORT" in text and "round-robin" in text


# --------------------------------------------------------------- the retry budget against replicas


def _count(registry: CollectorRegistry, code: str, method: str = RECOMMEND) -> int:
    labels = {"method": method, "code": code}
    return int(registry.get_sample_value("towerserve_requests_total", labels) or 0)


def test_failover_and_the_retry_loop_stay_within_attempts_per_replica(serving):
    """Three replicas still loading (UNAVAILABLE): a call tries each at most ``attempts`` times."""
    registries = [CollectorRegistry() for _ in range(3)]
    with ExitStack() as stack:
        servers = [stack.enter_context(running_server(serving, load=False, registry=r)) for r in registries]
        target = "ipv4:" + ",".join(f"127.0.0.1:{s.port}" for s in servers)
        retry = RetryPolicy(attempts=2, initial_backoff=0.01)
        client = stack.enter_context(RecommenderClient(target, retry=retry, timeout=5))
        deadline = time.monotonic() + 10  # connect to all three first: round_robin uses READY ones
        while not all(_count(r, "OK", HEALTH_CHECK) for r in registries):
            assert client.health() == "NOT_SERVING" and time.monotonic() < deadline
        with pytest.raises(TowerserveError) as err:
            client.recommend("tra_0001")
        assert err.value.code == grpc.StatusCode.UNAVAILABLE
        time.sleep(0.2)  # a refusal is counted just after its status went out
        seen = [_count(r, "UNAVAILABLE") for r in registries]
    # 2 tries x 3 failover attempts at most (retry throttling may cut the second pass short).
    assert 3 <= sum(seen) <= 6 and max(seen) <= 2, seen


# ------------------------------------------------------------- three processes, one killed mid-run


class Replica:
    """`towerserve serve` on 127.0.0.1, its own gRPC port and metrics port, logging to a file."""

    def __init__(self, serving: Path, log: Path):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.metrics_port = s.getsockname()[1]
        self.log = log
        env = {k: v for k, v in os.environ.items() if not k.startswith("TOWERSERVE_")}
        cmd = [sys.executable, "-m", "towerserve.clients.cli", "serve", "--artifacts", str(serving)]
        cmd += ["--host", "127.0.0.1", "--port", "0", "--metrics-port", str(self.metrics_port)]
        with open(log, "wb") as fh:
            self.proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env)
        self.port = 0

    def ready(self) -> bool:
        text = self.log.read_text(errors="replace")
        assert self.proc.poll() is None, f"server exited {self.proc.returncode}:\n{text[-3000:]}"
        if " SERVING " not in text:
            return False
        self.port = int(re.search(r"listening on 127\.0\.0\.1:(\d+)", text).group(1))
        return True

    def served(self, method: str = RECOMMEND, code: str = "OK") -> int:
        """Calls this server counted (its Prometheus towerserve_requests_total)."""
        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=5) as response:
            text = response.read().decode()
        total = 0.0
        for labels, value in re.findall(r"^towerserve_requests_total\{([^}]*)\} (\S+)$", text, re.M):
            pairs = dict(re.findall(r'(\w+)="([^"]*)"', labels))
            if pairs.get("method") == method and pairs.get("code") == code:
                total += float(value)
        return int(total)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


class Caller(threading.Thread):
    """Sequential Recommend calls on one client until stopped; keeps every failure."""

    def __init__(self, client: RecommenderClient, user_id: str):
        super().__init__(daemon=True)
        self.client, self.user_id = client, user_id
        self.calls, self.failures = 0, []
        self.halt = threading.Event()

    def run(self) -> None:
        while not self.halt.is_set():
            try:
                self.client.recommend(self.user_id, top_n=3)
                self.calls += 1
            except Exception as err:  # noqa: BLE001 - every failure is the finding
                self.failures.append(err)

    def wait_for(self, calls: int, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while self.calls < calls and not self.failures and time.monotonic() < deadline:
            time.sleep(0.01)


def test_calls_spread_over_replicas_and_survive_one_killed(serving, users, tmp_path):
    user_id = users[0]["user_id"]
    replicas = [Replica(serving, tmp_path / f"replica{i}.log") for i in range(3)]
    try:
        deadline = time.monotonic() + 150  # the three load in parallel (~10 s each on a quiet machine)
        while not all([r.ready() for r in replicas]):
            assert time.monotonic() < deadline, "replicas not SERVING in time"
            time.sleep(0.1)
        target = "ipv4:" + ",".join(f"127.0.0.1:{r.port}" for r in replicas)
        with RecommenderClient(target, timeout=5) as client:
            # Connections come up one by one; round_robin uses the READY ones: warm up until each
            # replica has answered, then every call goes to the next replica in turn.
            deadline = time.monotonic() + 10
            while not all(r.served() for r in replicas):
                client.recommend(user_id, top_n=3)
                assert time.monotonic() < deadline, [r.served() for r in replicas]
            before = [r.served() for r in replicas]
            for _ in range(60):
                client.recommend(user_id, top_n=3)
            spread = [r.served() - b for r, b in zip(replicas, before)]
            assert sum(spread) == 60 and min(spread) >= 15, spread

            caller = Caller(client, user_id)
            caller.start()
            try:
                caller.wait_for(caller.calls + 100, timeout=10)
                victim, survivors = replicas[1], [replicas[0], replicas[2]]
                before = [r.served() for r in survivors]
                at_kill = caller.calls
                victim.proc.kill()  # SIGKILL: no drain, connections reset mid-call
                victim.proc.wait()
                caller.wait_for(at_kill + 300, timeout=20)
            finally:
                caller.halt.set()
                caller.join(10)
            assert caller.failures == [], caller.failures[:3]
            after = caller.calls - at_kill
            assert after >= 300, after
            time.sleep(0.2)  # a server counts a call just after its answer went out
            gained = [r.served() - b for r, b in zip(survivors, before)]
            # The survivors answered every call since the kill (but the one in flight, which the
            # victim may have answered just before it died), and shared them.
            assert sum(gained) >= after - 1 and min(gained) >= after // 4, (gained, after)
    finally:
        for r in replicas:
            r.stop()

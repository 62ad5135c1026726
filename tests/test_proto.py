"""The API definition: committed stubs match the .proto, and every RPC, message and field is documented."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PROTO = ROOT / "proto" / "towerserve" / "v1" / "recommender.proto"


def test_committed_stubs_match_the_proto():
    done = subprocess.run(
        [sys.executable, str(ROOT / "proto" / "generate.py"), "--check"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr


def test_every_rpc_message_and_field_has_a_comment():
    lines = PROTO.read_text().splitlines()
    undocumented = []
    declaration = re.compile(
        r"^\s*(rpc |message |enum |service |(optional |repeated )?[\w.<>, ]+ \w+ = \d+;|\w+ = \d+;)"
    )
    for n, line in enumerate(lines):
        if not declaration.match(line) or line.strip().startswith("//"):
            continue
        if re.match(r"^\s*message \w+(Request|Response) \{", line) or re.match(
            r"^\s*message GetModelInfoRequest", line
        ):
            continue  # <Rpc>Request/<Rpc>Response are documented by their RPC's comment
        prev = lines[n - 1].strip() if n else ""
        if not prev.startswith("//"):
            undocumented.append(f"line {n + 1}: {line.strip()}")
    assert not undocumented, "\n".join(undocumented)


def test_stubs_import_and_name_the_services():
    from towerserve.v1 import recommender_pb2

    services = recommender_pb2.DESCRIPTOR.services_by_name
    assert set(services) == {"Recommender", "Admin"}
    assert set(services["Recommender"].methods_by_name) == {
        "Recommend",
        "Score",
        "Evaluate",
        "GetModelInfo",
        "UpsertItems",
        "DeleteItems",
        "RecordInteractions",
    }

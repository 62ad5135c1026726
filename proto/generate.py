"""Regenerates the committed Python stubs from recommender.proto (--check: fail if they differ)."""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
PROTO = "towerserve/v1/recommender.proto"
OUTPUTS = ("recommender_pb2.py", "recommender_pb2.pyi", "recommender_pb2_grpc.py")


def generate(out_root: Path) -> list[Path]:
    """Runs grpc_tools.protoc into ``out_root``; returns the generated files."""
    from grpc_tools import protoc

    code = protoc.main(
        [
            "protoc",
            f"-I{HERE}",
            f"--python_out={out_root}",
            f"--pyi_out={out_root}",
            f"--grpc_python_out={out_root}",
            str(HERE / PROTO),
        ]
    )
    if code != 0:
        raise SystemExit(f"protoc failed with exit code {code}")
    return [out_root / "towerserve" / "v1" / name for name in OUTPUTS]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--check", action="store_true", help="compare instead of writing; exit 1 on any difference"
    )
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        stale = []
        for path in generate(Path(tmp)):
            committed = HERE / "towerserve" / "v1" / path.name
            if args.check:
                if not committed.is_file() or committed.read_bytes() != path.read_bytes():
                    stale.append(committed)
            else:
                committed.write_bytes(path.read_bytes())
        if stale:
            print("stale generated stubs (run `make proto`): " + ", ".join(map(str, stale)), file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

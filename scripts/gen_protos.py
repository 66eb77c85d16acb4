"""Generate Python code for protos/ into tideserve/ — the one way protobuf code is made here.

Usage:
    python scripts/gen_protos.py           # regenerate in place
    python scripts/gen_protos.py --check   # exit 1 if the committed code is stale (CI runs this)

protos/tideserve/v1/x.proto becomes tideserve/v1/x_pb2.py (+ _pb2_grpc.py, .pyi), so the import
path mirrors the proto path. The grpcio-tools version is pinned in pyproject.toml because the
generated code records it and refuses to import under an older grpcio.
"""

from __future__ import annotations

import argparse
import filecmp
import sys
import tempfile
from pathlib import Path

from grpc_tools import protoc

ROOT = Path(__file__).resolve().parent.parent
PROTO_ROOT = ROOT / "protos"
OUT_PACKAGE = ROOT / "tideserve" / "v1"


def generate(out_root: Path) -> list[Path]:
    """Run protoc over every .proto and return the generated files, relative to out_root."""
    protos = sorted(PROTO_ROOT.rglob("*.proto"))
    include = Path(protoc.__file__).parent / "_proto"
    args = [
        "protoc",
        f"-I{PROTO_ROOT}",
        f"-I{include}",
        f"--python_out={out_root}",
        f"--pyi_out={out_root}",
        f"--grpc_python_out={out_root}",
        *[str(p) for p in protos],
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")
    return sorted(p.relative_to(out_root) for p in (out_root / "tideserve" / "v1").glob("*_pb2*"))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail if generated code is stale")
    check = parser.parse_args().check
    with tempfile.TemporaryDirectory() as tmp:
        files = generate(Path(tmp))
        stale = [
            f
            for f in files
            if not (ROOT / f).exists() or not filecmp.cmp(Path(tmp) / f, ROOT / f, shallow=False)
        ]
        committed = {p.relative_to(ROOT) for p in OUT_PACKAGE.glob("*_pb2*")}
        extra = sorted(committed - set(files))
        if check:
            for f in [*stale, *extra]:
                print(f"stale generated file: {f}", file=sys.stderr)
            if stale or extra:
                print("run: python scripts/gen_protos.py", file=sys.stderr)
                return 1
            print(f"generated protobuf code is fresh ({len(files)} files)")
            return 0
        OUT_PACKAGE.mkdir(parents=True, exist_ok=True)
        for f in extra:
            (ROOT / f).unlink()
        for f in files:
            (ROOT / f).write_bytes((Path(tmp) / f).read_bytes())
        print(f"wrote {len(files)} files under {OUT_PACKAGE.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

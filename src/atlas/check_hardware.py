"""Print what this machine can do and what atlas recommends: ``python -m atlas.check_hardware [--json]``.

A thin face over `atlas.runtime.hardware`: detection, the report table and the recommendations all live there.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Sequence

from atlas.runtime.hardware import detect_capabilities, format_report, recommendations, recommended_precision


def hardware_document(device: str | None = None) -> dict:
    """The JSON document printed by ``--json``: the capabilities, the recommended precision and the advice."""
    caps = detect_capabilities(device)
    return {"capabilities": caps.to_dict(), "recommended_precision": recommended_precision(caps),
            "recommendations": recommendations(caps)}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m atlas.check_hardware", description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print one JSON document instead of the table")
    parser.add_argument("--device", default=None,
                        help="cpu, cuda, cuda:N or mps (default: CUDA if available, else MPS, else CPU)")
    args = parser.parse_args(argv)
    if args.json:
        print(json.dumps(hardware_document(args.device), indent=2))
        return 0
    caps = detect_capabilities(args.device)
    print(format_report(caps))
    print()
    print("Recommendations:")
    for line in recommendations(caps):
        print(f"  - {line}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

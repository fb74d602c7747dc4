"""The benchmarks' common ending: the report as JSON on stdout, and into --json-out when given."""

from __future__ import annotations

import json


def emit_file(report: dict, json_out: str) -> None:
    with open(json_out, "w") as f:
        f.write(json.dumps(report, indent=2) + "\n")


def emit(report: dict, json_out: str | None) -> None:
    print(json.dumps(report, indent=2))
    if json_out:
        emit_file(report, json_out)

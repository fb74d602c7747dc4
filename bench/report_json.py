"""The benchmarks' common ending: the report as JSON on stdout, and into --json-out when given."""

from __future__ import annotations

import json


def emit(report: dict, json_out: str | None) -> None:
    text = json.dumps(report, indent=2)
    print(text)
    if json_out:
        with open(json_out, "w") as f:
            f.write(text + "\n")

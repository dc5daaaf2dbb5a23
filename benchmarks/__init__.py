"""Benchmarks behind every performance figure (`autoglm bench ...`); results in benchmarks/results/."""
from __future__ import annotations

import json


def write_result(path: str | None, result: dict) -> None:
    """A benchmark's result as JSON at `path` (its --out); nothing when no path was given."""
    if path:
        with open(path, "w") as f:
            json.dump(result, f, indent=1)
            f.write("\n")

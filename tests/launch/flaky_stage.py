"""A stage whose first `fail_times` starts fail (counted in the file params.counter), then it
runs: the supervisor must restart it with backoff, not give it up."""
from pathlib import Path


def make_stage(ctx):
    counter = Path(ctx.params["counter"])
    n = int(counter.read_text()) if counter.exists() else 0
    counter.write_text(str(n + 1))
    if n < int(ctx.params.get("fail_times", 2)):
        raise RuntimeError(f"start {n + 1} fails on purpose")
    return object()   # a compute with no handlers: it only heartbeats

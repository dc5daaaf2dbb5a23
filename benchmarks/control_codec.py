"""Encoding and decoding one control-plane message: cyclonedds' generic codec against the
compiled one of control.fastcdr, side by side in one run.

    python -m benchmarks.control_codec [--rounds 300] [--out benchmarks/results/control-codec-cpu.json]

"warm" repeats the call back to back; "cold" first streams 32 MiB through the caches and
sleeps 2 ms, as a stage's code runs after the model's step or an idle wait. The two codecs
alternate call by call, so the host's drift falls on both alike. Medians in microseconds.
"""
from __future__ import annotations

import argparse
import platform
import statistics
import time

import numpy as np

from control import messages as m

from . import write_result

_JUNK = np.ones(32 << 17)   # 32 MiB of float64


def _messages():
    request = m.Request(request_id="chatcmpl-0123456789abcdef01234567", t_mono_ns=time.monotonic_ns(),
                        source="gateway", n_prompt_tokens=40, prompt_ids=list(range(1000, 1040)),
                        sampling=m.SamplingParams(max_new_tokens=16, temperature=0.0,
                                                  stop_token_ids=[151329, 151336, 151338]),
                        extra=list(b"\x81\xa4echo\xc2"))
    event = m.StageEvent(request_id=request.request_id, t_mono_ns=time.monotonic_ns(),
                         source="decision", kind="done")
    return {"Request": request, "StageEvent": event}


def _time(fn, cold: bool) -> float:
    if cold:
        _JUNK.sum()
        time.sleep(0.002)
    t0 = time.perf_counter_ns()
    fn()
    return (time.perf_counter_ns() - t0) / 1e3


def run(rounds: int) -> dict:
    out = {}
    for name, msg in _messages().items():
        cls, idl = type(msg), type(msg).__idl__
        data = msg.serialize()
        assert data == idl.serialize(msg)
        sides = {"cyclonedds": (lambda: idl.serialize(msg), lambda: idl.deserialize(data)),
                 "compiled": (msg.serialize, lambda: cls.deserialize(data))}
        for cold in (False, True):
            got = {side: {"encode": [], "decode": []} for side in sides}
            for _ in range(rounds):
                for side, (enc, dec) in sides.items():
                    got[side]["encode"].append(_time(enc, cold))
                    got[side]["decode"].append(_time(dec, cold))
            for side, times in got.items():
                out.setdefault(name, {"bytes": len(data)})[f"{side}_{'cold' if cold else 'warm'}_us"] = {
                    k: round(statistics.median(v[10:]), 1) for k, v in times.items()}
    return out


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=300)
    ap.add_argument("--out", help="write the results as JSON here")
    args = ap.parse_args(argv)
    res = {"command": "python -m benchmarks.control_codec --rounds %d" % args.rounds,
           "host": platform.node(), "results": run(args.rounds)}
    for name, r in res["results"].items():
        print(f"{name} ({r['bytes']} bytes)")
        for key in sorted(k for k in r if k.endswith("_us")):
            print(f"  {key:22s} encode {r[key]['encode']:6.1f}  decode {r[key]['decode']:6.1f} us")
    write_result(args.out, res)


if __name__ == "__main__":
    main()

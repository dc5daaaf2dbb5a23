"""Tokenising a phone agent's prompt at each step of its conversation: the tokenizer on the
whole text against the pieces cache the gateway uses (modelcore.token_cache), side by side at
every step, with the chat template's render for scale.

    python -m benchmarks.prompt_tokens [--steps 100] [--model DIR] [--out FILE]

The conversation has Open-AutoGLM's shape (../shared/reference/AUTOGLM_SPEC.md): a long system
prompt, then per step a user turn with the screen info (the current one with the screenshot's
placeholder) and the assistant's <think>..</think><answer>..</answer> turn. At each step the
cache has seen the earlier steps only, as in serving. Medians over windows of steps, ms.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import time

from modelcore.prompt import render
from modelcore.token_cache import PieceCache
from modelcore.tokenizer import GlmTokenizer

from . import write_result

_SYSTEM = ("今天的日期是: 2026年12月05日 星期六\n你是一个智能体分析专家，可以根据操作历史和当前状态图"
           "执行一系列操作来完成任务。你必须严格按照要求输出以下格式：\n<think>{think}</think>\n"
           "<answer>{action}</answer>\n操作指令及其作用如下：\n")
_ACTIONS = ['do(action="Launch", app="xxx")', 'do(action="Tap", element=[x,y])',
            'do(action="Type", text="xxx")', 'do(action="Swipe", start=[x1,y1], end=[x2,y2])',
            'do(action="Back")', 'do(action="Home")', 'do(action="Wait", duration="x seconds")',
            'finish(message="xxx")']


def _conversation(steps: int, seed: int = 0):
    rng = random.Random(seed)
    system = _SYSTEM + "".join(f"- {a}: 说明 {i} ……这个操作用于完成对应的界面交互。\n"
                               for i, a in enumerate(_ACTIONS * 6))
    msgs = [{"role": "system", "content": system}]
    for step in range(steps):
        info = json.dumps({"current_app": rng.choice(["微信", "设置", "美团", "System Home"])},
                          ensure_ascii=False)
        head = "打开微信，给张三发消息说晚上见\n\n" if step == 0 else "** Screen Info **\n\n"
        yield msgs + [{"role": "user", "content": [{"type": "image"},
                                                   {"type": "text", "text": head + info}]}]
        msgs.append({"role": "user", "content": [{"type": "text", "text": head + info}]})
        x, y = rng.randrange(1000), rng.randrange(1000)
        msgs.append({"role": "assistant",
                     "content": f"<think>当前在{rng.choice(['首页', '聊天列表', '搜索页'])}，"
                                f"我需要点击坐标({x},{y})处的按钮以继续完成任务，第{step}步。</think>"
                                f"<answer>do(action=\"Tap\", element=[{x},{y}])</answer>"})


def run(model_dir: str, steps: int) -> dict:
    tok = GlmTokenizer.from_dir(model_dir)
    backend = tok.backend
    cache = PieceCache(backend)
    if not cache.enabled:
        raise SystemExit(f"{model_dir}: this tokenizer cannot be tokenised in pieces "
                         "(see modelcore/token_cache.py); nothing to compare")
    rows = []
    for step, msgs in enumerate(_conversation(steps)):
        t0 = time.perf_counter_ns()
        text = render(msgs, tok.chat_template, True, None, "string")
        t1 = time.perf_counter_ns()
        whole = backend.encode(text, add_special_tokens=False).ids
        t2 = time.perf_counter_ns()
        pieces = cache.encode(text)
        t3 = time.perf_counter_ns()
        assert pieces == whole, f"step {step}: the pieces' ids differ from the tokenizer's"
        rows.append((step + 1, len(whole), (t1 - t0) / 1e6, (t2 - t1) / 1e6, (t3 - t2) / 1e6))
    windows = []
    for lo in sorted({1, 11, 26, 51, steps - 9}):
        w = [r for r in rows if lo <= r[0] < lo + 10]
        if not w:
            continue
        windows.append({"steps": f"{w[0][0]}-{w[-1][0]}",
                        "prompt_ids": round(statistics.median(r[1] for r in w)),
                        "render_ms": round(statistics.median(r[2] for r in w), 3),
                        "tokenizer_ms": round(statistics.median(r[3] for r in w), 3),
                        "pieces_ms": round(statistics.median(r[4] for r in w), 3)})
    return {"windows": windows, "pieces_cached": len(cache._pieces), "hits": cache.hits,
            "misses": cache.misses}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--model", default=None, help="checkpoint directory (default: the embedded model)")
    ap.add_argument("--out", help="write the results as JSON here")
    args = ap.parse_args(argv)
    if args.steps < 10:
        raise SystemExit("--steps: at least 10")
    model_dir = args.model
    if model_dir is None:
        from modelcore.make_checkpoint import ensure_default_checkpoint
        model_dir = str(ensure_default_checkpoint())
    res = {"command": f"python -m benchmarks.prompt_tokens --steps {args.steps}"
                      + (f" --model {args.model}" if args.model else ""),
           "model": model_dir, "host": platform.node(), "cpus": os.cpu_count(),
           **run(model_dir, args.steps)}
    print(f"{'steps':>8} {'ids':>7} {'render':>9} {'tokenizer':>10} {'pieces':>9}  (ms, medians)")
    for w in res["windows"]:
        print(f"{w['steps']:>8} {w['prompt_ids']:>7} {w['render_ms']:>9.3f} "
              f"{w['tokenizer_ms']:>10.3f} {w['pieces_ms']:>9.3f}")
    write_result(args.out, res)


if __name__ == "__main__":
    main()

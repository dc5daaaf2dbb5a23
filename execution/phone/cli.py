"""`autoglm agent TASK`: the phone agent, against a running server, on a phone or a simulated one."""
from __future__ import annotations

DEFAULT_BASE_URL = "http://127.0.0.1:8000/v1"
DEFAULT_MODEL = "autoglm-phone-9b"


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "agent", help="run the phone agent: the model operates a phone (adb, hdc) or a "
                      "simulated one",
        description="Runs a task on a phone: at each step the current screenshot goes to the "
                    "server's chat completions, and the one action of the reply (tap, swipe, "
                    "type, launch, back, ...) is done on the phone, until the model calls "
                    "finish. Exit status 0 when it finished, 1 otherwise.")
    p.add_argument("task", help="what to do, in words, e.g. 'Open Settings and turn on Wi-Fi'")
    p.add_argument("--device", choices=("sim", "adb", "hdc"), default="sim",
                   help="sim: a simulated phone in this process (default); adb: an Android "
                        "phone or emulator through adb; hdc: a HarmonyOS phone through hdc")
    p.add_argument("--serial", default=None,
                   help="the phone's serial where several are attached (adb -s, hdc -t)")
    p.add_argument("--apps", metavar="FILE", default=None,
                   help="JSON object of app name -> Android package (adb) or HarmonyOS bundle "
                        "or bundle/ability (hdc), for Launch, over the built-in table")
    p.add_argument("--base-url", default=DEFAULT_BASE_URL,
                   help=f"the OpenAI-compatible server (default {DEFAULT_BASE_URL})")
    p.add_argument("--model", default=DEFAULT_MODEL, help=f"served model name ({DEFAULT_MODEL})")
    p.add_argument("--api-key", default=None, help="sent as a bearer token")
    p.add_argument("--max-steps", type=int, default=50)
    p.add_argument("--max-tokens", type=int, default=3000,
                   help="per reply (default 3000, as the Open-AutoGLM client asks)")
    p.add_argument("--action-delay", type=float, default=None, metavar="S",
                   help="seconds to let the screen settle after each action "
                        "(default 1 on a phone, 0 on the simulated phone)")
    p.add_argument("--system-prompt", metavar="FILE", default=None,
                   help="the system prompt's text ({today} is replaced by the date); "
                        "default: the project's own")
    p.add_argument("--yes", action="store_true",
                   help="confirm sensitive taps without asking")
    p.add_argument("--live", action="store_true",
                   help="print each reply as it streams in")
    p.add_argument("--log", metavar="FILE", default=None,
                   help="write the run (every step's thinking, action, outcome, timings) as JSON")
    p.add_argument("--screens", metavar="DIR", default=None,
                   help="save each step's screenshot as DIR/step-NNN.png")
    p.set_defaults(func=_agent)


def _agent(args) -> int:
    import json
    import sys
    from datetime import date
    from pathlib import Path

    from .agent import AgentOptions, PhoneAgent
    from .chat import ChatClient
    from .device import DeviceError, SimulatedPhone

    if not args.task.strip():
        raise SystemExit("autoglm agent: the task is empty")
    if args.max_steps < 1:
        raise SystemExit(f"autoglm agent: --max-steps {args.max_steps} must be at least 1")
    if args.max_tokens < 1:
        raise SystemExit(f"autoglm agent: --max-tokens {args.max_tokens} must be at least 1")
    if args.action_delay is not None and args.action_delay < 0:
        raise SystemExit(f"autoglm agent: --action-delay {args.action_delay} is negative")
    system = None
    if args.system_prompt:
        try:
            system = Path(args.system_prompt).read_text(encoding="utf-8")
        except OSError as e:
            raise SystemExit(f"autoglm agent: cannot read --system-prompt: {e}") from None
        system = system.replace("{today}", date.today().isoformat())
    if args.device in ("adb", "hdc"):
        from .adb import AdbDevice
        from .hdc import HdcDevice

        kind = AdbDevice if args.device == "adb" else HdcDevice
        try:
            device = kind.with_app_file(args.serial, args.apps)
        except DeviceError as e:
            raise SystemExit(f"autoglm agent: {e}") from None
        what, delay = f"{args.device} device {args.serial or '(the only one attached)'}", 1.0
    else:
        device, delay = SimulatedPhone(), 0.0
        what = f"simulated phone {device.width}x{device.height}"
    screens = Path(args.screens) if args.screens else None
    try:
        if screens:
            screens.mkdir(parents=True, exist_ok=True)
        # Opened now: a log that cannot be written is said before the run, not after it.
        log = open(args.log, "w", encoding="utf-8") if args.log else None
    except OSError as e:
        raise SystemExit(f"autoglm agent: {e.strerror}: {e.filename}") from None

    def on_step(step) -> None:
        first = f" (first token {step.first_token_s:.2f})" if step.first_token_s else ""
        print(("\n" if args.live else "") +
              f"step {step.index}  [{step.app}]  screen {step.screen_s:.2f} s, reply "
              f"{step.reply_s:.2f} s{first}, action {step.action_s:.2f} s")
        if step.thinking and not args.live:
            print(f"  think: {_one_line(step.thinking)}")
        print(f"  {_one_line(step.action_text) or '(no action)'}  -> {step.outcome}", flush=True)

    options = AgentOptions(
        max_steps=args.max_steps,
        action_delay_s=delay if args.action_delay is None else args.action_delay,
        system_prompt=system,
        confirm=(lambda m: True) if args.yes else _ask_confirm,
        hand_over=_ask_hand_over, on_step=on_step,
        on_text=(lambda piece: print(piece, end="", flush=True)) if args.live else None,
        on_screen=(lambda i, shot: (screens / f"step-{i:03d}.png").write_bytes(shot.png))
        if screens else (lambda i, shot: None))
    chat = ChatClient(args.base_url, args.model, args.api_key,
                      sampling={"max_tokens": args.max_tokens})
    print(f"agent: {what}, server {args.base_url} (model {args.model})", flush=True)
    try:
        result = PhoneAgent(chat, device, options).run(args.task)
    finally:
        chat.close()
    if log is not None:
        with log:
            log.write(json.dumps(result.to_json_obj(), indent=1, ensure_ascii=False))
    n = len(result.steps)
    line = f"{result.status.replace('_', ' ')} after {n} step{'s' * (n != 1)}: {result.message}"
    print(line, file=sys.stdout if result.ok else sys.stderr)
    return 0 if result.ok else 1


def _ask_confirm(message: str) -> bool:
    return _ask(f"The model wants to confirm: {message}\nGo ahead? [y/N] ", yes="y")


def _ask_hand_over(message: str) -> bool:
    return _ask(f"The model hands over to you: {message}\nPress Enter when done "
                "(or type q to stop) ", yes="")


def _ask(question: str, yes: str) -> bool:
    """A question on the terminal; False where there is none to ask (stdin not a TTY)."""
    import sys

    if not sys.stdin.isatty():
        print(f"{question.splitlines()[0]}\n(no terminal to ask: taken as no)", file=sys.stderr)
        return False
    try:
        return input(question).strip().lower() == yes
    except EOFError:
        return False


def _one_line(text: str, limit: int = 160) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[:limit] + "..."

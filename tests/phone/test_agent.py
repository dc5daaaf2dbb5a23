"""The agent's loop against a real HTTP server with scripted replies
(tests/phone/scripted_server.py): the gestures each reply becomes on the simulated phone,
what the agent sends (the Open-AutoGLM client's requests), and every way a run ends."""
from __future__ import annotations

import base64
import contextlib
import io
import json
import socket
import subprocess
import sys
from pathlib import Path

from PIL import Image

from execution.phone.agent import AgentOptions, PhoneAgent
from execution.phone.chat import ChatClient
from execution.phone.device import HOME, SimulatedPhone

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
TASK = "Type Wi-Fi in Settings"
REPLIES = [
    '<think>The home screen. Settings first.</think><answer>do(action="Launch", app="Settings")</answer>',
    '<think>Settings is open.</think><answer>do(action="Type", text="Wi-Fi")</answer>',
    '<think>Look further down.</think>\n<answer>do(action="Swipe", start=[500, 800], end=[500, 200])',
    '<think>Back to the home screen.</think><answer>do(action="Tap", element=[50, 80])</answer>',
    '<think>Done.</think><answer>finish(message="Typed Wi-Fi in Settings")</answer>',
]


@contextlib.contextmanager
def scripted_server(tmp_path, replies):
    """Yields (base_url, function returning the request bodies received so far)."""
    script, requests = tmp_path / "replies.json", tmp_path / "requests.jsonl"
    script.write_text(json.dumps(replies))
    requests.write_text("")
    proc = subprocess.Popen([sys.executable, str(HERE / "scripted_server.py"), str(script),
                             str(requests)], stdout=subprocess.PIPE, text=True)
    try:
        port = int(proc.stdout.readline().split()[1])
        yield (f"http://127.0.0.1:{port}/v1",
               lambda: [json.loads(l) for l in requests.read_text().splitlines()])
    finally:
        proc.terminate()
        proc.wait(10)


def run_agent(url, phone, **options):
    chat = ChatClient(url, "autoglm-phone-9b")
    try:
        return PhoneAgent(chat, phone, AgentOptions(action_delay_s=0, **options)).run(TASK)
    finally:
        chat.close()


def images_of(body):
    return [p["image_url"]["url"] for m in body["messages"] if isinstance(m["content"], list)
            for p in m["content"] if p["type"] == "image_url"]


def test_a_whole_task_on_the_simulated_phone(tmp_path):
    phone = SimulatedPhone()
    with scripted_server(tmp_path, REPLIES) as (url, received):
        result = run_agent(url, phone)
        bodies = received()
    assert (result.status, result.message) == ("finished", "Typed Wi-Fi in Settings")
    assert [s.app for s in result.steps] == [HOME, "Settings", "Settings", "Settings", HOME]
    assert [s.action for s in result.steps] == ["Launch", "Type", "Swipe", "Tap", "finish"]
    assert [s.outcome for s in result.steps] == ["ok"] * 4 + ["finished"]
    assert all(s.first_token_s is not None and s.reply_s >= s.first_token_s
               and s.screen_s > 0 and s.action_s >= 0 for s in result.steps)
    # the gestures, in pixels of the 1080x2400 screen; the swipe's duration from its length
    assert phone.log == [("launch", "Settings"), ("type", "Wi-Fi"),
                         ("swipe", 540, 1920, 540, 480, 1547), ("tap", 54, 192)]
    assert phone.typed == {"Settings": "Wi-Fi"} and phone.current_app() == HOME

    # what went to the server: the Open-AutoGLM client's requests
    assert len(bodies) == 5
    for k, body in enumerate(bodies):
        assert {key: body[key] for key in ("model", "stream", "temperature", "top_p",
                                           "frequency_penalty", "max_tokens")} == \
            {"model": "autoglm-phone-9b", "stream": True, "temperature": 0.0, "top_p": 0.85,
             "frequency_penalty": 0.2, "max_tokens": 3000}
        msgs = body["messages"]
        assert [m["role"] for m in msgs] == ["system"] + ["user", "assistant"] * k + ["user"]
        assert len(images_of(body)) == 1 and images_of({"messages": msgs[-1:]})
        # earlier replies are kept as <think>..</think><answer>..</answer>, tags mended
        assert [m["content"] for m in msgs if m["role"] == "assistant"] == [
            r.replace("\n", "").replace("</answer>", "") + "</answer>" for r in REPLIES[:k]]
    first = bodies[0]["messages"][1]["content"][1]["text"]
    later = bodies[1]["messages"][-1]["content"][1]["text"]
    assert first == TASK + '\n\n{"current_app": "Home"}'
    assert later == '** Screen Info **\n\n{"current_app": "Settings"}'
    # the screenshots sent: the phone's screen at each step (home, then Settings)
    shots = [Image.open(io.BytesIO(base64.b64decode(images_of(b)[0].split(",", 1)[1])))
             for b in bodies]
    assert all(s.size == (1080, 2400) for s in shots)
    assert shots[0].tobytes() != shots[1].tobytes() and shots[0].tobytes() == shots[4].tobytes()


def test_a_refused_gesture_does_not_end_the_run(tmp_path):
    replies = ['<answer>do(action="Launch", app="Twitter")</answer>',
               '<answer>finish(message="No Twitter here")</answer>']
    with scripted_server(tmp_path, replies) as (url, _):
        result = run_agent(url, SimulatedPhone())
    assert result.status == "finished"
    assert result.steps[0].outcome.startswith("device refused: no app named 'Twitter'")


def test_wait_and_the_settle_delay_sleep(tmp_path):
    slept = []
    replies = ['do(action="Wait", duration="2 seconds")', 'do(action="Home")',
               'finish(message="ok")']
    with scripted_server(tmp_path, replies) as (url, _):
        chat = ChatClient(url, "autoglm-phone-9b")
        result = PhoneAgent(chat, SimulatedPhone(), AgentOptions(
            action_delay_s=0.5, sleep=slept.append)).run(TASK)
        chat.close()
    assert result.status == "finished"
    assert slept == [2.0, 0.5, 0.5]      # the wait itself, then the delay after each action


def test_a_sensitive_tap_waits_for_the_user(tmp_path):
    pay = '<answer>do(action="Tap", element=[500, 500], message="Pay 30 yuan")</answer>'
    asked = []
    for answer, status in ((False, "declined"), (True, "finished")):
        phone = SimulatedPhone()
        with scripted_server(tmp_path, [pay, 'finish(message="paid")']) as (url, _):
            result = run_agent(url, phone, confirm=lambda m: asked.append(m) or answer)
        assert result.status == status
        assert (("tap", 540, 1200) in phone.log) == answer
    assert asked == ["Pay 30 yuan"] * 2


def test_ends_on_no_action_server_error_hand_over_and_max_steps(tmp_path):
    cases = [
        # (replies, options, status, message has, requests sent, steps with a reply)
        (["I am not sure what to do."], {}, "no_action", "step 1: not a do(...)", 1, 1),
        ([{"text": "<think>Let me think about", "finish": "length"}], {}, "no_action",
         "(the reply was cut at max_tokens)", 1, 1),
        ([{"status": 400, "message": "Image too small"}], {}, "server_error",
         "answered 400: Image too small", 1, 0),
        ([{"raw": "data: {not json\n\n"}], {}, "server_error", "sent an event that is not JSON",
         1, 0),
        (['do(action="Take_over", message="Log in please")'], {}, "taken_over",
         "handed over to the user: Log in please", 1, 1),
        (['do(action="Back")'] * 3, {"max_steps": 2}, "max_steps", "no finish within 2 steps",
         2, 2),
    ]
    for replies, options, status, says, n_requests, n_steps in cases:
        with scripted_server(tmp_path, replies) as (url, received):
            result = run_agent(url, SimulatedPhone(), **options)
            assert len(received()) == n_requests
        assert result.status == status and says in result.message, (status, result)
        assert len(result.steps) == n_steps


def test_the_command_line(tmp_path):
    log, screens = tmp_path / "run.json", tmp_path / "screens"
    with scripted_server(tmp_path, REPLIES) as (url, _):
        r = subprocess.run([sys.executable, "-m", "launch.cli", "agent", TASK, "--base-url", url,
                            "--log", str(log), "--screens", str(screens)], cwd=REPO,
                           capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0] == f"agent: simulated phone 1080x2400, server {url} (model autoglm-phone-9b)"
    assert lines[-1] == "finished after 5 steps: Typed Wi-Fi in Settings"
    assert '  do(action="Type", text="Wi-Fi")  -> ok' in lines
    assert lines[1].startswith("step 1  [Home]  screen ") and "first token" in lines[1]
    run = json.loads(log.read_text())
    assert run["status"] == "finished" and len(run["steps"]) == 5
    assert sorted(p.name for p in screens.iterdir()) == [f"step-00{i}.png" for i in range(1, 6)]

    with scripted_server(tmp_path, REPLIES) as (url, _):
        live = subprocess.run([sys.executable, "-m", "launch.cli", "agent", TASK, "--base-url",
                               url, "--live"], cwd=REPO, capture_output=True, text=True,
                              timeout=120)
    assert live.returncode == 0 and "think:" not in live.stdout
    for reply in REPLIES:          # every reply printed whole, as it streamed in
        assert reply in live.stdout

    with scripted_server(tmp_path, ['do(action="Tap", element=[1, 2], message="Delete all")']) \
            as (url, _):
        r = subprocess.run([sys.executable, "-m", "launch.cli", "agent", TASK, "--base-url", url],
                           cwd=REPO, capture_output=True, text=True, timeout=120,
                           stdin=subprocess.DEVNULL)
    assert r.returncode == 1
    assert "(no terminal to ask: taken as no)" in r.stderr
    assert r.stderr.splitlines()[-1] == "declined after 1 step: the user declined: Delete all"

    with socket.socket() as s:              # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        nobody = f"http://127.0.0.1:{s.getsockname()[1]}/v1"
    r = subprocess.run([sys.executable, "-m", "launch.cli", "agent", TASK, "--base-url", nobody],
                       cwd=REPO, capture_output=True, text=True, timeout=120)
    assert r.returncode == 1
    assert r.stderr.splitlines()[-1].startswith(
        f"server error after 0 steps: cannot reach {nobody}/chat/completions: ")


def test_a_log_or_screens_place_that_cannot_be_written_is_said_before_the_run(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    for option, path in (("--log", tmp_path / "no" / "such" / "run.json"),
                         ("--screens", blocker / "screens")):
        with scripted_server(tmp_path, REPLIES) as (url, received):
            r = subprocess.run([sys.executable, "-m", "launch.cli", "agent", TASK, "--base-url",
                                url, option, str(path)], cwd=REPO, capture_output=True,
                               text=True, timeout=120)
            assert received() == []                     # nothing was asked of the model
        assert r.returncode == 1
        assert r.stderr.startswith("autoglm agent: ") and str(path) in r.stderr
        assert "Traceback" not in r.stderr

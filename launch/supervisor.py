"""Starts the stage processes and keeps them alive.

One `StageProcess` per stage. The supervisor loop (`step()`, every ~50 ms on the launcher's
main thread, so that PR_SET_PDEATHSIG, which fires when the *thread* that spawned a child exits,
stays bound to a thread that lives as long as the launcher):

* reads heartbeats and stage states from DDS;
* marks a stage dead when its process exits (at once) or when its last heartbeat is older than
  `dead_after_s` (3 s), kills what is left of it, publishes the `dead` state;
* fails every request the stage had taken (the ids on its in-flight board in shared memory,
  shm.inflight) with an `error` event naming the stage;
* restarts it after a backoff that doubles per consecutive failure (capped), unless it failed
  `crash_loop_failures` times within `crash_loop_window_s`: then it stays down, reported as
  crash-looping. The launcher then stops the pipeline: it cannot serve without the stage.

Each stage's stderr passes through the launcher (a thread per stage), which keeps the last
error line of it to name when it gives the stage up.
"""
from __future__ import annotations

import collections
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field

from control.naming import LAUNCHER_NODE
from runtime.compute import read_ready_detail
from runtime.lifecycle import State

from .spec import LaunchSpec, StageSpec, format_cores, spare_cores

MAX_BACKOFF_S = 10.0
# A stage gets this long to send its first heartbeat (imports, DDS discovery, model load).
STARTUP_GRACE_S = 30.0
STOP_GRACE_S = 5.0
SUPERVISOR_NODE = LAUNCHER_NODE


@dataclass
class StageProcess:
    spec: StageSpec
    popen: subprocess.Popen | None = None
    state: str = State.STARTING.value
    started_at: float = 0.0
    last_heartbeat: float | None = None   # monotonic seconds, this incarnation only
    restarts: int = 0
    failures: collections.deque = field(default_factory=collections.deque)
    consecutive_failures: int = 0
    restart_at: float | None = None
    crash_looping: bool = False
    ready_reported: bool = False
    device: str = ""             # where the stage's compute runs, as its `ready` said
    down: bool = False           # marked dead by us; cleared when restarted
    last_exit: str = ""
    last_error: str = ""         # the exception line of its last traceback on stderr
    relay: threading.Thread | None = None   # passes its stderr on (see _relay_stderr)

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def pid(self) -> int | None:
        return self.popen.pid if self.popen else None

    @property
    def running(self) -> bool:
        return self.popen is not None and self.popen.poll() is None


class Supervisor:
    def __init__(self, instance: str, spec: LaunchSpec, spec_path: str, *, log=None,
                 python: str = sys.executable):
        self.instance = instance
        self.spec = spec
        self.spec_path = os.path.abspath(spec_path)
        self.python = python
        # Given to every stage; the gateway runs its image and audio decoding there.
        self.spare_cores = spare_cores(spec, sorted(os.sched_getaffinity(0)))
        self.log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
        self.stages = {name: StageProcess(st) for name, st in spec.stages.items()}
        self.plane = None
        self.on_ready = None   # callback(StageProcess) when a stage first reports ready

    # --- DDS ----------------------------------------------------------------------------
    def open_control_plane(self) -> None:
        from control import topics as t
        from control.plane import ControlPlane

        self.plane = ControlPlane(self.instance, SUPERVISOR_NODE)
        self.w_state = self.plane.writer(t.STAGE_STATE)
        self.w_event = self.plane.writer(t.STAGE_EVENT)
        self.r_hb = self.plane.reader(t.HEARTBEAT)
        self.r_state = self.plane.reader(t.STAGE_STATE)
        # Config values are kept alive here: a transient-local value reaches stages that start
        # later (restarts) only while some writer still holds it, and the CLI or script that
        # set it usually exits at once.
        self.r_config = self.plane.reader(t.CONFIG)
        self.w_config = self.plane.writer(t.CONFIG)

    # --- processes ----------------------------------------------------------------------
    def command(self, sp: StageProcess) -> list[str]:
        spare = ["--spare-cores", ",".join(map(str, self.spare_cores))] if self.spare_cores else []
        return [self.python, "-m", "runtime.run_stage", "--instance", self.instance,
                "--stage", sp.name, "--spec", self.spec_path,
                "--cores", ",".join(map(str, sp.spec.cores)), *spare,
                "--parent-pid", str(os.getpid()), "--restarts", str(sp.restarts)]

    def start(self, sp: StageProcess) -> None:
        env = dict(os.environ)
        # The stage must import the project from wherever the launcher does.
        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        env["PYTHONUNBUFFERED"] = "1"
        # Own process group: a terminal's Ctrl-C reaches only the launcher, which then stops
        # the stages in order (instead of racing their exits against the supervisor loop).
        sp.popen = subprocess.Popen(self.command(sp), env=env, cwd=root, stdin=subprocess.DEVNULL,
                                    stderr=subprocess.PIPE, start_new_session=True)
        sp.relay = threading.Thread(target=_relay_stderr, args=(sp, sp.popen.stderr),
                                    name=f"stderr-{sp.name}", daemon=True)
        sp.relay.start()
        try:
            import psutil
            # Also pin from outside at once (the stage pins itself first thing as well).
            psutil.Process(sp.popen.pid).cpu_affinity(list(sp.spec.cores))
        except Exception:
            pass  # it may already have exited; the exit is handled by step()
        sp.state = State.STARTING.value
        sp.started_at = time.monotonic()
        sp.last_heartbeat = None
        sp.restart_at = None
        sp.ready_reported = False
        sp.down = False

    def start_all(self) -> None:
        for sp in self.stages.values():
            self.start(sp)

    # --- the loop -----------------------------------------------------------------------
    def step(self) -> None:
        now = time.monotonic()
        self._read_dds(now)
        for sp in self.stages.values():
            if sp.popen is not None and not sp.down:
                code = sp.popen.poll()
                if code is not None:
                    self._mark_dead(sp, f"process exited with {_exit_text(code)}", now)
                elif sp.last_heartbeat is None:
                    if now - sp.started_at > STARTUP_GRACE_S:
                        self._mark_dead(sp, f"no heartbeat within {STARTUP_GRACE_S:.0f} s of start", now)
                elif now - sp.last_heartbeat > self.spec.dead_after_s:
                    self._mark_dead(sp, f"no heartbeat for {now - sp.last_heartbeat:.1f} s", now)
            if sp.restart_at is not None and now >= sp.restart_at:
                sp.restarts += 1
                self.log(f"[launch] restarting {sp.name} (restart {sp.restarts})")
                self.start(sp)

    def given_up(self) -> list[StageProcess]:
        """The stages left down for crash-looping."""
        return [sp for sp in self.stages.values() if sp.crash_looping]

    def _read_dds(self, now: float) -> None:
        from control.messages import CONFIG_WITHDRAWN, ConfigValue

        for cfg in self.r_config.take(0):
            if cfg.source == SUPERVISOR_NODE:
                continue
            if cfg.value_json == CONFIG_WITHDRAWN:   # kept no longer: restarts do not get it
                self.w_config.dispose(ConfigValue(name=cfg.name))
            else:   # same request id: stages apply it once
                self.w_config.write(ConfigValue(name=cfg.name, request_id=cfg.request_id,
                                                value_json=cfg.value_json))
        for hb in self.r_hb.take(0):
            sp = self.stages.get(hb.stage)
            if sp and sp.popen and hb.pid == sp.popen.pid and not sp.down:
                sp.last_heartbeat = now
        for st in self.r_state.take(0):
            sp = self.stages.get(st.stage)
            if sp and sp.popen and st.pid == sp.popen.pid and st.source == sp.name and not sp.down:
                sp.state = st.state
                # keep-last-1: a stage that went ready -> busy at once may only show busy.
                if st.state in (State.READY.value, State.BUSY.value) and not sp.ready_reported:
                    sp.ready_reported = True
                    sp.device = read_ready_detail(st.detail)[0] or sp.device
                    if sp.last_heartbeat is None:
                        sp.last_heartbeat = now
                    if self.on_ready:
                        self.on_ready(sp)

    def _mark_dead(self, sp: StageProcess, reason: str, now: float) -> None:
        from control.messages import EventKinds, StageEvent

        self._kill(sp)
        _drain(sp, 1.0)   # its traceback is read before its death is reported
        sp.state = State.DEAD.value
        sp.down = True
        sp.last_exit = reason
        sp.failures.append(now)
        while sp.failures and now - sp.failures[0] > self.spec.crash_loop_window_s:
            sp.failures.popleft()
        sp.consecutive_failures += 1
        failed = self._take_board(sp)
        for rid in failed:
            self.w_event.write(StageEvent(
                request_id=rid, kind="error", code=503,
                detail=f"stage {sp.name!r} died ({reason}) while working on this request"))
        # And those it had not taken yet: the gateway fails the ones still waiting on it.
        self.w_event.write(StageEvent(source=sp.name, kind=EventKinds.STAGE_LOST, detail=reason))
        if len(sp.failures) >= self.spec.crash_loop_failures:
            sp.crash_looping = True
            sp.restart_at = None
            detail = (f"crash-looping: {len(sp.failures)} failures within "
                      f"{self.spec.crash_loop_window_s:g} s (last: {reason}); not restarted")
            self.log(f"[launch] {sp.name}: {detail}")
        else:
            delay = min(MAX_BACKOFF_S, self.spec.restart_backoff_s * 2 ** (sp.consecutive_failures - 1))
            sp.restart_at = now + delay
            detail = f"{reason}; restart in {delay:.1f} s"
            self.log(f"[launch] {sp.name} (pid {sp.pid}) dead: {detail}"
                     + (f"; failed {len(failed)} in-flight request(s)" if failed else ""))
        self._publish_state(sp, State.DEAD.value, detail)

    def _take_board(self, sp: StageProcess) -> list[str]:
        """The requests the dead stage held, from its in-flight board, which is removed:
        a second death before the restarted stage makes its own fails nobody twice."""
        from shm.inflight import board_path, read_board

        failed = read_board(self.instance, sp.name)
        try:
            os.unlink(board_path(self.instance, sp.name))
        except FileNotFoundError:
            pass
        return failed

    def _publish_state(self, sp: StageProcess, state: str, detail: str) -> None:
        from control.messages import StageState

        self.w_state.write(StageState(stage=sp.name, state=state, pid=sp.pid or 0,
                                      cores=list(sp.spec.cores), restarts=sp.restarts,
                                      detail=detail))

    def note_healthy(self) -> None:
        """Forget consecutive failures of stages that have been up a while (backoff reset)."""
        now = time.monotonic()
        for sp in self.stages.values():
            if sp.state in (State.READY.value, State.BUSY.value) and now - sp.started_at > 30:
                sp.consecutive_failures = 0

    # --- stopping -----------------------------------------------------------------------
    def _kill(self, sp: StageProcess) -> None:
        if sp.popen is None:
            return
        if sp.popen.poll() is None:
            try:
                sp.popen.kill()
            except ProcessLookupError:
                pass
        try:
            sp.popen.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass

    def stop_all(self, grace_s: float = STOP_GRACE_S) -> list[str]:
        """SIGTERM every stage, wait up to `grace_s`, SIGKILL the rest; reap them all.
        Returns the names of stages that had to be killed."""
        for sp in self.stages.values():
            sp.restart_at = None
            if sp.running:
                try:
                    sp.popen.send_signal(signal.SIGTERM)
                except ProcessLookupError:
                    pass
        deadline = time.monotonic() + grace_s
        killed = []
        for sp in self.stages.values():
            if sp.popen is None:
                continue
            try:
                sp.popen.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                killed.append(sp.name)
                sp.popen.kill()
                sp.popen.wait()
        for sp in self.stages.values():   # their last words reach the terminal
            _drain(sp, max(0.0, deadline + 1.0 - time.monotonic()))
        if self.plane is not None:
            for sp in self.stages.values():
                if sp.popen is not None:
                    try:
                        self._publish_state(sp, State.DEAD.value, "pipeline stopped")
                    except Exception:
                        pass
        return killed

    def close(self) -> None:
        if self.plane is not None:
            self.plane.close()
            self.plane = None

    def describe(self, sp: StageProcess) -> str:
        """The startup line of a stage: pid, cores read back from the OS, module, device."""
        try:
            import psutil
            cores = format_cores(psutil.Process(sp.pid).cpu_affinity())
        except Exception:
            cores = "?"
        shared = f" (shared with {', '.join(sp.spec.shares_cores_with)})" \
            if sp.spec.shares_cores_with else ""
        return (f"[launch] {sp.name:<10} pid {sp.pid:<7} cores {cores}{shared}  "
                f"module {sp.spec.module}  backend {sp.spec.backend}  "
                f"{f'device {sp.device}' if sp.device else f'gpu {sp.spec.gpu}'}  "
                f"ready in {time.monotonic() - sp.started_at:.2f} s")


def _relay_stderr(sp: StageProcess, pipe) -> None:
    """Pass a stage's stderr on to the launcher's, line by line, and keep the exception line
    of its last traceback (the first unindented line after "Traceback ...")."""
    try:
        out = sys.stderr.fileno()
    except (AttributeError, OSError, ValueError):
        out = 2
    in_traceback = False
    with pipe:
        for raw in iter(pipe.readline, b""):
            try:
                os.write(out, raw)
            except OSError:
                pass   # keep draining: a stage blocked on a full pipe would hang
            line = raw.decode(errors="replace").rstrip()
            if line.startswith("Traceback (most recent call last)"):
                in_traceback = True
            elif in_traceback and line and not line[0].isspace():
                sp.last_error, in_traceback = line, False


def _drain(sp: StageProcess, timeout: float) -> None:
    """Wait (bounded) until the relay has passed on all a finished stage wrote."""
    if sp.relay is not None:
        sp.relay.join(timeout)


def _exit_text(code: int) -> str:
    if code < 0:
        try:
            return f"signal {signal.Signals(-code).name}"
        except ValueError:
            return f"signal {-code}"
    return f"exit status {code}"

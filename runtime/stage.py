"""The stage runtime: everything a stage process does besides its compute.

    python -m runtime.run_stage --instance X --stage NAME --spec FILE --cores 0,1 --parent-pid P

1. guards against orphaning (dies with the launcher), pins itself to its cores before any
   thread exists, creates its DDS participant (here, in the fresh interpreter: no fork after
   DDS init);
2. announces `starting`, heartbeats every `heartbeat_s` from a thread, builds the compute with
   the stage module's `make_stage(ctx)`, announces `ready`;
3. hands every request, event, cancel, transcription job and config value to the compute
   (methods `on_request`, `on_event`, `on_cancel`, `on_transcribe`, `on_config`, all
   optional; only the topics it handles are read, and requests only of its
   `request_modality` when it has one; config values only of the names in its
   `config_params`, checked and converted first, plus `trace.enabled`: see _apply_config)
   and calls its `poll(timeout)` (optional: for stages
   that wait on a doorbell or step an engine) in between; an idle stage sleeps in one DDS
   WaitSet over all its readers (`ctx.wait_for_messages`), so a message is handled as soon
   as it arrives, not at the end of a polling slice;
4. on SIGTERM / SIGINT / a `shutdown` lifecycle command: `stopping`, compute.close(), `dead`,
   exit 0.

The compute never sees DDS: it talks through `StageContext` (pool/ring access and request
bookkeeping: begin / emit / finish / fail). `begin` notes the request on the stage's in-flight
board in shared memory (shm.inflight), from which the launcher fails the requests of a stage
that died; `finish` clears it and publishes the `done` (or `cancelled` / `error`) event, which
carries when the stage took the request (``t_begin_ns``).
"""
from __future__ import annotations

import gc
import importlib
import json
import os
import signal
import sys
import threading
import time
import traceback

from shm.inflight import MAX_ID_BYTES, InFlightBoard

from .compute import ready_detail
from .lifecycle import Lifecycle, State

# Longest idle wait in one piece. A signal ends the wait at once (_wake_on_signals), so this
# only bounds how stale an idle stage's periodic work may get (the decision stage's engine
# stats). It was 10 ms, to notice signals: 100 wake-ups a second of every idle stage, on the
# cores where the busy ones run.
LOOP_WAIT_S = 0.5
TRACE_CONFIG = "trace.enabled"   # config value (bool) switching every stage's spans on or off


# --- config values ------------------------------------------------------------------------
# A compute declares the config names it takes in ``config_params``: name -> converter. A
# converter gets the JSON value and returns the typed one, or raises ValueError naming what it
# expected; the runtime refuses such a value (the compute never sees it) and says so on the
# state topic, where `autoglm param set` reads the answer. Every stage takes trace.enabled.

def _shown(value) -> str:
    text = json.dumps(value)
    return text if len(text) <= 60 else text[:57] + "..."


_TRUE, _FALSE = {"true", "1", "on", "yes"}, {"false", "0", "off", "no"}


def config_bool(value) -> bool:
    """Strict: bool("off") is True, so a bare word must be one of the known spellings."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
        return value.strip().lower() in _TRUE
    raise ValueError(f"expected a boolean (true/false, on/off, yes/no, 1/0), got {_shown(value)}")


def config_int(minimum: int | None = None):
    """A converter taking a JSON integer (not a bool, not a float) >= `minimum`."""
    what = "an integer" + (f" >= {minimum}" if minimum is not None else "")

    def convert(value) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or \
                (minimum is not None and value < minimum):
            raise ValueError(f"expected {what}, got {_shown(value)}")
        return value
    return convert


def config_float(minimum: float | None = None):
    """A converter taking a finite JSON number (not a bool) >= `minimum`."""
    what = "a number" + (f" >= {minimum:g}" if minimum is not None else "")

    def convert(value) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or \
                value != value or value in (float("inf"), float("-inf")) or \
                (minimum is not None and value < minimum):
            raise ValueError(f"expected {what}, got {_shown(value)}")
        return float(value)
    return convert


# The answer on the state topic to config value NAME=VALUE_JSON is "config NAME=VALUE_JSON "
# followed by one of these (launch/param_cli.py reads them).
CONFIG_APPLIED = "applied"
CONFIG_REFUSED = "refused: "
CONFIG_IGNORED = "ignored: "
CONFIG_KNOWN = "its parameters: "


class StageContext:
    """What a stage's compute may use."""

    def __init__(self, rt: "StageRuntime"):
        self._rt = rt
        self.instance = rt.instance
        self.name = rt.name
        self.launch = rt.spec                 # the whole LaunchSpec
        self.stage = rt.stage_spec            # this stage's StageSpec
        self.params = dict(rt.stage_spec.params)
        self.http = (rt.spec.http_host, rt.spec.http_port)
        self.model_dir = rt.spec.model_dir
        self.spare_cores = rt.spare_cores     # cores no stage is pinned to (may be empty)
        self.config: dict = {}                # dynamic settings received so far
        self._pools: dict = {}
        self._rings: dict = {}

    # --- tracing ------------------------------------------------------------------------
    @property
    def tracer(self):
        """This process's profiler.emit.SpanEmitter over the runtime's trace writer: spans
        (``tracer.emit/mark/span``) for `autoglm profile`. Switched off and on at run time by
        the config value ``trace.enabled`` (or at start by AUTOGLM_TRACE=0)."""
        return self._rt.tracer

    # --- data plane ---------------------------------------------------------------------
    def pool(self, name: str):
        """The slot pool `name` of this instance (attached once, kept open)."""
        p = self._pools.get(name)
        if p is None:
            from shm.pool import SlotPool
            p = self._pools[name] = SlotPool.attach(self.instance, name)
        return p

    def ring(self, name: str):
        r = self._rings.get(name)
        if r is None:
            from shm.ring import Ring
            r = self._rings[name] = Ring.attach(self.instance, name)
        return r

    # --- control plane -----------------------------------------------------------------
    def wait_for_messages(self, timeout: float) -> bool:
        """Sleep until a request, event, cancel, config value or command arrives for this
        stage, or `timeout` s pass; True if one arrived (the runtime hands it out next)."""
        return self._rt.inbox.wait(timeout)

    # --- request bookkeeping ------------------------------------------------------------
    def begin(self, request_id: str) -> None:
        """This stage took the request: on the in-flight board, state busy."""
        self._rt.begin(request_id)

    def emit(self, kind: str, request_id: str, **fields) -> None:
        """Publish a StageEvent (fields: modality, output, n_tokens, grid_thw, code, detail)."""
        self._rt.emit(kind, request_id, **fields)

    def finish(self, request_id: str, kind: str = "done", **fields) -> None:
        """This stage is done with the request (`done`, or `cancelled`)."""
        self._rt.finish(request_id, kind, **fields)

    def fail(self, request_id: str, detail: str, code: int = 1) -> None:
        self._rt.finish(request_id, "error", detail=detail, code=code)

    def log(self, msg: str) -> None:
        print(f"[{self.name}] {msg}", file=sys.stderr, flush=True)

    def close(self) -> None:
        for ch in list(self._pools.values()) + list(self._rings.values()):
            try:
                ch.close()
            except Exception:
                pass


class StageRuntime:
    def __init__(self, instance: str, name: str, spec, *, cores=None, spare_cores=(),
                 restarts: int = 0, parent_pid: int | None = None):
        self.instance = instance
        self.name = name
        self.spec = spec
        self.stage_spec = spec.stage(name)
        self.cores = list(cores) if cores is not None else list(self.stage_spec.cores)
        self.spare_cores = list(spare_cores)   # no stage's: for worker threads (the launcher's)
        self.restarts = restarts
        self.parent_pid = parent_pid
        self.pid = os.getpid()
        self.in_flight: dict[str, int] = {}   # request id -> start time (monotonic ns)
        self._config_seen: set[str] = set()   # request ids of the config values applied
        self._stop = threading.Event()
        self._signalled = False      # set by the signal handler only (see _on_signal)
        self._lock = threading.Lock()
        self.lifecycle = Lifecycle(self._on_state_change)
        self.plane = None
        self.board = None            # shm.inflight.InFlightBoard: the requests in in_flight
        self.compute = None
        self.ctx = None
        self._hb_seq = 0
        self._hb = None
        self._state_said = True   # False: a ready/busy change the heartbeat has yet to say
        self._ready_detail = ""   # what `ready` says: the compute's device and notes

    # --- startup ------------------------------------------------------------------------
    def run(self) -> int:
        from .pinning import pin_current_process
        from .process_guard import guard_against_orphaning

        guard_against_orphaning(self.parent_pid)
        self.cores = pin_current_process(self.cores)
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)
        self._open_control_plane()
        self._wake_on_signals()
        self.board = InFlightBoard.create(self.instance, self.name)
        self._publish_state(State.STARTING)
        self._hb = threading.Thread(target=self._heartbeat_loop, name="heartbeat", daemon=True)
        self._hb.start()
        try:
            self.ctx = StageContext(self)
            module = importlib.import_module(self.stage_spec.module)
            self.compute = module.make_stage(self.ctx)
            self._keep_work_readers()
            # Everything built so far (modules, the model, the engine) lives as long as the
            # stage: out of the garbage collector's sight, so that no full collection walks
            # it again. With torch and the engine loaded, one took ~100 ms on the 2-core VM,
            # and it fell on whichever request was running when it came.
            gc.collect()
            gc.freeze()
            # Where the compute runs, as it found it (a stage asked for a GPU runs on the CPU
            # where there is none): the launcher's line for the stage says it. Then what the
            # compute says it does (ready_notes: the vision stage's "resizes frames").
            self._ready_detail = ready_detail(getattr(self.compute, "device", None),
                                              getattr(self.compute, "ready_notes", ()))
            self.lifecycle.to(State.READY)
            self.ctx.log(f"ready (pid {self.pid}, cores {self.cores})")
            self._loop()
            return 0
        except Exception as e:
            traceback.print_exc()
            self._publish_state(self.lifecycle.state, detail=f"crashed: {type(e).__name__}: {e}")
            return 1
        finally:
            self._shutdown()

    def _open_control_plane(self) -> None:
        from control import topics as t
        from control.plane import ControlPlane, ReaderSet

        self.plane = ControlPlane(self.instance, self.name)
        self.w_state = self.plane.writer(t.STAGE_STATE)
        self.w_hb = self.plane.writer(t.HEARTBEAT)
        self.w_event = self.plane.writer(t.STAGE_EVENT)
        self.w_trace = self.plane.writer(t.TRACE_SPAN)
        from profiler.emit import SpanEmitter
        # Bundled: spans go out when the stage is idle (or every 0.5 s: BUNDLE_MAX_AGE_NS),
        # not one DDS write each in the middle of the request they time.
        # enabled=None: it follows the process's switch (AUTOGLM_TRACE, then trace.enabled),
        # as the gateway's own emitter in this process does (execution.shm_client).
        self.tracer = SpanEmitter(self.w_trace, enabled=None, bundle=True)
        self.r_config = self.plane.reader(t.CONFIG)
        self.w_config_answer = self.plane.writer(t.CONFIG_ANSWER)
        self.r_command = self.plane.reader(t.LIFECYCLE_COMMAND)
        # Every topic a compute may take: (reader, handler, modality of the requests it
        # carries). Made now, before the compute is built, so that discovery is done while the
        # model loads: a reader made just before `ready` could miss a request published at
        # once. _keep_work_readers() closes the ones the compute does not take.
        self._candidates = [(self.plane.reader(t.REQUEST), "on_request", None)]
        self._candidates += [(self.plane.reader(spec), "on_request", modality)
                             for modality, spec in t.REQUEST_BY_MODALITY.items()]
        # Its own events (started, done) are not delivered back to a stage: each would wake
        # it and cost a deserialisation (~0.1 ms on the 2-core host), between engine steps.
        self._candidates.append((self.plane.reader(t.STAGE_EVENT, own_writes=False), "on_event", None))
        self._candidates += [(self.plane.reader(spec), handler, None) for spec, handler in (
            (t.CANCEL, "on_cancel"), (t.TRANSCRIBE, "on_transcribe"))]
        self.work: dict = {}          # reader -> handler name, the topics the compute takes
        self.inbox = ReaderSet(self.plane, [self.r_config, self.r_command])

    def _keep_work_readers(self) -> None:
        """Keep the readers of the topics the compute has a handler for and close the others:
        a message on a topic nobody handles still cost its writer a send and this process a
        wake-up and a deserialisation, on a host whose cores the stages share. A compute with
        ``request_modality`` (the vision stage: "image") keeps only the reader of the requests
        that carry it (control.topics.REQUEST_BY_MODALITY)."""
        from control.plane import ReaderSet

        c = self.compute
        wanted = getattr(c, "request_modality", None)
        for reader, handler, modality in self._candidates:
            if hasattr(c, handler) and (handler != "on_request" or modality == wanted):
                self.work[reader] = handler
            else:
                reader.close()
        self._candidates = []
        # A compute that steps an engine (`watch_inbox`: the decision stage) has the runtime
        # ask between two steps, once per token, whether a message came: a watched set
        # answers that from an attribute instead of a call into DDS.
        old, self.inbox = self.inbox, ReaderSet(
            self.plane, [self.r_config, self.r_command, *self.work],
            watched=bool(getattr(c, "watch_inbox", False)))
        old.close()

    # --- main loop ----------------------------------------------------------------------
    def _loop(self) -> None:
        poll = getattr(self.compute, "poll", None)
        while not (self._signalled or self._stop.is_set()):
            # Between two engine steps this runs once per token: take from the readers that
            # hold something (a watched inbox knows there are none without asking DDS).
            taken = self.inbox.take_ready()
            got = self._dispatch(taken) if taken else 0
            if self._signalled or self._stop.is_set():
                break
            if not got and not self.in_flight:
                self.tracer.flush()   # idle: the spans held since the last flush go out
            if poll is not None:
                poll(0 if got else LOOP_WAIT_S)
            elif not got:
                self.inbox.wait(LOOP_WAIT_S)

    def _dispatch(self, taken) -> int:
        """Hand out what was taken (ReaderSet.take_ready(), in the set's order: config,
        commands, then the compute's topics)."""
        n = 0
        for reader, msgs in taken:
            n += len(msgs)
            if reader is self.r_config:
                for cfg in msgs:
                    self._apply_config(cfg)
            elif reader is self.r_command:
                for cmd in msgs:
                    if cmd.target in (self.name, "*") and cmd.command == "shutdown":
                        self._stop.set()
            else:
                handler = self.work[reader]
                for msg in msgs:
                    if handler != "on_event" or msg.source != self.name:  # not our own events
                        self._call(handler, msg)
        return n

    def _call(self, method: str, msg) -> None:
        fn = getattr(self.compute, method, None)
        if fn is None:
            return
        try:
            fn(msg)
        except Exception as e:
            # A bug on one request must not take the stage down: fail that request.
            traceback.print_exc()
            rid = getattr(msg, "request_id", "")
            if rid:
                self.finish(rid, "error", detail=f"{self.name}: {type(e).__name__}: {e}")

    def _apply_config(self, cfg) -> None:
        from control.messages import CONFIG_WITHDRAWN, ConfigAnswer

        if cfg.value_json == CONFIG_WITHDRAWN:
            return   # a value taken back: for the launcher, which keeps it no longer
        if cfg.request_id:
            if cfg.request_id in self._config_seen:
                return  # the launcher's copy of a value already applied (it keeps values
                        # alive), which may also arrive after a newer value from elsewhere
            self._config_seen.add(cfg.request_id)
        try:
            outcome = self._take_config(cfg.name, cfg.value_json)
        except Exception as e:
            # A config value must never take the stage down: a bad one kept by the launcher
            # would otherwise kill every restart of it (crash loop, then given up).
            reason = str(e) if isinstance(e, ValueError) and str(e) else \
                f"{type(e).__name__}: {e}"
            outcome = CONFIG_REFUSED + (reason.splitlines() or [""])[0]   # one line
            self.ctx.log(f"config {cfg.name}={cfg.value_json[:80]} {outcome}")
        # The answer for whoever set it (`param set` waits for every stage's), and the stage's
        # state says it too, for tools that join later (a restarted stage's kept values).
        self.w_config_answer.write(ConfigAnswer(request_id=cfg.request_id, name=cfg.name,
                                                value_json=cfg.value_json, outcome=outcome))
        self._publish_state(self.lifecycle.state, request_id=cfg.request_id,
                            detail=f"config {cfg.name}={cfg.value_json} {outcome}")

    def config_params(self) -> dict | None:
        """The config names this stage takes -> their converters; None: a compute with an
        on_config and no config_params, which is handed every name (as it was before names
        were declared)."""
        own = getattr(self.compute, "config_params", None)
        if own is None and hasattr(self.compute, "on_config"):
            return None
        return {TRACE_CONFIG: config_bool, **(own or {})}

    def _take_config(self, name: str, value_json: str) -> str:
        """Apply one value; the answer (CONFIG_APPLIED or CONFIG_IGNORED...); raises for a
        value refused (not JSON, wrong type, or the compute's on_config raised)."""
        params = self.config_params()
        if params is not None and name not in params:
            return (f"{CONFIG_IGNORED}not a parameter of {self.name} "
                    f"({CONFIG_KNOWN}{', '.join(sorted(params))})")
        try:
            value = json.loads(value_json)
        except ValueError:
            raise ValueError(f"the value is not JSON: {value_json[:60]!r}") from None
        if name == TRACE_CONFIG:
            value = config_bool(value)
        elif params is not None:
            value = params[name](value)
        fn = getattr(self.compute, "on_config", None)
        if fn is not None:
            fn(name, value)
        self.ctx.config[name] = value
        if name != TRACE_CONFIG:
            return CONFIG_APPLIED
        from profiler.emit import process_tracing, set_process_tracing

        was = process_tracing()
        set_process_tracing(value)
        # What was in force: `autoglm profile --measure-cost` puts it back afterwards.
        return f"{CONFIG_APPLIED} (spans were {'on' if was else 'off'})"

    # --- request bookkeeping (called through StageContext) --------------------------------
    def begin(self, rid: str) -> None:
        with self._lock:
            if rid in self.in_flight:
                return
            self.in_flight[rid] = time.monotonic_ns()
            tracked = self.board.add(rid)
        if not tracked:
            self.ctx.log(f"request {rid[:40]!r} is not on the in-flight board (full, or an id "
                         f"over its {MAX_ID_BYTES} bytes): if this stage dies, the launcher "
                         "cannot fail it")
        if self.lifecycle.state == State.READY:
            self.lifecycle.to(State.BUSY)

    def emit(self, kind: str, rid: str, **fields) -> None:
        from control.messages import StageEvent

        self.w_event.write(StageEvent(request_id=rid, kind=kind, **fields))

    def finish(self, rid: str, kind: str, **fields) -> None:
        with self._lock:
            start = self.in_flight.pop(rid, None)
            idle = not self.in_flight
            self.board.remove(rid)
        self.emit(kind, rid, t_begin_ns=start or 0, **fields)
        if start is not None:
            # The stage's hold of the request (begin .. finish), e.g. "vision.done".
            self.tracer.emit(f"{self.name}.{kind}", rid, start)
        if idle and self.lifecycle.state == State.BUSY:
            self.lifecycle.to(State.READY)

    # --- state and heartbeats -----------------------------------------------------------
    # Going busy and back happens once per request at low load; the heartbeat thread says
    # it (within heartbeat_s) instead of the request's own path: a state write there cost
    # the request 0.1-0.2 ms on the 2-core host. Every other transition is said at once.
    _DEFERRED = {(State.READY, State.BUSY), (State.BUSY, State.READY)}

    def _on_state_change(self, old: State, new: State) -> None:
        if (old, new) in self._DEFERRED:
            self._state_said = False
            return
        self._publish_state(new)

    def _publish_state(self, state: State, *, detail: str = "", request_id: str = "") -> None:
        from control.messages import StageState

        if state in (State.READY, State.BUSY) and not detail:
            detail = self._ready_detail   # the launcher may see busy first (keep-last-1)
        self.w_state.write(StageState(stage=self.name, request_id=request_id, state=state.value,
                                      pid=self.pid, cores=list(self.cores),
                                      restarts=self.restarts, detail=detail))

    def _heartbeat_loop(self) -> None:
        from control.messages import Heartbeat

        period = self.spec.heartbeat_s
        while not self._stop.is_set():
            self._hb_seq += 1
            try:
                if not self._state_said:
                    self._state_said = True
                    self._publish_state(self.lifecycle.state)
                self.w_hb.write(Heartbeat(stage=self.name, seq=self._hb_seq, pid=self.pid,
                                          state=self.lifecycle.state.value,
                                          in_flight=len(self.in_flight)))
            except Exception:
                if self._stop.is_set() or self.plane.closed:
                    return
                raise
            self._stop.wait(period)

    # --- shutdown -----------------------------------------------------------------------
    def _on_signal(self, signum, frame) -> None:
        # Only a flag. A handler runs between two bytecodes of the main thread, possibly inside
        # Event.set() with its lock held; taking that lock again here deadlocked the stage
        # when a second SIGTERM came (parent-death signal, then the watchdog's). The main loop
        # sees the flag once its wait ends, which _wake_on_signals makes happen at once, and
        # _shutdown() stops the other threads.
        self._signalled = True

    def _wake_on_signals(self) -> None:
        """End the main loop's wait as soon as a signal comes. Python's C-level handler
        writes the signal number to the wake-up fd at once, whatever the main thread is
        blocked in; a thread reading it wakes the inbox's WaitSet, the wait returns, and the
        main thread then runs _on_signal. (The Python-level handler alone would wait for the
        DDS wait to time out.) A compute whose poll() sleeps elsewhere bounds that sleep
        itself (execution.stage.MinimalGatewayStage)."""
        r, w = os.pipe()
        os.set_blocking(w, False)
        signal.set_wakeup_fd(w, warn_on_full_buffer=False)

        def relay() -> None:
            while os.read(r, 64):
                self.inbox.wake()

        threading.Thread(target=relay, name="signal-wakeup", daemon=True).start()

    def _shutdown(self) -> None:
        self._stop.set()
        try:
            if self.lifecycle.state not in (State.STOPPING, State.DEAD):
                self.lifecycle.to(State.STOPPING)
            close = getattr(self.compute, "close", None)
            if close is not None:
                close()
            if self.ctx is not None:
                self.ctx.close()
            self.tracer.flush()
            if self.board is not None:
                # Left in place: requests still on it are failed by the launcher, which
                # reads the board of any stage whose process ended.
                self.board.close()
            self.lifecycle.to(State.DEAD)
        finally:
            if self._hb is not None:
                self._hb.join(timeout=2.0)
            if self.plane is not None:
                # Let the last state reach the readers before the participant goes away.
                time.sleep(0.05)
                self.plane.close()

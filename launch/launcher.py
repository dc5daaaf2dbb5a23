"""`autoglm launch`: validate the spec, create the shm channels, start and supervise the stages,
and on Ctrl-C / SIGTERM stop them and remove every segment.

A stage the supervisor gives up on (crash-looping) stops the whole pipeline the same way, and
the launcher exits 1 naming the stage: a pipeline without one of its stages cannot serve.

Order matters on the way down: stages first (they hold mappings and doorbell sockets), then the
control plane, then the shm instance directory.
"""
from __future__ import annotations

import os
import signal
import sys
import threading
import time

from .spec import LaunchSpec, format_cores, load_spec, spare_cores

STEP_S = 0.05


class Launcher:
    def __init__(self, spec: LaunchSpec, spec_path: str, instance: str, *, out=None):
        self.spec = spec
        self.spec_path = spec_path
        self.instance = instance
        self.out = out or sys.stdout
        self._stop = threading.Event()   # request_stop(), from any thread
        self._signalled = False          # set by the signal handler only
        self.supervisor = None
        self.shm = None
        self.cpu_latency = None

    def say(self, msg: str) -> None:
        print(msg, file=self.out, flush=True)

    def request_stop(self, *_args) -> None:
        self._stop.set()

    def _on_signal(self, *_args) -> None:
        # Only a flag: a handler that takes the Event's lock can deadlock against the main
        # thread interrupted inside wait() (a second Ctrl-C). Seen within one STEP_S.
        self._signalled = True

    def run(self, *, install_signals: bool = True, ready_file: str | None = None) -> int:
        from control.naming import domain_id_for

        from .channels import create_channels, write_manifest
        from .supervisor import Supervisor

        if install_signals:
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                signal.signal(sig, self._on_signal)
        spec = self.spec
        # First, so that an instance already in use is refused before anything is said or run.
        self.shm = create_channels(self.instance, spec)
        machine = sorted(os.sched_getaffinity(0))
        used = sorted({c for st in spec.stages.values() for c in st.cores})
        sharing = len(spec.stages) > len(used) or any(st.shares_cores_with
                                                       for st in spec.stages.values())
        spare = spare_cores(spec, machine)
        self.say(f"[launch] instance {self.instance!r}: {len(spec.stages)} stages on cores "
                 f"{format_cores(used)} of {format_cores(machine)}"
                 + (" (several stages share cores: this machine has fewer cores than stages)"
                    if sharing else "")
                 + (f", cores {format_cores(spare)} spare" if spare else "")
                 + f"; DDS domain {domain_id_for(self.instance)}; spec {self.spec_path}")
        failure = None
        try:
            self._hold_cpu_latency()
            write_manifest(self.shm, spec, self.spec_path)
            self.say(f"[launch] shm channels in {self.shm.path}: "
                     + ", ".join(f"{c.name} ({c.kind} {c.slots}x{c.slot_bytes} B)"
                                 for c in spec.channels.values()))
            self.supervisor = sup = Supervisor(self.instance, spec, self.spec_path)
            sup.open_control_plane()
            pending = set(sup.stages)

            def on_ready(sp):
                self.say(sup.describe(sp))
                if sp.name in pending:
                    pending.discard(sp.name)
                    if not pending:
                        self.say(f"[launch] all {len(sup.stages)} stages ready; "
                                 f"Ctrl-C stops the pipeline")
                        if ready_file:
                            with open(ready_file, "w") as f:
                                f.write(str(os.getpid()))

            sup.on_ready = on_ready
            sup.start_all()
            failure = self._supervise(sup)
        finally:
            self.shutdown()
        if failure:
            print(f"autoglm launch: {failure}", file=sys.stderr, flush=True)
            return 1
        return 0

    def _supervise(self, sup) -> str | None:
        """Step the supervisor until a stop is asked (None) or a stage is given up (why)."""
        last_health = time.monotonic()
        while not self._stop.wait(STEP_S) and not self._signalled:
            sup.step()
            lost = sup.given_up()
            if lost:
                self.say(f"[launch] the pipeline cannot serve without "
                         f"{', '.join(sp.name for sp in lost)}: stopping it")
                return _given_up_text(lost[0], self.spec)
            if time.monotonic() - last_health > 5:
                sup.note_healthy()
                last_health = time.monotonic()
        return None

    def _hold_cpu_latency(self) -> None:
        us = self.spec.cpu_latency_us
        if us is None:
            return
        from .cpu_latency import DEVICE, hold

        self.cpu_latency, why = hold(us)
        if self.cpu_latency is not None:
            self.say(f"[launch] CPU wake-up latency held at {us} us ({DEVICE}) while the "
                     f"pipeline runs: idle cores poll instead of sleeping (lower hand-off "
                     f"latency, more power); [pipeline] cpu_latency_us in the spec sets it")
        else:
            self.say(f"[launch] CPU wake-up latency not held ({why}): hand-offs between "
                     f"stages wait for sleeping cores to wake")

    def shutdown(self) -> None:
        # Ignore further Ctrl-C while tearing down: a half-finished teardown leaves orphans.
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                signal.signal(sig, signal.SIG_IGN)
        if self.supervisor is not None:
            self.say("[launch] stopping stages")
            killed = self.supervisor.stop_all()
            if killed:
                self.say(f"[launch] killed (did not stop within grace): {', '.join(killed)}")
            self.supervisor.close()
            self.supervisor = None
        if self.shm is not None:
            path = self.shm.path
            self.shm.close()
            self.shm = None
            self.say(f"[launch] removed {path}; stopped")
        if self.cpu_latency is not None:
            self.cpu_latency.close()
            self.cpu_latency = None


def _given_up_text(sp, spec: LaunchSpec) -> str:
    """One line: the stage, why it was given up, and its last error where it printed one."""
    return (f"stage {sp.name!r} failed {spec.crash_loop_failures} times within "
            f"{spec.crash_loop_window_s:g} s (last: {sp.last_exit}) and was not restarted"
            + (f"; last error: {sp.last_error}" if sp.last_error else ""))


def launch(spec_path: str | None, instance: str, *, ready_file: str | None = None) -> int:
    from .spec import DEFAULT_SPEC

    path = str(spec_path) if spec_path else str(DEFAULT_SPEC)
    spec = load_spec(path)
    return Launcher(spec, path, instance).run(ready_file=ready_file)

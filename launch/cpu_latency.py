"""Holding the CPUs' wake-up latency down while the pipeline runs (Linux PM QoS).

An idle core sleeps in a C-state; in a virtual machine it halts the vCPU, which the host then
deschedules. Waking it costs the next message its delivery and then a cold cache: on the
2-core VM this project is measured on, a piece of Python that takes 2 us on a busy core took
14 us (median) right after a 2 ms sleep and 100 us after a 10 ms sleep; with the hold, 7 and
42 us (`python -m benchmarks.wakeup`, benchmarks/results/wakeup-cpu.json). Every hand-off
between stages lands on a core that just went idle, so the pipeline pays that per hop and per
streamed token.

The kernel's remedy is a PM QoS request: a process writes the longest acceptable exit
latency (microseconds, int32) to /dev/cpu_dma_latency and keeps the file open; cpuidle then
only picks idle states at least that fast (0: the polling state, no halt). It is what
tuned's latency-performance profile and cyclictest do. The request ends when the file is
closed, also when the process dies, so a crashed launcher leaves nothing behind.

Only a cpuidle driver reads the request. A kernel without one (current_driver "none", as on
the VM lent on 2026-12-04) idles every core with a plain halt whatever is asked, so the
launcher holds nothing there and says why.

The cost: idle cores poll instead of sleeping (more power, a busy-looking vCPU to the host).
The launcher holds the request only when the spec asks ([pipeline] cpu_latency_us) and says
so on start; writing the file needs root (or write access to it), and without it the
pipeline runs as before and says why.
"""
from __future__ import annotations

import errno
import os
import struct

DEVICE = "/dev/cpu_dma_latency"
CPUIDLE_DRIVER = "/sys/devices/system/cpu/cpuidle/current_driver"


class CpuLatencyHold:
    """An open PM QoS request; ``close()`` (or process exit) ends it."""

    def __init__(self, fd: int, latency_us: int):
        self.fd, self.latency_us = fd, latency_us

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


def hold(latency_us: int, device: str = DEVICE,
         cpuidle_driver: str = CPUIDLE_DRIVER) -> tuple[CpuLatencyHold | None, str]:
    """Ask for at most ``latency_us`` of CPU wake-up latency. Returns (the hold, "") or
    (None, why not)."""
    if latency_us < 0:
        raise ValueError(f"cpu_latency_us must be >= 0, got {latency_us}")
    try:
        with open(cpuidle_driver) as f:
            driver = f.read().strip()
    except OSError:
        driver = "none"   # no cpuidle in this kernel at all
    if driver == "none":
        return None, ("this kernel has no cpuidle driver: idle cores halt whatever is asked, "
                      "so there is nothing to hold")
    try:
        fd = os.open(device, os.O_WRONLY | os.O_CLOEXEC)
    except OSError as e:
        hint = " (run as root to allow it)" if e.errno in (errno.EACCES, errno.EPERM) else ""
        return None, f"cannot open {device}: {e.strerror}{hint}"
    try:
        os.write(fd, struct.pack("i", latency_us))
    except OSError as e:
        os.close(fd)
        return None, f"cannot write {device}: {e.strerror}"
    return CpuLatencyHold(fd, latency_us), ""

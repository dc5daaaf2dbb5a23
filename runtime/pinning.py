"""CPU pinning of the current process, applied before any worker threads exist so that every
thread created later (numpy/torch pools, DDS) inherits the mask."""
from __future__ import annotations

import os


def pin_current_process(cores) -> list[int]:
    """Restrict this process to `cores`; return the mask read back from the kernel."""
    cores = sorted(set(int(c) for c in cores))
    os.sched_setaffinity(0, cores)
    # Thread pools sized from os.cpu_count() would oversubscribe the pinned cores.
    n = str(len(cores))
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(var, n)
    return sorted(os.sched_getaffinity(0))


def cores_allowed_list(pid: int) -> str:
    """The kernel's own view of a process's mask: Cpus_allowed_list in /proc/PID/status."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("Cpus_allowed_list:"):
                return line.split(":", 1)[1].strip()
    raise RuntimeError(f"/proc/{pid}/status has no Cpus_allowed_list")

"""Create and remove the shm channels a launch spec declares."""
from __future__ import annotations

from shm.instance import Instance

from .spec import LaunchSpec


def create_channels(instance: str, spec: LaunchSpec) -> Instance:
    """Create the instance directory and every channel of `spec` in it. The returned Instance
    owns the directory: `close()` removes it with every segment and doorbell socket."""
    from runtime.records import record_dtype

    # The launcher handles SIGTERM/SIGINT itself (stop stages first, then remove shm).
    inst = Instance.create(instance, handle_signals=False)
    try:
        for ch in spec.channels.values():
            if ch.kind == "pool":
                inst.create_pool(ch.name, ch.slot_bytes, ch.slots).close()
            else:
                inst.create_ring(ch.name, record_dtype(ch.record), ch.slots).close()
    except BaseException:
        inst.close()
        raise
    return inst


MANIFEST = "launch.json"


def write_manifest(inst: Instance, spec: LaunchSpec, spec_path: str) -> str:
    """Record, next to the channels, which stage writes and reads each one: a slot pool has
    no subscriber table, so this is how `autoglm topic` names a pool's endpoints. The file
    goes away with the instance directory."""
    import json
    import os

    doc = {"spec": os.path.abspath(spec_path), "launcher_pid": os.getpid(),
           "stages": {st.name: {"module": st.module, "cores": list(st.cores),
                                "inputs": list(st.inputs), "outputs": list(st.outputs)}
                      for st in spec.stages.values()}}
    path = os.path.join(inst.path, MANIFEST)
    tmp = path + ".tmp"
    # 0600 as every file of the instance (docs/architecture.md), whatever the umask.
    with open(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w") as f:
        json.dump(doc, f, indent=1)
    os.replace(tmp, path)
    return path


def read_manifest(instance: str) -> dict | None:
    import json
    import os

    from shm._paths import instance_dir

    try:
        with open(os.path.join(instance_dir(instance), MANIFEST)) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None

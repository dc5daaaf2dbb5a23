"""Per-process stage runtime: the plumbing every stage process shares (DDS participant,
heartbeat, lifecycle, config, CPU pinning, shutdown). A stage's compute lives in its own module
and is handed a `StageContext`; see runtime/stage.py."""

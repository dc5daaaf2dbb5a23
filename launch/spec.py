"""The launch spec (format documented in launch/specs/default.toml). The parser lives in
runtime/spec.py because stage processes read the spec too, and nothing imports launch/."""
from runtime.spec import (DEFAULT_SPEC, ChannelSpec, LaunchSpec, SpecError, StageSpec,  # noqa: F401
                          available_cores, format_cores, load_spec, parse_cores, parse_spec,
                          spare_cores)

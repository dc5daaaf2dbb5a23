"""Exceptions of the data plane; each message names the channel and the problem."""
from __future__ import annotations


class ShmError(Exception):
    """Base class of every error raised by the shm package."""


class InvalidNameError(ShmError, ValueError):
    """An instance or channel name outside [A-Za-z0-9_-]."""


class InstanceNotFoundError(ShmError, FileNotFoundError):
    """The instance directory does not exist."""


class InstanceBusyError(ShmError):
    """The instance is owned by a process that is still alive."""


class ChannelExistsError(ShmError, FileExistsError):
    """A channel of that name already exists in the instance."""


class ChannelNotFoundError(ShmError, FileNotFoundError):
    """No channel of that name (or of that kind) in the instance."""


class StaleSlotError(ShmError):
    """The slot named by a SlotRef was reused (its generation moved on) or never committed."""


class PoolExhaustedError(ShmError, TimeoutError):
    """No free slot became available before the timeout."""


class PayloadError(ShmError, ValueError):
    """A payload that cannot go into a slot: oversized, unsupported dtype, wrong shape or dtype."""


class RingBusyError(ShmError):
    """A ring already has a live writer (rings have exactly one producer)."""


class TooManyConsumersError(ShmError):
    """A ring's consumer table or a slot's holder table is full."""

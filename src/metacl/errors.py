"""Error types raised by metacl.

Every user-facing check raises one of these with a message that names the bad value
and says how to fix it. They subclass ``ValueError`` so that callers who do not care
about the distinction can catch the built-in type.
"""

from __future__ import annotations

__all__ = [
    "MetaclError",
    "ConfigError",
    "DataError",
    "ScenarioError",
    "TrainingError",
    "CheckpointError",
]


class MetaclError(ValueError):
    """Base class of every error metacl raises on bad input."""


class ConfigError(MetaclError):
    """A configuration key or value is unknown or invalid."""


class DataError(MetaclError):
    """A dataset file is missing, truncated, corrupt or fails its checksum."""


class ScenarioError(MetaclError):
    """A stream cannot be built as asked, or a strategy does not fit the stream."""


class TrainingError(MetaclError):
    """Training cannot go on: a non-finite loss, a label out of range, ..."""


class CheckpointError(MetaclError):
    """A checkpoint is unreadable or belongs to another configuration, or its run
    directory is in use by another process."""

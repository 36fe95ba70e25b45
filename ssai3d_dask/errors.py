"""Exceptions with messages that name the problem and the fix.

All derive from :class:`Ssai3dError` (a ``ValueError``), which the CLI turns
into a one-line error and exit status 2.
"""


class Ssai3dError(ValueError):
    """Bad input or settings; the message says what to change."""


class VolumeError(Ssai3dError):
    """A volume cannot be opened or written as asked."""


class CheckpointError(Ssai3dError):
    """A checkpoint cannot be loaded."""


class SettingsError(Ssai3dError):
    """Inconsistent settings."""


class Interrupted(Ssai3dError):
    """A run stopped on request (SIGTERM from a batch scheduler); what it recorded is kept and resumable."""

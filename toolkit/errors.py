"""Exceptions the toolkit raises on purpose.

Every message is one line that names what is wrong and what is allowed, so the command line can
print it as it is (``toolkit: error: ...``) and exit: with status 2 for bad input (``UsageError``,
``PluginError``), 1 for a run that failed on the way (``NumericalError``, ``WriteError``).
"""


class ToolkitError(Exception):
    """Base class of the errors that come with a message meant for the user."""


class UsageError(ToolkitError, ValueError):
    """The user asked for something that cannot be done: a bad option, a missing file, ..."""


class PluginError(ToolkitError):
    """A plugin broke its contract (a duplicate name, a wrong return value, ...)."""


class WriteError(ToolkitError):
    """A file could not be written (a full disk, say); the message says what was kept."""

    exit_status = 1


class NumericalError(ToolkitError):
    """NaN or Inf turned up in a run (training losses, images, features); the message names where."""

    exit_status = 1

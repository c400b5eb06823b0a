"""The one kind of error a user can fix: bad config values, missing or malformed input files, an impossible
combination, a model that is not installed. Entry points (lora.cli) show a `UserError` as one `error: <message>`
line with exit status 2; any other exception is a bug and keeps its traceback (exit status 1).

The subclasses also derive from the built-in type a caller would expect (`ValueError`, `FileNotFoundError`,
`RuntimeError`), so library users can catch either.
"""

from __future__ import annotations


class UserError(Exception):
    """Bad input, with a one-line message that says what is wrong and how to fix it."""


class ConfigError(UserError, ValueError):
    """A config value, an option combination or a file's content is not acceptable."""


class InputNotFound(UserError, FileNotFoundError):
    """A file, folder, data set or saved adapter the run needs does not exist."""


class NotAvailable(UserError, RuntimeError):
    """Something the run needs cannot be had here: a package not installed, a hub model offline, no GPU."""

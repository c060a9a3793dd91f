"""How a command reports a user's mistake: one line ``error: <message>`` on stderr and exit code 2.

``python -m lit_llm`` (``lit_llm.cli.main``) turns these exceptions into that line; ``LIT_LLM_DEBUG=1`` shows
the traceback instead. Library code keeps raising ValueError / FileNotFoundError with a message that names the
fix; ``UsageError`` is for the commands' own checks.
"""

from __future__ import annotations


class UsageError(ValueError):
    """A bad argument, file or value given to a command (never a bug): reported as one ``error:`` line."""


class StorageError(UsageError):
    """The disk refused a write (full, read-only, not permitted): reported as one ``error:`` line that says what
    was kept, even when it happens mid-run."""


# what counts as the user's mistake when it is raised before a command starts its work
USER_ERRORS: tuple[type[BaseException], ...] = (
    ValueError, KeyError, FileNotFoundError, FileExistsError, IsADirectoryError, NotADirectoryError, PermissionError,
)


def root_cause(error: BaseException) -> BaseException:
    """The innermost of ``error``'s causes whose message the outer ones only repeat: jsonargparse wraps the error
    a class raises while it is built in "Does not validate against any of the Union subtypes ... - <message>"."""
    while isinstance(error.__cause__, USER_ERRORS) and str(error.__cause__) and str(error.__cause__) in str(error):
        error = error.__cause__
    return error


def one_line(error: BaseException | str) -> str:
    """The message of ``error`` (of its root cause, see ``root_cause``) on one line (a KeyError's without the
    quotes ``str`` adds)."""
    if isinstance(error, BaseException):
        error = root_cause(error)
    if isinstance(error, KeyError) and len(error.args) == 1 and isinstance(error.args[0], str):
        text = error.args[0]
    else:
        text = str(error)
    return " ".join(line.strip() for line in text.splitlines() if line.strip()) or type(error).__name__

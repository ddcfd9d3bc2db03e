"""Errors by what they mean for the user, each carrying its exit code; `sing` maps an error
to its exit code in one place (cli.main), by type.

    BadInput    2  the input is wrong; nothing was done (checked before any work)
    RunFailed   1  the run failed part-way; what was finished is on disk and rerunning the
                   same command resumes
    Alarm       3  nightly: a checkpoint crossed a threshold (the run itself succeeded)

ValueError, FileNotFoundError and KeyError raised by library code (a bad MODEL string, a
missing file, a dimension mismatch) are bad input too; so are BadInput's subclasses below.
"""
from __future__ import annotations

EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT, EXIT_ALARM = 0, 1, 2, 3


class SingError(Exception):
    exit_code = EXIT_FAILED


class BadInput(SingError, ValueError):
    """Wrong input, found before any work (exit 2)."""

    exit_code = EXIT_BAD_INPUT


class RunFailed(SingError, RuntimeError):
    """The run failed part-way; a rerun of the same command resumes (exit 1)."""

    exit_code = EXIT_FAILED


class Alarm(SingError):
    """A nightly threshold was crossed (exit 3)."""

    exit_code = EXIT_ALARM


def exit_code(exc: BaseException) -> int | None:
    """The exit code of an error the CLI reports in one line, None for a bug (traceback)."""
    if isinstance(exc, SingError):
        return exc.exit_code
    if isinstance(exc, (ValueError, FileNotFoundError, KeyError)):
        return EXIT_BAD_INPUT
    return None

"""Errors a user can fix. Each message says what is wrong, where (file, field or option) and how to
fix it; `python -m tagi` prints it as one paragraph and exits with status 2 instead of a traceback.
Lightning-free."""

from __future__ import annotations


class TagiError(Exception):
    """Base of every user-fixable error."""


class ConfigurationError(TagiError, ValueError):
    """Options or stages that do not fit together (teacher vs student, checkpoint vs backbone, strategy vs machine)."""


class InputError(TagiError, ValueError):
    """A missing or unusable input path or value given on the command line or in a config."""


class NonFiniteLossError(TagiError, FloatingPointError):
    """Training produced a NaN/inf loss; the run stops and keeps its last good checkpoint."""


class WriteError(TagiError, OSError):
    """A file or folder that could not be written: the disk is full, read-only, the file is too large for this
    process (ulimit -f), or no permission. Raised by `tagi.io.writing` with the path, around writes beside that
    name that are then renamed (what the name held before is unchanged); or by the CLI, without that promise,
    for a library's write that tagi does not wrap."""

    def __init__(self, message: str, error: OSError, path: str | None):
        super().__init__(error.errno, error.strerror, path)
        self.message = message

    def __str__(self) -> str:
        return self.message


class FetchError(TagiError, RuntimeError):
    """`tagi fetch` could not get the pinned file (no network, no such release) or got another one (a digest
    that is not the pinned one); nothing was written."""


class Terminated(Exception):
    """A run stopped by SIGTERM or Ctrl-C (Lightning stops it between two steps); not a failure of the input, so
    not a `TagiError`. `python -m tagi` prints what stopped and how to resume, and exits with `exit_status`."""

    EXIT_STATUS = 143  # 128 + SIGTERM: what a shell reports for a process that SIGTERM ended
    INTERRUPTED = 130  # 128 + SIGINT: Ctrl-C

    def __init__(self, stopped: str, resume: str, exit_status: int = EXIT_STATUS):
        self.stopped, self.resume, self.exit_status = stopped, resume, exit_status
        super().__init__(f"{stopped}; {resume}")

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


class FetchError(TagiError, RuntimeError):
    """`tagi fetch` could not get the pinned file (no network, no such release) or got another one (a digest
    that is not the pinned one); nothing was written."""

"""`tagi <command>`: routes `fit | validate | test | predict` to the LightningCLI
(`tagi.training.cli`), `pipeline` to `tagi.pipeline`, `adapter` to `tagi.inference.export` and
`fetch` to `tagi.fetch`, and turns every user-fixable failure into one `error:` paragraph with exit status 2
(a run stopped by SIGTERM or Ctrl-C: one `stopped:` paragraph saying how to resume, exit status 143 or 130)."""

from __future__ import annotations

import logging
import sys

from tagi.errors import TagiError, Terminated
from tagi.io import DISK_ERRNOS, write_error


def show_progress() -> None:
    """tagi's INFO messages (which stage runs, is skipped or resumed; where results went) reach stderr."""
    logger = logging.getLogger("tagi")
    if not logger.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(name)s: %(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    show_progress()
    try:
        if argv and argv[0] == "pipeline":
            from tagi.pipeline import main as pipeline_main

            pipeline_main(argv[1:])
        elif argv and argv[0] == "adapter":
            from tagi.inference.export import main as adapter_main

            adapter_main(argv[1:])
        elif argv and argv[0] == "fetch":
            from tagi.fetch import main as fetch_main

            fetch_main(argv[1:])
        else:
            from tagi.training.cli import run_cli

            run_cli(argv)
    except Terminated as stopped:  # a SIGTERM Lightning turned into a SystemExit without a code: 0, read as success
        print(f"stopped: {stopped}", file=sys.stderr)
        raise SystemExit(stopped.exit_status) from None
    except Exception as error:
        cause = user_error(error)
        if cause is None:
            raise
        print(f"error: {cause}", file=sys.stderr)
        raise SystemExit(2) from None


def user_error(error: BaseException | None) -> Exception | None:
    """The `TagiError` behind `error` (jsonargparse re-raises what a class's constructor raised as its own
    ValueError, "Does not validate against any of the Union subtypes", with ours as the cause), or
    Lightning's own verdict on a Trainer option (`MisconfigurationException`, e.g. devices=0), or a disk that
    refused a write."""
    # Looked up, not imported: `tagi adapter` never loads Lightning (if it is not loaded, it raised nothing).
    lightning = sys.modules.get("lightning.pytorch.utilities.exceptions")
    user_errors = (TagiError, lightning.MisconfigurationException) if lightning is not None else (TagiError,)
    seen, chain = set(), []
    while error is not None and id(error) not in seen:
        if isinstance(error, user_errors):
            return error
        seen.add(id(error))
        chain.append(error)
        error = error.__cause__ or (None if error.__suppress_context__ else error.__context__)
    return _disk_error(chain)


def _disk_error(chain: list[BaseException]) -> Exception | None:
    """A full or read-only disk under a write tagi does not wrap itself (a library's: Lightning's metrics.csv,
    transformers' save): still one paragraph, naming the file where the error does."""
    failed = next((error for error in chain if isinstance(error, OSError) and error.errno in DISK_ERRNOS), None)
    return None if failed is None else write_error(failed.filename, failed, kept=False)


"""Atomic writes: a killed process never leaves a half-written artifact that looks valid."""

from __future__ import annotations

import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from tagi.errors import InputError


@contextmanager
def atomic_directory(target: str | os.PathLike, own_only: str | None = None) -> Iterator[Path]:
    """Yield a temporary sibling directory; on success it replaces `target` in one rename.

    A crash inside the block leaves `target` untouched (old contents or absent) and at most a
    `.tmp-*` sibling, which no reader treats as an artifact. With `own_only` (the option that named
    `target`, for the message), an existing `target` is replaced only if it is a folder holding
    nothing but names the block wrote, i.e. an earlier run of the same writer; anything else is
    refused before it is touched.
    """
    with atomic_directories([target], own_only) as (staging,):
        yield staging


@contextmanager
def atomic_directories(targets: list[str | os.PathLike], own_only: str | None = None) -> Iterator[list[Path]]:
    """`atomic_directory` for several folders written together: all are checked before any is replaced."""
    targets = [Path(target) for target in targets]
    for target in targets if own_only is not None else []:
        _refuse_non_folder(target, own_only)
    stagings = []
    try:
        for target in targets:
            target.parent.mkdir(parents=True, exist_ok=True)
            stagings.append(Path(tempfile.mkdtemp(prefix=f".tmp-{target.name}-", dir=target.parent)))
        yield stagings
        for target, staging in zip(targets, stagings) if own_only is not None else ():
            _refuse_foreign(target, {entry.name for entry in staging.iterdir()}, own_only)
        for target, staging in zip(targets, stagings):
            _replace(target, staging)
    finally:
        for staging in stagings:
            if staging.exists():
                shutil.rmtree(staging)


def _replace(target: Path, staging: Path) -> None:
    if target.exists():
        retired = Path(tempfile.mkdtemp(prefix=f".old-{target.name}-", dir=target.parent))
        os.replace(target, retired / target.name)
        os.replace(staging, target)
        shutil.rmtree(retired)
    else:
        os.replace(staging, target)


def _refuse_non_folder(target: Path, option: str) -> None:
    if target.exists() and not target.is_dir():
        raise InputError(f"{option} {target}: a file is there, not a folder; give a new folder (nothing was written)")


def _refuse_foreign(target: Path, own_names: set[str], option: str) -> None:
    foreign = sorted(entry.name for entry in target.iterdir() if entry.name not in own_names) if target.is_dir() else []
    if foreign:
        listed = ", ".join(foreign[:3]) + (f" and {len(foreign) - 3} more" if len(foreign) > 3 else "")
        raise InputError(f"{option} {target}: the folder holds {listed}, which this command did not write; "
                         "it replaces only its own earlier output. Give a new or empty folder (nothing was written)")


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write `text` to a temporary file beside `path`, fsync it, then rename over `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".tmp-{path.name}-", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)

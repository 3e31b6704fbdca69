"""Files a user can trust: atomic writes (a killed process never leaves a half-written artifact that
looks valid, and nothing but a writer's own earlier output is replaced), one writer per run folder,
checkpoints read with a clear error (a DeepSpeed folder through its float32 consolidation), and θ0
weight digests. Lightning-free: only consolidating a DeepSpeed folder imports Lightning's converter."""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import re
import shutil
import signal
import socket
import tempfile
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Collection, Iterator

from tagi.errors import ConfigurationError, InputError, TagiError, WriteError

log = logging.getLogger(__name__)

LOCK_SUFFIX = ".lock"  # `.<run folder>.lock` beside a run folder while a process writes it
# In a θ0 folder stage 0 wrote: what made it, and its weights' digest. The name predates `theta0` (stage 0's
# one name); it stays, because θ0 folders written before the rename must still load.
BACKBONE_META = "tagi_backbone.json"
COMPLETE_NAME = "complete.json"  # a fit's completion marker, written last, by the `CompletionMarker` callback
WEIGHT_PATTERNS = ("*.safetensors", "*.bin")


@contextmanager
def atomic_directory(target: str | os.PathLike, own_only: str | None = None, also_own: Collection[str] = ()) -> Iterator[Path]:
    """Yield a temporary sibling directory; on success it replaces `target` in one rename.

    A crash inside the block leaves `target` untouched (old contents or absent) and at most a
    `.tmp-*` sibling, which no reader treats as an artifact. With `own_only` (the option that named
    `target`, for the message), an existing `target` is replaced only if it is a folder holding
    nothing but names the block wrote (or `also_own`, what an earlier run of the same writer may
    have written besides); anything else is refused before it is touched.
    """
    target = Path(target)
    if own_only is not None:
        _refuse_non_folder(target, own_only)
    with writing(target, own_only):  # the block writes into the staging folder: its OSErrors are this folder's
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".tmp-{target.name}-", dir=target.parent))
        try:
            with_umask(staging)
            yield staging
            if own_only is not None:
                _refuse_foreign(target, {entry.name for entry in staging.iterdir()} | set(also_own), own_only)
            _replace(target, staging)
        finally:
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


def with_umask(path: str | os.PathLike) -> None:
    """tempfile creates 0600 files and 0700 folders; an artifact renamed from one gets the mode any other
    file of the user's would (0666 / 0777 minus the umask)."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, (0o777 if os.path.isdir(path) else 0o666) & ~umask)


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
    """Write `text` to a temporary file beside `path`, fsync it, then rename over `path` (`AtomicFile`)."""
    with AtomicFile(path, "w") as handle:
        handle.write(text)


class AtomicFile:
    """A file written under a temporary name beside `path`, fsynced and renamed over it by `commit`: `path`
    holds its old content or the whole new one, never half. Beside, not in $TMPDIR: only a rename within one
    filesystem is atomic (from another one it is a copy, which a full disk stops halfway), and a small
    $TMPDIR must not fail a write that fits. `discard`, or an error inside `with`, removes the temporary
    file; every OSError comes out as a `WriteError` naming `path`."""

    def __init__(self, path: str | os.PathLike, mode: str = "wb"):
        self.path = Path(path)
        with writing(self.path):
            self.path.parent.mkdir(parents=True, exist_ok=True)
            handle, self.temporary = tempfile.mkstemp(prefix=f".tmp-{self.path.name}-", dir=self.path.parent)
            with_umask(self.temporary)
            self.file: IO = os.fdopen(handle, mode, **({} if "b" in mode else {"encoding": "utf-8"}))

    def write(self, data) -> None:
        with self._discarded_on_error():
            self.file.write(data)

    def commit(self) -> Path:
        with self._discarded_on_error():
            self.file.flush()
            os.fsync(self.file.fileno())
            self.file.close()
            os.replace(self.temporary, self.path)
        return self.path

    def discard(self) -> None:
        """Remove the temporary file; `path` keeps what it held. Closing may fail again on a full disk (the
        buffered rest cannot be flushed): the file is closed all the same, and that failure is a WriteError."""
        Path(self.temporary).unlink(missing_ok=True)
        if not self.file.closed:
            with writing(self.path):
                self.file.close()

    @contextmanager
    def _discarded_on_error(self) -> Iterator[None]:
        try:
            with writing(self.path):
                yield
        except BaseException:
            self.discard()
            raise

    def __enter__(self) -> IO:
        return self.file

    def __exit__(self, kind, error, traceback) -> None:
        if error is None:
            self.commit()
            return
        self.discard()
        failure = None if isinstance(error, WriteError) else os_error_behind(error)
        if failure is not None:
            raise write_error(self.path, failure) from None


@contextmanager
def signals_deferred(numbers: tuple[int, ...] = (signal.SIGINT, signal.SIGTERM)) -> Iterator[None]:
    """Ctrl-C or SIGTERM received inside the block is delivered when it ends. A KeyboardInterrupt raised in the
    middle of `torch.save` broke its zip writer, whose cleanup then raised a RuntimeError ("unexpected pos")
    that hid the interrupt: the run exited 1 with a traceback instead of 130 and a resume hint. Only the main
    thread can swap handlers; a handler not installed from Python (`getsignal` is None) is left alone."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received: list[int] = []
    previous = {number: signal.getsignal(number) for number in numbers}
    previous = {number: handler for number, handler in previous.items() if handler is not None}
    for number in previous:
        signal.signal(number, lambda received_number, frame: received.append(received_number))
    try:
        yield
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)
        for number in dict.fromkeys(received):  # each once, in the order received
            signal.raise_signal(number)


# A failed write in the user's terms: errno → what to do.
WRITE_ADVICE = {
    errno.ENOSPC: "the disk is full: free some space, or write elsewhere",
    errno.EDQUOT: "the disk quota is used up: free some space, or write elsewhere",
    errno.EFBIG: "the file is larger than this process may write (ulimit -f) or the filesystem allows",
    errno.EROFS: "the filesystem is read-only: write elsewhere",
    errno.EACCES: "no permission to write there: write elsewhere",
    errno.EPERM: "no permission to write there: write elsewhere",
}
DISK_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS}  # only ever a write's failure


@contextmanager
def writing(path: str | os.PathLike, option: str | None = None) -> Iterator[None]:
    """The block writes `path` (atomically: what `path` held stays until it succeeds); any OSError in it
    becomes one `WriteError` naming `path` (after `option`, the one that named it) instead of a traceback
    naming a temporary file, or nothing."""
    try:
        yield
    except TagiError:  # said already (a WriteError, or a refusal raised inside the block)
        raise
    except Exception as error:
        failure = os_error_behind(error)
        if failure is None:
            raise
        raise write_error(path, failure, option=option) from None


RUST_IO_ERROR = re.compile(r"\(os error (\d+)\)")  # how safetensors and tokenizers (Rust) report an io::Error


def os_error_behind(error: BaseException) -> OSError | None:
    """`error` if it is an OSError, or the one it was raised from or while handling (torch.save reports a
    full disk as a RuntimeError from its zip writer, with the OSError as its context), or the one a Rust
    library's message names ("I/O error: File too large (os error 27)")."""
    seen = set()
    while error is not None and id(error) not in seen:
        if isinstance(error, OSError):
            return error
        number = RUST_IO_ERROR.search(str(error))
        if number is not None:
            return OSError(int(number.group(1)), os.strerror(int(number.group(1))))
        seen.add(id(error))
        error = error.__cause__ or (None if error.__suppress_context__ else error.__context__)
    return None


def write_error(path: str | os.PathLike | None, error: OSError, kept: bool = True, option: str | None = None) -> WriteError:
    """`path` None: a write of a library's that did not say which file (the CLI's last resort)."""
    advice = WRITE_ADVICE.get(error.errno, "fix the cause, or write elsewhere")
    if path is None:
        where = "a write failed (the library writing it did not say which file)"
    else:
        where = f"{option + ' ' if option else ''}{path}: cannot be written"
    unchanged = "; what was there before is unchanged" if kept and path is not None else ""
    return WriteError(f"{where} ({error.strerror or error}); {advice}{unchanged}", error, None if path is None else str(path))


@contextmanager
def folder_lock(folder: str | os.PathLike, option: str) -> Iterator[None]:
    """Own `folder` while this process writes into it: a second writer is refused, naming the holder.
    The lock is a sibling file, `.<name>.lock`, so the folder itself is untouched (Lightning warns
    about a non-empty log folder). It is keyed by the resolved folder: a symlink to the folder, or a path
    through a symlinked parent, is the same folder and has the same lock. A lock left by a process that
    is gone (a killed run on this host) is taken over; folders this call created for the lock are
    removed again if nothing else came."""
    folder, holder = Path(folder), f"{socket.gethostname()}:{os.getpid()}"
    resolved = folder.resolve()
    lock = resolved.parent / f".{resolved.name}{LOCK_SUFFIX}"
    created = [parent for parent in [lock.parent, *lock.parent.parents] if not parent.exists()]
    with writing(folder, option):  # the lock is the first file written there: a read-only disk is said here
        lock.parent.mkdir(parents=True, exist_ok=True)
        _take_lock(lock, holder, folder, option)
    try:
        yield
    finally:
        lock.unlink(missing_ok=True)
        for parent in created:  # innermost first
            if parent.is_dir() and not any(parent.iterdir()):
                parent.rmdir()


def _take_lock(lock: Path, holder: str, folder: Path, option: str) -> None:
    while True:
        try:
            with open(lock, "x", encoding="utf-8") as handle:
                handle.write(f"{holder} {time.strftime('%Y-%m-%d %H:%M:%S')}\n")
            return
        except FileExistsError:
            other = lock.read_text(encoding="utf-8").strip()
            if _holder_alive(other.split(" ")[0]):
                raise ConfigurationError(
                    f"{option} {folder}: another run is writing into it ({other}; host:pid, start). Wait for it, "
                    f"or give another folder; if that process is gone, delete {lock}") from None
            lock.unlink(missing_ok=True)


def folder_state(folder: str | os.PathLike) -> tuple[int, int] | None:
    """What is at `folder` now (None: nothing): its inode and mtime. Artifacts are renamed into place
    (`atomic_directory`), so a replaced folder has another inode, and one written into another mtime."""
    try:
        stat = Path(folder).stat()
    except FileNotFoundError:
        return None
    return stat.st_ino, stat.st_mtime_ns


class FolderClaim:
    """A fit checks its output folder when it starts (`--overwrite` or nothing there) and writes it when it
    ends. Another fit into the same folder passed the same check meanwhile, trained, and one export replaced
    the other. So the claim is held from the start of the fit to its export (`held`, the folder's lock):
    a second fit is refused before it trains. What the check saw is remembered and compared under the lock
    (`check`), for a writer that does not take it (another host's, a hand copy)."""

    def __init__(self, folder: str | os.PathLike, option: str):
        self.folder, self.option, self.found = Path(folder), option, folder_state(folder)

    @contextmanager
    def held(self) -> Iterator[None]:
        with folder_lock(self.folder, self.option):
            self.check(trained=False)  # written between the check and the lock
            yield

    def check(self, trained: bool = True) -> None:
        if folder_state(self.folder) == self.found:
            return
        found = "absent" if self.found is None else "holding an earlier export"
        advice = ("This run's weights are in its run folder's checkpoints/last.ckpt: export them with the same command "
                  "plus --ckpt_path last and another output_dir (or --overwrite=true to replace the other run's)") if trained \
            else "Nothing was written: give another output_dir, or --overwrite=true to replace the other run's"
        raise ConfigurationError(
            f"{self.option} {self.folder}: another run wrote it {'while this one trained' if trained else 'as this fit started'} "
            f"(this fit found it {found} when it checked), so it was not replaced. {advice}")


def _holder_alive(holder: str) -> bool:
    host, _, pid = holder.rpartition(":")
    if host != socket.gethostname() or not pid.isdigit():
        return True  # another machine's process (shared filesystem): cannot tell, so it holds
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def weights_digest(folder: str | os.PathLike) -> str | None:
    """An identity of a saved model folder's weights that changes when they change: the sha256 of its
    weight files (None: there are none). The digest stage 0 recorded is reused while the files still
    have the sizes and times it recorded, so a large θ0 is not re-read by every stage."""
    folder = Path(folder)
    record = weights_record(folder, digest=False)
    saved = _recorded_digest(folder / BACKBONE_META)
    if not record["weights_stamps"]:
        return None
    if saved.get("weights_sha256") and saved.get("weights_stamps") == record["weights_stamps"]:
        return saved["weights_sha256"]
    return weights_record(folder)["weights_sha256"]


def _recorded_digest(meta: Path) -> dict:
    """Stage 0's record, only a cache of the digest here: a damaged one (not JSON, not UTF-8, not an object)
    is said once and the weights are digested instead, which gives the true value either way."""
    if not meta.is_file():
        return {}
    try:
        saved = json.loads(meta.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        saved = error
    if isinstance(saved, dict):
        return saved
    log.warning("%s: not readable as stage 0's record (%s); θ0's weights are digested from the files instead (slower "
                "for a large θ0; delete the file to silence this)", meta, saved if isinstance(saved, Exception) else "not an object")
    return {}


def weights_record(folder: Path, digest: bool = True) -> dict:
    """{weights_sha256: first 16 hex digits over the weight files' names and bytes, weights_stamps:
    {file: [size, mtime_ns]}}: what stage 0 writes into BACKBONE_META."""
    files = sorted(path for pattern in WEIGHT_PATTERNS for path in folder.glob(pattern))
    stamps = {path.name: [path.stat().st_size, path.stat().st_mtime_ns] for path in files}
    if not digest:
        return {"weights_stamps": stamps}
    sha = hashlib.sha256()
    for path in files:
        sha.update(path.name.encode())
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                sha.update(block)
    return {"weights_sha256": sha.hexdigest()[:16], "weights_stamps": stamps}


ZERO_LATEST = "latest"  # in a DeepSpeed checkpoint folder: the tag (subfolder) of its newest save


def is_zero_folder(path: str | os.PathLike) -> bool:
    """A DeepSpeed checkpoint: what `strategy: deepspeed` writes where other strategies write a .ckpt file."""
    return Path(path).is_dir() and (Path(path) / ZERO_LATEST).is_file()


def read_checkpoint(path: str | os.PathLike, option: str, mmap: bool = False) -> dict:
    """`torch.load` of a checkpoint the user named; a file that is not one (empty, truncated, another
    format) is an `InputError` naming the option and the file instead of an unpickling traceback.
    A DeepSpeed folder is read as its float32 consolidation (`consolidate_zero_folder`)."""
    if is_zero_folder(path):
        path = consolidate_zero_folder(path, option)
    return _load_checkpoint_file(path, option, mmap)


def read_checkpoint_record(path: str | os.PathLike, option: str) -> dict:
    """What a stage stored beside its weights (`tagi` provenance, `global_step`, ...), without reading them
    into memory: the file memory-mapped, or a DeepSpeed folder's model-states file (no consolidation)."""
    if not is_zero_folder(path):
        return read_checkpoint(path, option, mmap=True)
    tag = (Path(path) / ZERO_LATEST).read_text().strip()
    states = Path(path) / tag / "mp_rank_00_model_states.pt"
    if not states.is_file():
        raise InputError(f"{option} {path}: a DeepSpeed checkpoint folder without {states.relative_to(path)}; "
                         "it is incomplete (a killed save?). Give a checkpoint a finished save wrote")
    return _load_checkpoint_file(states, option, mmap=True, key="module")


def consolidate_zero_folder(path: str | os.PathLike, option: str) -> Path:
    """A DeepSpeed ZeRO folder → one Lightning checkpoint file `<folder>.fp32.ckpt` beside it: the float32
    master weights gathered from every rank's shard (the module's own copy may be bf16), with Lightning's
    converter, which knows how Lightning laid out the folder (hence a Lightning import here, for folders
    only). Kept, and reused while it is newer than the folder's last save."""
    folder = Path(path)
    single = folder.with_name(folder.name + ".fp32.ckpt")
    saved = max(file.stat().st_mtime for file in folder.rglob("*") if file.is_file())
    if single.is_file() and single.stat().st_mtime >= saved:
        return single
    from lightning.pytorch.utilities.deepspeed import convert_zero_checkpoint_to_fp32_state_dict

    handle, staging = tempfile.mkstemp(prefix=f".tmp-{single.name}", dir=folder.parent)  # one per process: ranks may race
    os.close(handle)
    try:
        convert_zero_checkpoint_to_fp32_state_dict(str(folder), staging)
        os.replace(staging, single)  # a killed conversion never leaves a half file under the final name
    except (OSError, KeyError, ValueError, RuntimeError) as error:
        raise InputError(f"{option} {path}: a DeepSpeed checkpoint folder that cannot be consolidated ({error}); "
                         "it is incomplete or was written by another DeepSpeed version") from None
    finally:
        Path(staging).unlink(missing_ok=True)
    return single


def _load_checkpoint_file(path: str | os.PathLike, option: str, mmap: bool, key: str = "state_dict") -> dict:
    import pickle
    import zipfile

    import torch

    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=False, mmap=mmap)
    except (EOFError, RuntimeError, ValueError, pickle.UnpicklingError, zipfile.BadZipFile) as error:
        reason = (str(error).strip().splitlines() or [type(error).__name__])[0][:120]
        reason = "not a zip-format torch file" if "mmap can only be used" in reason else reason
        raise InputError(f"{option} {path}: not a readable checkpoint ({reason}); it is empty, truncated or in another "
                         "format. Give a .ckpt a stage wrote, e.g. checkpoints/<run>/<stage>/checkpoints/last.ckpt") from None
    if not isinstance(checkpoint, dict) or key not in checkpoint:
        raise InputError(f"{option} {path}: not a Lightning checkpoint (it holds no {key})")
    return checkpoint

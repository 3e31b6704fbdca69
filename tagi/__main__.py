"""`python -m tagi`: the LightningCLI (fit / validate / test / predict), plus `pipeline` and `adapter`.

Model and data classes are chosen in YAML with `class_path`/`init_args`; values that must agree
between them (the tokenizer) are linked, so they are set once, in `data`.
"""

from __future__ import annotations

import sys
import warnings

import lightning as L
from lightning.pytorch.cli import LightningCLI


class TAGICLI(LightningCLI):
    def add_arguments_to_parser(self, parser) -> None:
        # The model must build its vocabulary from the same tokenizer the data is encoded with.
        parser.link_arguments("data.init_args.tokenizer", "model.init_args.tokenizer")


def run_cli(args: list[str] | None = None) -> TAGICLI:
    # `args` is how `main` and the pipeline pass argv; Lightning warns when sys.argv is also set.
    warnings.filterwarnings("ignore", message="LightningCLI's args parameter is intended")
    return TAGICLI(
        L.LightningModule,
        L.LightningDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        save_config_kwargs={"overwrite": True},
        args=args,
    )


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "pipeline":
        from tagi.pipeline import main as pipeline_main

        pipeline_main(argv[1:])
        return
    if argv and argv[0] == "adapter":
        from tagi.export import main as adapter_main

        adapter_main(argv[1:])
        return
    run_cli(argv)


if __name__ == "__main__":
    main()

"""Command line: ``asrl train -c CONFIG [-o OUTDIR] [--set key=value ...] [--resume]``."""

from __future__ import annotations

import argparse
import logging
import shlex
import sys

from asrl import quiet
from asrl.analysis import compare, plots
from asrl.config import ConfigError, load_config
from asrl.data import commands as data_commands
from asrl.model import export


def _train(args: argparse.Namespace) -> int:
    overrides = list(args.set or [])
    if args.output:
        overrides.append(f"output_dir={args.output}")
    cfg = load_config(args.config, overrides)
    from asrl.errors import Interrupted, RewardError, TrainingDiverged
    from asrl.train.loop import train  # heavy imports (torch, transformers) once args are valid

    again = shlex.join(
        ["asrl", "train", "-c", args.config, "-o", cfg.output_dir]
        + [a for o in args.set or [] for a in ("--set", o)]
        + ["--resume"]
    )
    try:
        train(cfg, resume=args.resume)
    except Interrupted as e:
        from asrl.parallel import distributed

        if distributed.launched_rank() == 0:  # one hint, not one per process
            print(f"asrl: interrupted ({e}); resume with: {again}", file=sys.stderr)
        return e.exit_code
    except TrainingDiverged as e:
        print(f"asrl: training diverged: {e}. Resume with: {again}", file=sys.stderr)
        return 3
    except RewardError as e:
        print(f"asrl: reward error: {e}. Resume with: {again}", file=sys.stderr)
        return 3
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="asrl", description="Alternating SFT and GRPO for small language models."
    )
    verbose_help = "show the libraries' own notices, warnings and progress bars too"
    parser.add_argument("-v", "--verbose", action="store_true", help=verbose_help)
    sub = parser.add_subparsers(dest="command", required=True)
    t = sub.add_parser("train", help="train a model (ASRL or a baseline schedule)")
    # also after the command (asrl train -v ...); SUPPRESS keeps a top-level -v
    t.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS,
                   help=verbose_help)  # fmt: skip
    t.add_argument("-c", "--config", required=True, help="YAML config (see configs/)")
    t.add_argument("-o", "--output", help="output directory (overrides output_dir)")
    t.add_argument(
        "--set",
        action="append",
        metavar="KEY=VALUE",
        help="override a setting, e.g. grpo.beta=0.04",
    )
    t.add_argument("--resume", action="store_true", help="continue from the last checkpoint")
    t.set_defaults(func=_train)
    data_commands.register(sub)
    compare.register(sub)
    export.register(sub)
    plots.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    level = logging.INFO if args.verbose else logging.WARNING
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    quiet.verbose(args.verbose)
    try:
        return args.func(args)
    except ConfigError as e:
        print(f"asrl: configuration error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("asrl: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())

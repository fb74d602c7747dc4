"""The ``boostray`` command: train, evaluate, models.

Errors a user can fix print one line (``boostray: error: ...``) and exit with code 2.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from typing import Sequence

from boostray.errors import BoostrayError

EXIT_USAGE = 2


def _field_type(annotation: str):
    if annotation.startswith("int"):
        return int
    if annotation.startswith("float"):
        return float
    return str


def add_train_options(parser: argparse.ArgumentParser) -> None:
    """One flag per TrainConfig field; defaults are SUPPRESSed so that only given flags override --config."""
    from boostray.config import TrainConfig

    parser.add_argument("--config", metavar="FILE", help="YAML file whose keys mirror these options (flags win over it)")
    for f in dataclasses.fields(TrainConfig):
        flag = "--" + f.name.replace("_", "-")
        default = f.default
        help_text = f"{f.metadata['help']} (default: {default})"
        annotation = str(f.type)
        if annotation.startswith("bool"):
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS, help=help_text)
            continue
        choices = [c for c in f.metadata.get("choices", ()) if c is not None] or None
        parser.add_argument(
            flag, type=_field_type(annotation), choices=choices, default=argparse.SUPPRESS,
            metavar=f.name.upper() if not choices else None, help=help_text,
        )


def config_from_args(args: argparse.Namespace):
    from boostray.config import TrainConfig, read_config_file

    values = read_config_file(args.config) if getattr(args, "config", None) else {}
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    values.update({k: v for k, v in vars(args).items() if k in names})
    return TrainConfig(**values).validate()


def format_summary(run_dir: str, metrics: dict) -> str:
    """The end-of-run table: each member's epoch, lambda, error, test accuracy; single vs ensemble."""
    lines = [f"run directory: {run_dir}", "", f"{'member':>6} {'epoch':>5} {'lambda':>8} {'error':>8} {'val acc':>8} {'test acc':>8}"]
    for i, m in enumerate(metrics["members"]):
        err = "-" if m["error"] is None or m["error"] != m["error"] else f"{m['error']:.4f}"
        lines.append(f"{i + 1:>6} {m['epoch']:>5} {m['alpha']:>8.3f} {err:>8} {m['val_accuracy']:>8.4f} {m['test_accuracy']:>8.4f}")
    test = metrics["test"]
    lines += [
        "",
        f"single network (final checkpoint) test accuracy: {test['single_accuracy']:.4f}",
        f"ensemble of {len(metrics['members'])} ({metrics['method']}) test accuracy:        {test['accuracy']:.4f}"
        f"  (NLL {test['nll']:.4f}, ECE {test['ece']:.4f})",
        f"train_seconds {metrics['train_seconds']:.1f}, wall_seconds {metrics['wall_seconds']:.1f}",
    ]
    return "\n".join(lines)


def cmd_train(args: argparse.Namespace) -> int:
    from boostray.trainer import train

    config = config_from_args(args)
    run_dir, metrics = train(config)
    print(format_summary(run_dir, metrics))
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from boostray.evaluate import evaluate_run

    report = evaluate_run(args.run_dir, dataset=args.dataset, data_dir=args.data_dir, split=args.split)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(f"{report['split']} split of {report['dataset']}: {report['samples']} samples")
        print(f"{'members':>7} {'accuracy':>9}")
        for k, acc in enumerate(report["staged_accuracy"], 1):
            print(f"{k:>7} {acc:>9.4f}")
        print(f"ensemble accuracy {report['accuracy']:.4f}, balanced {report['balanced_accuracy']:.4f}, "
              f"NLL {report['nll']:.4f}, ECE {report['ece']:.4f}, disagreement {report['disagreement']:.4f}")
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    from boostray.models import list_models

    print("\n".join(list_models()))
    return 0


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit 2 (argparse's own code)
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="boostray", description="Checkpoint-boosted neural network ensembles (CBNN) on Ray.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True

    train = sub.add_parser(
        "train", help="train one network, boost its checkpoints, write the run directory",
        description="Train one network for --epochs, take --checkpoints checkpoints, re-weight the samples "
        "AdaBoost-style at each (method cbnn) and write an ensemble run directory. With no options: digits, "
        "small_cnn, 12 epochs, 4 checkpoints, one Ray Train worker on a local Ray.",
    )
    add_train_options(train)
    train.set_defaults(func=cmd_train)

    ev = sub.add_parser("evaluate", help="score a run directory's ensemble on a data split",
                        description="Load RUN_DIR's ensemble (checking every member's sha256) and score it.")
    ev.add_argument("run_dir", metavar="RUN_DIR", help="a run directory written by 'boostray train'")
    ev.add_argument("--dataset", help="data set to score on (default: the run's own, with its config)")
    ev.add_argument("--data-dir", help="folder of the data set's files (default: the run's)")
    ev.add_argument("--split", choices=("test", "val", "train"), default="test", help="which split (default: test)")
    ev.add_argument("--json", action="store_true", help="print the full report as JSON")
    ev.set_defaults(func=cmd_evaluate)

    models = sub.add_parser("models", help="list the model registry")
    models.set_defaults(func=cmd_models)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from boostray.runtime import loopback_environment

    loopback_environment()
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except BoostrayError as exc:
        print(f"boostray: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("boostray: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())

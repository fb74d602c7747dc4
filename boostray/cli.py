"""The ``boostray`` command: train, evaluate, compare, serve, predict, export, tune, inspect, models.

Errors a user can fix print one line (``boostray: error: ...``) and exit with code 2. Each command
imports its own modules when it runs, so that ``--help`` and a Ray-free command never load Ray.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import signal
import sys
import typing
from typing import Sequence

from boostray import __version__
from boostray.config import FIELDS, PredictOptions, ServeOptions, TrainConfig, read_config_file
from boostray.errors import BoostrayError, ConfigError, RunFailedError, require_extra

EXIT_USAGE = 2
RUN_DIR_HELP = "a run directory written by 'boostray train': a path, or a storage URI (file://, s3://, gs://, hdfs://)"


def json_mapping(text: str) -> dict:
    """``--model-kwargs '{"width": 64}'``: a JSON object."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise argparse.ArgumentTypeError(f"expected a JSON object, got {text!r} ({exc.msg})") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"expected a JSON object such as '{{\"width\": 64}}', got {text!r}")
    return value


def name_list(text: str) -> list[str]:
    """``--feature-columns a,b,c``: names separated by commas."""
    names = [v.strip() for v in text.split(",") if v.strip()]
    if not names:
        raise argparse.ArgumentTypeError(f"expected names separated by commas, got {text!r}")
    return names


def _flag_type(annotation) -> tuple[type, list | None]:
    """argparse type and choices of an option's annotation (int, float, str, bool, Literal, X | None, a
    mapping as JSON, a list as comma-separated names)."""
    args = typing.get_args(annotation)
    origin = typing.get_origin(annotation)
    if origin is typing.Literal:
        return type(args[0]), list(args)
    if origin is dict:
        return json_mapping, None
    if origin is list:
        return name_list, None
    if args and type(None) in args:  # X | None
        return _flag_type(next(a for a in args if a is not type(None)))
    return annotation, None


def budget_list(text: str) -> list[int]:
    """``--epochs 12,48,96`` for compare: one or more budgets, each >= 1."""
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected epochs as integers separated by commas, got {text!r}") from None
    if not values or min(values) < 1 or len(set(values)) != len(values):
        raise argparse.ArgumentTypeError(f"expected distinct budgets >= 1, got {text!r}")
    return sorted(values)


def add_model_options(parser: argparse.ArgumentParser, fields: dict, *, skip: tuple[str, ...] = (),
                      suppress: bool = False, budgets: bool = False) -> None:
    """One flag per field of a config model, with its type, choices and help. ``suppress``: absent flags
    leave no attribute, so that only given flags override a --config file."""
    for name, field in fields.items():
        if name in skip:
            continue
        flag = "--" + name.replace("_", "-")
        preset = (field.json_schema_extra or {}).get("preset")
        help_text = field.description + (" [preset-dependent: see --method]" if preset else
                                         "" if field.default is None else f" (default: {field.default})")
        default = argparse.SUPPRESS if suppress else field.default
        kind, choices = _flag_type(field.annotation)
        if name == "mlflow":
            parser.add_argument(flag, nargs="?", const="auto", default=default, metavar="URI", help=help_text)
        elif budgets and name == "epochs":
            parser.add_argument(flag, type=budget_list, default=default, metavar="E[,E...]",
                                help=f"{help_text}; a comma-separated list runs every method at every budget")
        elif kind is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=default, help=help_text)
        else:
            parser.add_argument(flag, type=kind, choices=choices, default=default,
                                metavar=None if choices else name.upper(), help=help_text)


class _FormerName(argparse.Action):
    """A flag's former name: sets the option under its new name and says so in one line on stderr."""

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        new = "--" + self.dest.replace("_", "-")
        print(f"boostray: {option_string} is now {new}; the old name will be removed in a later release", file=sys.stderr)
        setattr(namespace, self.dest, values)


def add_train_options(parser: argparse.ArgumentParser, budgets: bool = False) -> None:
    """--config FILE and one flag per TrainConfig field. ``budgets``: --epochs takes a comma-separated
    list (compare's budget sweep)."""
    parser.add_argument("--config", metavar="FILE", help="YAML file whose keys mirror these options (flags win over it)")
    add_model_options(parser, FIELDS, suppress=True, budgets=budgets)
    parser.add_argument("--checkpoints", dest="members", type=int, action=_FormerName, default=argparse.SUPPRESS,
                        metavar="M", help="former name of --members")


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """Defaults < the --config YAML < the flags given; checked as a whole."""
    values = read_config_file(args.config) if getattr(args, "config", None) else {}
    values.update({k: v for k, v in vars(args).items() if k in FIELDS})
    return TrainConfig(**values)


def format_summary(run_dir: str, metrics: dict) -> str:
    """The end-of-run table: each member's epoch, lambda, error, weight in the ensemble, accuracy; then
    the ensemble against its own final network, on validation first (with a warning if it is worse)."""
    lines = [f"run directory: {run_dir}", "",
             f"{'member':>6} {'epoch':>5} {'lambda':>8} {'error':>8} {'weight':>7} {'val acc':>8} {'test acc':>8}"]
    for i, m in enumerate(metrics["members"]):
        err = "-" if m["error"] is None or m["error"] != m["error"] else f"{m['error']:.4f}"
        lines.append(f"{i + 1:>6} {m['epoch']:>5} {m['lambda']:>8.3f} {err:>8} {m['weight']:>7.3g} "
                     f"{m['val_accuracy']:>8.4f} {m['test_accuracy']:>8.4f}")
    val, test, crossfit = metrics["val"], metrics["test"], metrics["val_crossfit"]
    used = sum(1 for m in metrics["members"] if m["weight"] > 0)
    gain = (crossfit["accuracy"] - val["single_accuracy"]) * 100
    lines += [
        "",
        f"validation: ensemble of {used} ({metrics['method']}) {crossfit['accuracy']:.4f} (cross-fitted), "
        f"final network alone {val['single_accuracy']:.4f}: {gain:+.2f} points",
        f"test:       ensemble {test['accuracy']:.4f} (NLL {test['nll']:.4f}, ECE {test['ece']:.4f}, "
        f"temperature {metrics['temperature']:.3f}), final network alone {test['single_accuracy']:.4f}",
        f"train_seconds {metrics['train_seconds']:.1f}, wall_seconds {metrics['wall_seconds']:.1f}",
    ]
    if "train_imbalance" in metrics:
        lines.append(f"training labels: largest class / smallest {metrics['train_imbalance']:.1f}")
    if "shipped" in metrics:  # runs written before these records have neither
        lines.append(f"shipped: {metrics['shipped']['reason']}")
        lines.append(f"regime: {metrics['diagnostics']['regime']}")
    if gain < 0:
        lines.append(f"warning: on validation the ensemble is {-gain:.2f} points WORSE than its own final network; "
                     "deploy the final network (--combine final), or use a longer budget or --combine greedy")
    return "\n".join(lines)


# every method of the same budget, against one network on both schedules, with the M x cost ceiling
DEFAULT_COMPARE_METHODS = "single,single:schedule=step,checkpoint,snapshot,fge,swa,cbnn,cbnn-tail,deep"


def cmd_train(args: argparse.Namespace) -> int:
    """A client of the Python API: the options become a BoostTrainer, as from Python."""
    from boostray.api import BoostTrainer

    config = config_from_args(args)
    if config.workers:
        from boostray.distributed.console import quiet_driver_console

        quiet_driver_console(config.verbose)
    result = BoostTrainer.from_config(config).fit()
    if config.mlflow:
        from boostray.apps.tracking import log_finished_run

        log_finished_run(result.config, result.path, result.metrics)
    print(format_summary(result.path, result.metrics))
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from boostray.apps.evaluate import evaluate_run

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


def cmd_serve(args: argparse.Namespace) -> int:
    """Start Serve on 127.0.0.1 (or --host), deploy the ensemble, block until Ctrl-C, shut down."""
    import threading

    from ray import serve

    from boostray.distributed.runtime import (
        cluster_address, direct_ingress_environment, ray_session, replica_ports, require_gpus,
    )
    from boostray.apps.serving import build_app

    if args.ingress == "direct" and cluster_address(args.address):
        raise ConfigError("--ingress direct needs the local Ray this command starts; on a cluster, start "
                          "every node with RAY_SERVE_ENABLE_DIRECT_INGRESS=1 instead (README: Serving)")
    options = ServeOptions(**{k: v for k, v in vars(args).items() if k in ServeOptions.model_fields})
    application = build_app(options)  # checks the run directory before Ray starts
    ports = direct_ingress_environment(args.port + 1) if args.ingress == "direct" else None
    # Ctrl-C and SIGTERM (a process manager, `kill`) both shut down cleanly, also when this process was
    # started with SIGINT ignored (a background job of a non-interactive shell inherits that)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    with ray_session(args.address):
        if options.gpus_per_replica:
            require_gpus(options.gpus_per_replica, f"--gpus-per-replica {options.gpus_per_replica:g}")
        serve.start(http_options={"host": args.host, "port": args.port})
        try:
            serve.run(application, name="boostray", route_prefix="/")
            name = options.model_name or _run_name(args.run_dir)
            print(f"serving {name!r} at http://{args.host}:{args.port}/v1/models/{name}:predict "
                  f"(docs: /docs); Ctrl-C stops", flush=True)
            if ports is not None:
                found = replica_ports(ports)
                print(f"direct ingress: replicas answer at {', '.join(f'http://127.0.0.1:{p}' for p in found)} "
                      f"(the same routes, without the proxy; a replaced replica takes the next free port "
                      f"of {ports.start}-{ports.stop - 1})", flush=True)
            threading.Event().wait()  # until Ctrl-C
        except KeyboardInterrupt:
            print("shutting down", flush=True)
        finally:
            serve.shutdown()
    return 0


def _run_name(run_dir: str) -> str:
    from boostray.core.artifact.ensemble import read_manifest

    _, manifest = read_manifest(run_dir)
    return manifest.get("name") or os.path.basename(os.path.normpath(run_dir))


def cmd_predict(args: argparse.Namespace) -> int:
    from boostray.apps.batch_predict import check_predict_inputs, predict_parquet
    from boostray.distributed.runtime import ray_session, require_gpus

    options = PredictOptions(**{k: v for k, v in vars(args).items() if k in PredictOptions.model_fields})
    check_predict_inputs(args.run_dir, args.input, args.output, options.id_column, options.image_column)
    with ray_session(args.address):
        if options.gpu:
            require_gpus(1, "--gpu")
        rows = predict_parquet(args.run_dir, args.input, args.output, **options.model_dump())
    print(f"wrote {rows} predictions to {args.output}")
    return 0


def cmd_tune(args: argparse.Namespace) -> int:
    from boostray.apps.tuning import read_sweep_config, run_sweep
    from boostray.core.artifact import storage
    from boostray.distributed.runtime import ray_session

    config = read_sweep_config(args.config)  # every key checked before Ray starts
    config = config.with_options(**{k: v for k in ("name", "output") if (v := getattr(args, k))})
    with ray_session(args.address):
        summary = run_sweep(config, resume=args.resume)
    print(f"sweep {summary['sweep']}: {summary['trials']} trials, {summary['stopped_early']} stopped early by the scheduler")
    print(f"best trial {summary['best_trial']}: {summary['best_params']}")
    print(f"  {config.metric} {summary[f'best_{config.metric}']:.4f}, "
          f"test accuracy (reported once) {summary['best_test_accuracy']:.4f}")
    print(f"tables: {storage.join(config.sweep_dir, 'trials.md')}, best config: {storage.join(config.sweep_dir, 'best_config.yaml')}, "
          f"best ensemble: {summary['best_run_dir']}  ({summary['wall_seconds']:.0f} s)")
    return 0


def cmd_inspect(args: argparse.Namespace) -> int:
    from boostray.apps.inspect_run import hardest_samples, write_inspection

    require_extra("matplotlib", "report", "boostray inspect (its PNG grid)")

    rows, images = hardest_samples(args.run_dir, args.top)
    csv_path, png_path = write_inspection(rows, images, args.output or os.path.join(args.run_dir, "inspect"))
    print(f"{'rank':>4} {'index':>6} {'n*w':>7} {'label':<14} {'ensemble says':<14} {'p(label)':>8}")
    for r in rows:
        print(f"{r['rank']:>4} {r['index']:>6} {r['weight_x_n']:>7.2f} {r['label_name'][:14]:<14} "
              f"{r['predicted_name'][:14]:<14} {r['p_label']:>8.3f}")
    print(f"table: {csv_path}\ngrid:  {png_path}")
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from boostray.apps.compare import parse_methods, run_comparison
    from boostray.distributed.runtime import ray_session

    require_extra("matplotlib", "report", "boostray compare (its report's plots)")  # before any run trains

    specs = parse_methods(args.methods)
    budgets = getattr(args, "epochs", None)
    if budgets:
        args.epochs = budgets[0]
    base = config_from_args(args)
    budgets = budgets or [base.epochs]
    if args.seeds < 1:
        raise BoostrayError(f"--seeds must be >= 1, got {args.seeds}")
    from boostray.core.artifact import storage

    if storage.is_uri(args.report or ""):
        raise BoostrayError(f"--report {args.report}: compare writes its report and runs to a local or shared folder, not a URI")
    out_dir = os.path.abspath(os.path.expanduser(args.report))
    from boostray.apps.compare import run_configs

    run_configs(base, specs, args.seeds, out_dir, budgets)  # every run's options (and reuse) checked before Ray starts
    from boostray.core.data.datasets import load_training_data

    load_training_data(base)  # and the data
    os.makedirs(out_dir, exist_ok=True)
    with ray_session(base.address, dashboard=base.dashboard) if base.workers else contextlib.nullcontext():
        summary = run_comparison(base, specs, args.seeds, out_dir, budgets)
    with open(os.path.join(out_dir, "results.md")) as f:
        print(f.read())
    print(f"report: {os.path.join(out_dir, 'report.html')} ({summary['wall_seconds']:.0f} s)")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    """One portable file computing the whole ensemble (core/artifact/export.py); --check compares ONNX Runtime."""

    from boostray.core.artifact.ensemble import load_ensemble
    from boostray.core.artifact.export import compare_with_runtime, example_inputs, export_ensemble

    if args.format == "onnx":
        require_extra("onnx", "onnx", "boostray export --format onnx")
    if args.check:
        if args.format != "onnx":
            raise BoostrayError("--check runs the file in ONNX Runtime: it needs --format onnx")
        require_extra("onnxruntime", "onnx", "boostray export --check")
        if args.check < 1:
            raise BoostrayError(f"--check must be >= 1 images, got {args.check}")
    ensemble = load_ensemble(args.run_dir)  # every member's sha256 checked first
    default = "ensemble.onnx" if args.format == "onnx" else "ensemble.pt2"
    path = args.output or os.path.join(args.run_dir, default)
    if os.path.isdir(path) or not os.path.isdir(os.path.dirname(os.path.abspath(path))):
        raise BoostrayError(f"--output {path} must be a file in an existing folder")
    export_ensemble(ensemble, path, args.format)
    print(f"wrote {path} ({os.path.getsize(path) / 1e6:.1f} MB, {len(ensemble)} members, "
          f"input {'uint8' if ensemble.input_kind == 'image' else 'float32'} {list(ensemble.input_shape)} x any batch, "
          f"output probabilities)")
    if args.check:
        diff = compare_with_runtime(path, ensemble, example_inputs(ensemble, args.check))
        print(f"ONNX Runtime vs load_ensemble on {args.check} random inputs: max |difference| {diff:.2e}")
        if diff > 1e-4:
            print("boostray: error: the exported graph disagrees with the ensemble beyond 1e-4", file=sys.stderr)
            return 1
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    from boostray.core.models import list_models

    print("\n".join(list_models()))
    print("(or your own: --model package.module:factory, with --model-kwargs JSON)", file=sys.stderr)
    return 0


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit 2 (argparse's own code)
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


def _add_train_command(sub: argparse._SubParsersAction) -> None:
    train = sub.add_parser(
        "train", help="train one network, boost its checkpoints, write the run directory",
        description="Train one network for --epochs, take --members members along the way, re-weight the "
        "samples AdaBoost-style at each and write an ensemble run directory; the default method (cbnn-tail) "
        "ships its final network alone when no member helps on validation. With no options: digits, "
        "small_cnn, 12 epochs, 4 members, one Ray Train worker on a local Ray.",
    )
    add_train_options(train)
    train.set_defaults(func=cmd_train)


def _add_evaluate_command(sub: argparse._SubParsersAction) -> None:
    ev = sub.add_parser("evaluate", help="score a run directory's ensemble on a data split",
                        description="Load RUN_DIR's ensemble (checking every member's sha256) and score it.")
    ev.add_argument("run_dir", metavar="RUN_DIR", help=RUN_DIR_HELP)
    ev.add_argument("--dataset", help="data set to score on (default: the run's own, with its config)")
    ev.add_argument("--data-dir", help="folder of the data set's files (default: the run's)")
    ev.add_argument("--split", choices=("test", "val", "train"), default="test", help="which split (default: test)")
    ev.add_argument("--json", action="store_true", help="print the full report as JSON")
    ev.set_defaults(func=cmd_evaluate)


def _add_serve_command(sub: argparse._SubParsersAction) -> None:
    sv = sub.add_parser("serve", help="serve a run's ensemble over HTTP with Ray Serve (blocks until Ctrl-C)",
                        description="POST /v1/models/NAME:predict {\"instances\": [...]} -> {\"predictions\": [...]}; "
                        "GET /v1/models/NAME, GET /healthz, OpenAPI docs at /docs.")
    sv.add_argument("run_dir", metavar="RUN_DIR", help=RUN_DIR_HELP)
    add_model_options(sv, ServeOptions.model_fields, skip=("run_dir",))
    sv.add_argument("--host", default="127.0.0.1", help="HTTP host (default: 127.0.0.1)")
    sv.add_argument("--port", type=int, default=8000, help="HTTP port (default: 8000)")
    sv.add_argument("--address", help="Ray cluster to join (default: RAY_ADDRESS, else a local Ray on 127.0.0.1)")
    sv.add_argument("--ingress", choices=("proxy", "direct"), default="proxy",
                    help="proxy: requests reach the replicas through Serve's HTTP proxy on --port (Ray's "
                         "default; one address for any number of replicas). direct: each replica also answers "
                         "on its own port from --port + 1 (Serve's direct ingress, a local Ray only), skipping "
                         "the proxy's two Ray calls per request (docs/serving.md) (default: proxy)")
    sv.set_defaults(func=cmd_serve)


def _add_predict_command(sub: argparse._SubParsersAction) -> None:
    pr = sub.add_parser("predict", help="batch inference over a Parquet data set with Ray Data",
                        description="Score every row of a Parquet data set with an actor pool; writes a Parquet "
                        "folder with the id, label, class_name and probabilities.")
    pr.add_argument("run_dir", metavar="RUN_DIR", help=RUN_DIR_HELP)
    pr.add_argument("--input", required=True, help="Parquet file or folder with an id and an image column: a path or a storage URI (s3://, gs://, file://)")
    pr.add_argument("--output", required=True, help="Parquet folder to write (must not exist): a path or a storage URI; at a URI it is complete once its _SUCCESS file is there")
    add_model_options(pr, PredictOptions.model_fields)
    pr.add_argument("--address", help="Ray cluster to join (default: RAY_ADDRESS, else a local Ray on 127.0.0.1)")
    pr.set_defaults(func=cmd_predict)


def _add_tune_command(sub: argparse._SubParsersAction) -> None:
    tn = sub.add_parser("tune", help="Ray Tune sweep of boosting and LR hyperparameters on validation data",
                        description="Run the sweep a YAML describes (see tune_configs/): each trial is a Ray Train run, "
                        "ASHA stops weak trials after any round; writes trials.csv/.md, best_config.yaml and the "
                        "best trial's run directory under OUTPUT/NAME.")
    tn.add_argument("config", metavar="CONFIG.yaml", help="sweep description (train options, search space, scheduler)")
    tn.add_argument("--resume", action="store_true", help="resume an interrupted sweep of the same name; finished trials are kept")
    tn.add_argument("--name", help="override the sweep's name")
    tn.add_argument("--output", help="override the sweep's output: a folder, or a storage URI (s3://, gs://, file://) that then holds the trials, Tune's state and the results")
    tn.add_argument("--address", help="Ray cluster to join (default: RAY_ADDRESS, else a local Ray on 127.0.0.1)")
    tn.set_defaults(func=cmd_tune)


def _add_compare_command(sub: argparse._SubParsersAction) -> None:
    cp = sub.add_parser("compare", help="several methods x seeds at the same budget, and a report",
                        description="Train every method in --methods for --seeds seeds with the same data, model and "
                        "budget (the train options below), as concurrent Ray Train runs when the cluster has room, "
                        "and write a report folder: results.md/.csv (mean +- std over seeds), PNG plots, report.html. "
                        "A method may carry overrides: cbnn:eta=0.1+error_source=running. Rerunning the same "
                        "command skips finished runs.")
    cp.add_argument("--methods", default=DEFAULT_COMPARE_METHODS,
                    help=f"comma-separated methods; deep trains M networks, M x the cost (default: {DEFAULT_COMPARE_METHODS})")
    cp.add_argument("--seeds", type=int, default=3, help="seeds per method (default: 3)")
    cp.add_argument("--report", default=os.path.join("~", "boostray_runs", "compare"), help="report folder")
    add_train_options(cp, budgets=True)
    cp.set_defaults(func=cmd_compare)


def _add_inspect_command(sub: argparse._SubParsersAction) -> None:
    ins = sub.add_parser("inspect", help="the training samples with the largest final boosting weights",
                         description="Table and PNG grid of the N training samples the boosting weighted most at "
                         "the end: the examples the ensemble found hardest (often mislabeled ones).")
    ins.add_argument("run_dir", metavar="RUN_DIR", help=RUN_DIR_HELP)
    ins.add_argument("--top", type=int, default=32, help="how many samples (default: 32)")
    ins.add_argument("--output", help="folder for hardest.csv and hardest.png (default: RUN_DIR/inspect)")
    ins.set_defaults(func=cmd_inspect)


def _add_export_command(sub: argparse._SubParsersAction) -> None:
    ex = sub.add_parser("export", help="one ONNX (or torch.export) file computing the whole ensemble",
                        description="Write one graph that takes raw uint8 pixels (any batch size), normalises them, "
                        "runs every member, combines them with the ensemble's weights and temperature and returns "
                        "probabilities. ONNX carries each member's sha256 in its metadata.")
    ex.add_argument("run_dir", metavar="RUN_DIR", help=RUN_DIR_HELP)
    ex.add_argument("--format", choices=("onnx", "torch-export"), default="onnx",
                    help="onnx, or torch-export (a torch.export program, torch.export.load(path).module()) (default: onnx)")
    ex.add_argument("--output", help="file to write (default: RUN_DIR/ensemble.onnx or RUN_DIR/ensemble.pt2)")
    ex.add_argument("--check", type=int, default=0, metavar="N",
                    help="run the ONNX file in ONNX Runtime on N random images and compare with the ensemble")
    ex.set_defaults(func=cmd_export)


def _add_models_command(sub: argparse._SubParsersAction) -> None:
    models = sub.add_parser("models", help="list the model registry")
    models.set_defaults(func=cmd_models)

def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="boostray", description="Checkpoint-boosted neural network ensembles (CBNN) on Ray.")
    parser.add_argument("--version", action="version", version=f"boostray {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True
    _add_train_command(sub)
    _add_evaluate_command(sub)
    _add_serve_command(sub)
    _add_predict_command(sub)
    _add_tune_command(sub)
    _add_compare_command(sub)
    _add_inspect_command(sub)
    _add_export_command(sub)
    _add_models_command(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    os.environ.setdefault("RAY_TRAIN_V2_ENABLED", "1")  # read when Ray Train is imported; Ray 2.60's default
    from boostray.distributed.runtime import ARROW_POOL

    for key, value in ARROW_POOL.items():  # read when pyarrow is imported, which no command has done yet
        os.environ.setdefault(key, value)
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except BoostrayError as exc:
        print(f"boostray: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except RunFailedError as exc:
        print(f"boostray: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("boostray: interrupted", file=sys.stderr)
        return 130


def run_command() -> typing.NoReturn:
    """The ``boostray`` executable: ``main()``, then an exit that skips the interpreter's last garbage
    collections over the millions of objects torch and Ray allocate (``gc.freeze``), a noticeable part of
    a short command's exit. Every file boostray writes is closed by then."""
    code = main()
    gc.freeze()
    sys.exit(code)


if __name__ == "__main__":
    run_command()

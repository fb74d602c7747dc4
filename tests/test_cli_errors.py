"""Bad input: one line naming the problem, exit code 2, no traceback, nothing written."""

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from boostray.cli import main
from helpers import synthetic_images, write_parquet_split
from test_ensemble import make_artifact


def run_cli(capsys, args, output):
    code = main(args + ["--output", str(output)]) if args[0] == "train" else main(args)
    err = capsys.readouterr().err.strip().splitlines()
    return code, err


@pytest.mark.parametrize("args,message", [
    (["--dataset", "mnist-ish"], "unknown dataset 'mnist-ish'"),
    (["--model", "vgg"], "unknown model 'vgg'"),
    (["--method", "bagging"], "unknown method 'bagging'"),
    (["--members", "0"], "--members must be >= 1, got 0"),
    (["--epochs", "3", "--members", "4"], "--members must be between 1 and --epochs (3)"),
    (["--eta", "1.5"], "--eta must be <= 1, got 1.5"),
    (["--eta", "0"], "--eta must be > 0, got 0.0"),
    (["--method", "fge", "--members", "0"], "--members must be >= 1, got 0"),
    (["--method", "fge", "--members", "-1"], "--members must be >= 1, got -1"),
    (["--method", "fge", "--epochs", "4", "--members", "4"], "fge needs --epochs > members x cycle epochs"),
    (["--placement", "tail", "--first-member", "0.95"], "--first-member puts member 1 at epoch 11"),
    (["--schedule", "swa", "--method", "cbnn"], "--schedule swa makes one averaged network"),
    (["--dataset", "parquet", "--data-dir", "/nonexistent/folder"], "does not exist"),
    (["--dataset", "fashion-mnist", "--data-dir", "/tmp"], "apt-get install dataset-fashion-mnist"),
])
def test_bad_options(capsys, tmp_path, args, message):
    out = tmp_path / "out"
    code, err = run_cli(capsys, ["train", "--workers", "0", *args], out)
    assert code == 2
    assert len(err) == 1 and message in err[0] and err[0].startswith("boostray: error:")
    assert not out.exists()


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="this machine has the GPU it asks for")
def test_gpu_in_process_without_a_gpu(capsys, tmp_path):
    out = tmp_path / "out"
    code, err = run_cli(capsys, ["train", "--workers", "0", "--gpu"], out)
    assert code == 2
    assert len(err) == 1 and "--gpu with --workers 0 trains on this machine's GPU, and torch finds none" in err[0]
    assert not out.exists()


def bad_parquet(tmp_path, kind):
    images, labels = synthetic_images(20)
    folder = tmp_path / kind
    folder.mkdir()
    if kind == "labels":
        write_parquet_split(str(folder / "train.parquet"), images, np.where(labels == 2, -1, labels))
    elif kind == "empty":
        write_parquet_split(str(folder / "train.parquet"), images, labels)
        write_parquet_split(str(folder / "test.parquet"), images[:0], labels[:0])
    elif kind == "shapes":
        big, _ = synthetic_images(20, size=12)
        write_parquet_split(str(folder / "train.parquet"), np.concatenate([images[:10]]), labels[:10])
        write_parquet_split(str(folder / "test.parquet"), big, labels)
    return folder


@pytest.mark.parametrize("kind,message", [
    ("labels", "labels outside 0..1 in the train split"),
    ("empty", "the test split is empty"),
    ("shapes", "mismatched image shapes"),
])
def test_bad_data(capsys, tmp_path, kind, message):
    folder = bad_parquet(tmp_path, kind)
    out = tmp_path / "out"
    code, err = run_cli(capsys, ["train", "--workers", "0", "--dataset", "parquet", "--data-dir", str(folder)], out)
    assert code == 2 and len(err) == 1 and message in err[0], err
    assert not out.exists()


def test_bad_config_file(capsys, tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("epochs: 4\nlearning_rate: 0.1\n")
    code, err = run_cli(capsys, ["train", "--config", str(cfg)], tmp_path / "out")
    assert code == 2 and err == ["boostray: error: unknown key 'learning_rate' in " + str(cfg)]
    cfg.write_text("epochs: four\n")
    code, err = run_cli(capsys, ["train", "--config", str(cfg)], tmp_path / "out")
    assert code == 2 and err[0].endswith("c.yaml: --epochs must be an integer, got 'four'")


def test_tampered_artifact_on_evaluate(capsys, tmp_path):
    make_artifact(tmp_path / "run" / "ensemble")
    with open(tmp_path / "run" / "ensemble" / "member_000.pt", "ab") as f:
        f.write(b"\0")
    code, err = run_cli(capsys, ["evaluate", str(tmp_path / "run")], None)
    assert code == 2 and len(err) == 1 and "sha256 mismatch" in err[0]


def test_finished_run_name_is_not_overwritten(capsys, tmp_path):
    (tmp_path / "done").mkdir()
    code, err = run_cli(capsys, ["train", "--workers", "0", "--name", "done"], tmp_path)
    assert code == 2 and "already finished" in err[0]


def test_real_process_exit_code_and_single_line():
    proc = subprocess.run(
        [os.path.join(os.path.dirname(sys.executable), "boostray"), "train", "--members", "99"],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == ["boostray: error: --members must be between 1 and --epochs (12), got 99"]
    assert "Traceback" not in proc.stdout + proc.stderr


def test_compare_without_the_report_extra_stops_before_training(tmp_path):
    """matplotlib missing: one line naming the extra, exit 2, no run trained, nothing written."""
    script = textwrap.dedent(f"""
        import importlib.util, sys
        found = importlib.util.find_spec
        importlib.util.find_spec = lambda name, *a: None if name.split(".")[0] == "matplotlib" else found(name, *a)
        from boostray.cli import main
        sys.exit(main(["compare", "--workers", "0", "--epochs", "2", "--members", "1", "--methods", "single",
                       "--seeds", "1", "--report", {str(tmp_path / "report")!r}]))
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    err = out.stderr.strip().splitlines()
    assert out.returncode == 2, out.stderr[-2000:]
    assert len(err) == 1 and "pip install 'boostray[report]'" in err[0]
    assert not (tmp_path / "report").exists()


def test_serve_options_are_the_typed_argument_of_the_application_builder():
    """`serve run boostray.apps.serving:build_app run_dir=... replicas=2` hands Serve text: ServeOptions is
    what Serve validates it into (the builder's annotation), and bad values name the option."""
    import inspect

    from boostray.config import ServeOptions
    from boostray.errors import ConfigError
    from boostray.apps.serving import build_app

    (param,) = inspect.signature(build_app).parameters.values()
    assert param.annotation is ServeOptions
    options = ServeOptions.model_validate({"run_dir": "r", "replicas": "2", "cascade": "true", "autoscale": "1:3"})
    assert (options.replicas, options.cascade, options.autoscale_range()) == (2, True, (1, 3))
    for bad, message in (({"replicas": 0}, "--replicas must be >= 1"), ({"autoscale": "3:1"}, "--autoscale needs MIN <= MAX"),
                         ({"autoscale": "x"}, "--autoscale must match"), ({"forward": "gpu"}, "--forward must be one of"),
                         ({"max_batch": 3}, "unknown option --max-batch")):
        with pytest.raises(ConfigError, match=message):
            ServeOptions(run_dir="r", **bad)


def test_serve_refuses_bad_options_before_ray_starts(capsys, tmp_path):
    make_artifact(tmp_path / "run" / "ensemble")
    code, err = run_cli(capsys, ["serve", str(tmp_path / "run"), "--autoscale", "4:2"], None)
    assert code == 2 and err == ["boostray: error: --autoscale needs MIN <= MAX and MAX >= 1, got '4:2'"]
    code, err = run_cli(capsys, ["serve", str(tmp_path / "run"), "--ingress", "direct", "--address", "127.0.0.1:1"], None)
    assert code == 2 and err == ["boostray: error: --ingress direct needs the local Ray this command starts; on a "
                                 "cluster, start every node with RAY_SERVE_ENABLE_DIRECT_INGRESS=1 instead (README: Serving)"]
    assert "RAY_SERVE_ENABLE_DIRECT_INGRESS" not in os.environ  # refused before anything was set


def test_the_command_reference_in_docs_is_the_parsers_own():
    """docs/cli.md is generated from the parser; regenerate it with the command its first lines name."""
    from boostray.cli_reference import render

    path = os.path.join(os.path.dirname(__file__), "..", "docs", "cli.md")
    with open(path) as f:
        assert f.read() == render(), "docs/cli.md is stale: python -m boostray.cli_reference > docs/cli.md"


def test_checkpoints_is_the_former_name_of_members_and_says_so(tmp_path, capsys):
    from boostray.cli import build_parser, config_from_args

    args = build_parser().parse_args(["train", "--checkpoints", "3", "--epochs", "6"])
    assert config_from_args(args).members == 3
    assert capsys.readouterr().err.strip() == ("boostray: --checkpoints is now --members; the old name will be "
                                               "removed in a later release")
    config = tmp_path / "old.yaml"
    config.write_text("checkpoints: 2\nepochs: 4\n")  # a YAML or config.yaml written before the rename
    args = build_parser().parse_args(["train", "--config", str(config)])
    assert config_from_args(args).members == 2


def test_version_names_the_package(capsys):
    from boostray import __version__

    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0 and capsys.readouterr().out.strip() == f"boostray {__version__}"

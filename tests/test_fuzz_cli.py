"""Bad input fuzzed over every subcommand and option: generated wrong types, values out of range or
outside the choices, unknown names, missing files, malformed or unknown YAML. Every one must end with
exit code 2, exactly one line on stderr (no traceback) and nothing written."""

import os
import re
import tempfile
import typing

import annotated_types as at
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from boostray.cli import _flag_type, main
from boostray.config import FIELDS, PredictOptions, ServeOptions
from test_ensemble import make_artifact

FUZZ = settings(max_examples=60, deadline=None, derandomize=True,  # the same examples on every CI run
               suppress_health_check=[HealthCheck.function_scoped_fixture])
WORDS = st.text(alphabet="abcdefghijklmnopqrstuvwxyz_", min_size=1, max_size=12)
NOT_A_NUMBER = WORDS.filter(lambda t: t not in ("inf", "nan", "infinity", "e"))
# options whose every value of the right type is accepted: nothing to fuzz but the type
FREE = {"data_dir", "output", "address", "seed", "name", "model_name"}


def _bounds(field) -> dict:
    out = {}
    for m in field.metadata:
        for attr in ("gt", "ge", "lt", "le"):
            if isinstance(m, getattr(at, attr.capitalize())):
                out[attr] = getattr(m, attr)
    return out


def bad_values(name: str, field) -> st.SearchStrategy[str]:
    """Text for ``--name=TEXT`` that the option must refuse."""
    kind, choices = _flag_type(field.annotation)
    if kind is bool:
        return st.just("yes")  # --flag=yes: boolean flags take no value
    if choices:
        return WORDS.filter(lambda t: t not in choices)
    if kind in (int, float):
        bounds, options = _bounds(field), [NOT_A_NUMBER]
        step = 1 if kind is int else 0.5
        if "gt" in bounds:
            options.append(st.sampled_from([bounds["gt"], bounds["gt"] - step]))
        if "ge" in bounds:
            options.append(st.just(bounds["ge"] - step))
        if "lt" in bounds:
            options.append(st.sampled_from([bounds["lt"], bounds["lt"] + step]))
        if "le" in bounds:
            options.append(st.just(bounds["le"] + step))
        if name == "members":
            options.append(st.integers(13, 10_000))  # more rounds than the default 12 epochs
        return st.one_of(*options).map(lambda v: v if isinstance(v, str) else repr(kind(v)))
    if name in ("dataset", "model", "method"):
        return WORDS.filter(lambda t: t not in ("digits", "small_cnn", "cbnn", "single", "checkpoint", "snapshot",
                                                "fge", "swa", "parquet", "imagefolder", "cifar10", "cifar100"))
    return st.nothing()


def fuzzable(fields: dict, skip=()) -> list[str]:
    return [n for n, f in fields.items() if n not in FREE and n not in skip and not bad_values(n, f).is_empty]


def run(capsys, argv: list[str]) -> tuple[int, list[str]]:
    try:
        code = main(argv)
    except SystemExit as exc:  # argparse's own errors
        code = exc.code
    err = capsys.readouterr().err.strip().splitlines()
    return code, err


def assert_refused(code: int, err: list[str], *unwritten: str) -> None:
    assert code == 2, err
    assert len(err) == 1 and re.match(r"boostray( [a-z]+)?: error: ", err[0]), err
    assert "Traceback" not in err[0]
    for path in unwritten:
        assert not os.path.exists(path), path


@st.composite
def train_option(draw, fields=FIELDS, skip=()):
    name = draw(st.sampled_from(fuzzable(fields, skip)))
    return name, draw(bad_values(name, fields[name]))


@pytest.mark.parametrize("command", ["train", "compare"])
@FUZZ
@given(option=train_option(skip=("epochs",)))
def test_train_and_compare_refuse_every_bad_option_value(capsys, command, option):
    name, value = option
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "out")
        where = ["--output", out] if command == "train" else ["--report", out, "--methods", "single", "--seeds", "1"]
        code, err = run(capsys, [command, "--workers", "0", *where, f"--{name.replace('_', '-')}={value}"])
        assert_refused(code, err, out)


@FUZZ
@given(option=train_option(skip=("epochs",)), as_text=st.booleans())
def test_yaml_config_files_with_bad_values_are_refused(capsys, option, as_text):
    """The same bad values as YAML keys (typed by YAML, or quoted as text)."""
    name, value = option
    if value == "yes":  # a boolean's bad flag value is YAML's true: give YAML a word it keeps as text
        value = "maybe"
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "c.yaml")
        with open(path, "w") as f:
            f.write(f"{name}: {value!r}\n" if as_text else f"{name}: {value}\n")
        out = os.path.join(tmp, "out")
        code, err = run(capsys, ["train", "--workers", "0", "--config", path, "--output", out])
        assert_refused(code, err, out)


@FUZZ
@given(key=WORDS.filter(lambda k: k not in FIELDS and k.replace("-", "_") not in FIELDS),
       broken=st.sampled_from(["key: [unclosed", "- a list\n- not a mapping", "a: b: c", "{", "plain text"]),
       which=st.sampled_from(["unknown", "malformed", "missing"]))
def test_unknown_malformed_or_missing_yaml_is_refused(capsys, key, broken, which):
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "c.yaml")
        if which != "missing":
            with open(path, "w") as f:
                f.write(f"{key}: 1\n" if which == "unknown" else broken)
        out = os.path.join(tmp, "out")
        for argv in (["train", "--workers", "0", "--config", path, "--output", out], ["tune", path, "--output", out]):
            code, err = run(capsys, argv)
            assert_refused(code, err, out)


@FUZZ
@given(epochs=st.one_of(NOT_A_NUMBER, st.sampled_from(["0", "-3", "4,4", "4,,x", "", "2.5"])))
def test_compare_refuses_bad_budget_lists(capsys, epochs):
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "out")
        code, err = run(capsys, ["compare", "--workers", "0", f"--epochs={epochs}", "--report", out])
        assert_refused(code, err, out)


@FUZZ
@given(methods=st.one_of(WORDS.filter(lambda t: t not in ("single", "cbnn", "checkpoint", "snapshot", "fge", "swa")),
                         st.sampled_from(["cbnn:eta=2", "cbnn:eta", "cbnn:learning_rate=1", "single,single",
                                          "cbnn:combine=median", "cbnn:seed=3", ",", "swa:combine=uniform"])),
       seeds=st.sampled_from(["1", "0", "-1", "x"]))
def test_compare_refuses_bad_method_lists_and_seed_counts(capsys, methods, seeds):
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "out")
        code, err = run(capsys, ["compare", "--workers", "0", "--methods", methods, f"--seeds={seeds}", "--report", out])
        assert_refused(code, err, out)


@pytest.fixture(scope="module")
def artifact(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("artifact") / "run"
    make_artifact(run_dir / "ensemble")
    return str(run_dir)


@FUZZ
@given(option=train_option(fields=ServeOptions.model_fields, skip=("run_dir",)), missing=st.booleans())
def test_serve_refuses_bad_options_and_missing_runs(capsys, artifact, option, missing):
    name, value = option
    run_dir = os.path.join(artifact, "nope") if missing else artifact
    argv = ["serve", run_dir] + ([] if missing else [f"--{name.replace('_', '-')}={value}"])
    code, err = run(capsys, argv)
    assert_refused(code, err)


@FUZZ
@given(option=train_option(fields=PredictOptions.model_fields),
       case=st.sampled_from(["option", "missing-run", "missing-input", "existing-output"]))
def test_predict_refuses_bad_options_and_paths(capsys, artifact, option, case):
    import pyarrow as pa
    import pyarrow.parquet as pq

    name, value = option
    with tempfile.TemporaryDirectory() as tmp:
        good_input = os.path.join(tmp, "in.parquet")
        pq.write_table(pa.table({"id": [1], "image": [[0.0] * 64]}), good_input)
        out = os.path.join(tmp, "out")
        run_dir = os.path.join(tmp, "nope") if case == "missing-run" else artifact
        source = os.path.join(tmp, "absent.parquet") if case == "missing-input" else good_input
        if case == "existing-output":
            os.makedirs(out)
        extra = [f"--{name.replace('_', '-')}={value}"] if case == "option" else []
        code, err = run(capsys, ["predict", run_dir, "--input", source, "--output", out, *extra])
        assert_refused(code, err, *([] if case == "existing-output" else [out]))


@FUZZ
@given(top=st.one_of(st.sampled_from(["0", "-5"]), NOT_A_NUMBER), split=WORDS.filter(lambda t: t not in ("test", "val", "train")))
def test_evaluate_inspect_and_export_refuse_bad_values_and_missing_runs(capsys, artifact, top, split):
    with tempfile.TemporaryDirectory() as tmp:
        for argv in (["evaluate", os.path.join(tmp, "nope")], ["evaluate", artifact, f"--split={split}"],
                     ["inspect", os.path.join(tmp, "nope")], ["inspect", artifact, f"--top={top}", "--output", os.path.join(tmp, "o")],
                     ["export", os.path.join(tmp, "nope")], ["export", artifact, f"--format={split}"],
                     ["export", artifact, "--check=-3", "--output", os.path.join(tmp, "o")]):
            code, err = run(capsys, argv)
            assert_refused(code, err, os.path.join(tmp, "o"), os.path.join(artifact, "ensemble.onnx"))

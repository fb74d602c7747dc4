"""boostray compare on a tiny budget (in-process), boostray inspect, and the SWA member's BN statistics."""

import csv
import json
import os

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from boostray import load_ensemble
from boostray.cli import main
from boostray.apps.compare import parse_methods
from boostray.core.data.datasets import load_dataset, normalize
from boostray.errors import ConfigError

TINY = ["--workers", "0", "--epochs", "4", "--members", "2"]
METHODS = "single,single:schedule=step,checkpoint,snapshot,fge,swa,cbnn,cbnn-tail,deep"


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    out = tmp_path_factory.mktemp("compare")
    assert main(["compare", *TINY, "--methods", METHODS, "--seeds", "2", "--report", str(out)]) == 0
    return out


def test_compare_writes_table_plots_and_one_page_report(report):
    rows = list(csv.DictReader(open(report / "results.csv")))
    assert [r["method"] for r in rows] == ["single", "single:schedule=step", "checkpoint", "snapshot", "fge", "swa",
                                           "cbnn", "cbnn-tail", "deep"]
    assert all(r["seeds"] == "2" and 0 <= float(r["error"]) < 0.5 for r in rows)
    by = {r["method"]: r for r in rows}
    assert float(by["deep"]["cost"]) == 2.0 and float(by["cbnn-tail"]["cost"]) == 1.0  # deep: M networks, M x
    assert float(by["single"]["gap_single"]) == 0.0
    gap = (float(by["single:schedule=step"]["error"]) - float(by["cbnn-tail"]["error"])) * 100
    assert float(by["cbnn-tail"]["gap_single:schedule=step"]) == pytest.approx(gap)
    assert 0 <= float(by["cbnn-tail"]["diversity_ratio"]) and by["cbnn-tail"]["late_gain"] != "nan"
    md = (report / "results.md").read_text()
    assert "| fge |" in md and "±" in md and "val bal. acc." in md
    assert md.count("| deep (2x cost) |") == 2 + 4 and "| deep |" not in md  # main, per-class, 4 rules
    assert "| vs single | vs single (step) |" in md
    assert "diversity ratio" in md and "late gain" in md
    assert "Per-class test accuracy" in md and md.count("| cbnn-tail |") == 2 + 4  # main, per-class, 4 rules
    assert "val acc. (cross-fit)" in md and "| cbnn-tail | greedy |" in md
    pngs = sorted(p for p in os.listdir(report) if p.endswith(".png"))
    assert pngs == ["cbnn_lambda_ess.png", "cbnn_weight_histogram.png", "lr_schedules.png", "staged_accuracy.png"]
    for p in pngs:
        with Image.open(report / p) as im:
            assert im.format == "PNG" and im.size[0] > 300
    page = (report / "report.html").read_text()
    assert page.count("data:image/png;base64,") == 4 and "<td>swa</td>" in page


def test_compare_members_follow_each_method(report):
    summary = json.loads((report / "summary.json").read_text())
    members = {}
    for run in summary["runs"]:
        manifest = json.loads(open(os.path.join(run["run_dir"], "ensemble", "manifest.json")).read())
        members[run["method"]] = (manifest["method"], [m["weight"] for m in manifest["members"]])
    assert members["single"] == ("single", [1.0]) and members["swa"] == ("swa", [1.0])
    assert members["snapshot"] == ("snapshot", [1.0, 1.0]) and members["fge"] == ("fge", [1.0, 1.0])
    assert members["deep"] == ("deep", [1.0, 1.0])
    assert members["cbnn"][0] == "cbnn" and members["cbnn"][1][0] != members["cbnn"][1][1]  # lambda-weighted
    assert members["cbnn-tail"][0] == "cbnn-tail" and members["cbnn-tail"][1][-1] >= 1  # grown from the final network
    fge = json.loads(open(os.path.join([r for r in summary["runs"] if r["method"] == "fge"][0]["run_dir"], "metrics.json")).read())
    assert [m["epoch"] for m in fge["members"]] == [3, 4]  # first phase 2 epochs, cycles of 1 epoch


def test_rerun_skips_finished_runs(report):
    before = {d: os.path.getmtime(report / "runs" / d / "metrics.json") for d in os.listdir(report / "runs") if not d.startswith(".")}
    assert main(["compare", *TINY, "--methods", METHODS, "--seeds", "2",
                 "--report", str(report)]) == 0
    after = {d: os.path.getmtime(report / "runs" / d / "metrics.json") for d in os.listdir(report / "runs") if not d.startswith(".")}
    assert after == before


def test_rerun_with_other_options_refuses_to_reuse_stale_runs(report, capsys):
    before = sorted(os.listdir(report / "runs"))
    assert main(["compare", *TINY, "--methods", "single", "--lr", "0.01", "--seeds", "1", "--report", str(report)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "single-e4-seed0" in err[0] and "lr: 0.05 -> 0.01" in err[0]
    assert sorted(os.listdir(report / "runs")) == before


def test_swa_member_has_bn_statistics_recomputed_on_the_training_data(report):
    summary = json.loads((report / "summary.json").read_text())
    run_dir = [r for r in summary["runs"] if r["method"] == "swa"][0]["run_dir"]
    member = load_ensemble(run_dir).members[0]
    data = load_dataset("digits")
    x = normalize(torch.from_numpy(data.train.images), torch.tensor(data.mean), torch.tensor(data.std))
    from boostray.core.method.engine import EVAL_BATCH

    with torch.no_grad():  # the layer feeding the first BatchNorm, batch by batch as update_bn saw it
        batch_means = [member[0](x[i:i + EVAL_BATCH]).mean(dim=(0, 2, 3)) for i in range(0, len(x), EVAL_BATCH)]
    # update_bn's cumulative average (momentum None) weighs each batch equally
    torch.testing.assert_close(member[1].running_mean, torch.stack(batch_means).mean(0), rtol=1e-4, atol=1e-5)


def test_method_overrides_are_validated():
    assert parse_methods("cbnn:eta=0.1+error_source=running")[0].overrides == {"eta": 0.1, "error_source": "running"}
    with pytest.raises(ConfigError, match="bad override"):
        parse_methods("cbnn:learning_rate=0.1")
    with pytest.raises(ConfigError, match="twice"):
        parse_methods("cbnn,cbnn")


def test_inspect_shows_the_heaviest_samples(tmp_path, capsys):
    assert main(["train", *TINY, "--output", str(tmp_path), "--name", "r"]) == 0
    capsys.readouterr()
    assert main(["inspect", str(tmp_path / "r"), "--top", "6"]) == 0
    out = capsys.readouterr().out
    rows = list(csv.DictReader(open(tmp_path / "r" / "inspect" / "hardest.csv")))
    final = pq.read_table(tmp_path / "r" / "sample_weights.parquet").column("final").to_numpy()
    assert [int(r["index"]) for r in rows] == np.argsort(-final, kind="stable")[:6].tolist()
    assert float(rows[0]["weight_x_n"]) == pytest.approx(final.max() * final.size, rel=1e-5)
    with Image.open(tmp_path / "r" / "inspect" / "hardest.png") as im:
        assert im.format == "PNG"
    assert "hardest.png" in out and len(out.splitlines()) == 9


def test_a_run_saved_before_an_option_existed_counts_as_trained_with_its_old_behaviour(tmp_path):
    import yaml

    from boostray.apps.compare import check_finished_run_matches
    from boostray.config import TrainConfig

    config = TrainConfig(name="cbnn-seed0", output=str(tmp_path), method="cbnn", lambda_source="val", calibrate=True)
    run_dir = tmp_path / "cbnn-seed0"
    run_dir.mkdir()
    newer = ("name", "lambda_source", "ess_min", "mix_uniform", "schedule", "placement", "first_member", "reweight",
             "combine", "restart_lr", "calibrate")
    saved = {**{k: v for k, v in config.to_dict().items() if k not in newer}, "eta": 0.3}
    (run_dir / "config.yaml").write_text(yaml.safe_dump(saved))
    (run_dir / "metrics.json").write_text("{}")
    with pytest.raises(ConfigError, match="lambda_source: 'train' -> 'val'"):  # the default changed since
        check_finished_run_matches(config)
    with pytest.raises(ConfigError, match="calibrate: False -> True"):  # no temperature before it existed
        check_finished_run_matches(TrainConfig(name="cbnn-seed0", output=str(tmp_path), method="cbnn",
                                               lambda_source="train", calibrate=True))
    # cbnn before the method axes: today's cbnn-paper axes, λ from the training error, no temperature
    old_cbnn = dict(schedule="decay", placement="spread", reweight="samme", combine="lambda", lambda_source="train",
                    calibrate=False, eta=0.3)
    check_finished_run_matches(TrainConfig(name="cbnn-seed0", output=str(tmp_path), method="cbnn", **old_cbnn))


def test_budget_sweep_runs_every_method_at_every_budget_and_plots_error_against_budget(tmp_path):
    assert main(["compare", "--workers", "0", "--epochs", "2,4", "--members", "2", "--methods", "single,cbnn",
                 "--seeds", "1", "--report", str(tmp_path)]) == 0
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["budgets"] == [2, 4] and sorted(summary["tables"]) == ["2", "4"]
    assert sorted((r["method"], r["epochs"]) for r in summary["runs"]) == [("cbnn", 2), ("cbnn", 4), ("single", 2), ("single", 4)]
    for run in summary["runs"]:
        config = json.loads(json.dumps(__import__("yaml").safe_load(open(os.path.join(run["run_dir"], "config.yaml")))))
        assert config["epochs"] == run["epochs"]
    rows = list(csv.DictReader(open(tmp_path / "results.csv")))
    assert sorted((r["epochs"], r["method"]) for r in rows) == [("2", "cbnn"), ("2", "single"), ("4", "cbnn"), ("4", "single")]
    md = (tmp_path / "results.md").read_text()
    assert "Error against budget" in md and "val error, 2 ep." in md and "test error, 4 ep." in md
    with Image.open(tmp_path / "error_vs_budget.png") as im:
        assert im.format == "PNG" and im.size[0] > 600
    assert (tmp_path / "report.html").read_text().count("data:image/png;base64,") == 5


def test_a_bad_budget_list_is_one_line_and_exit_2(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["compare", "--workers", "0", "--epochs", "4,x", "--report", str(tmp_path / "r")])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--epochs" in err[0]
    assert not (tmp_path / "r").exists()


def test_report_page_renders_in_a_real_headless_browser(report, tmp_path):
    """report.html in Debian's Chromium (installed by .ci/run): every image decodes, every table is
    there, and the console shows no error."""
    if not (os.path.exists("/usr/bin/chromium") and os.path.exists("/usr/bin/chromedriver")):
        pytest.skip("needs Debian's chromium and chromium-driver (apt-get install chromium chromium-driver)")
    os.environ.setdefault("SE_OFFLINE", "true")  # Selenium must not look for drivers online
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = "/usr/bin/chromium"
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 f"--user-data-dir={tmp_path / 'profile'}"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)
    try:
        driver.get((report / "report.html").as_uri())
        images = driver.execute_script(
            "return Array.from(document.images).map(i => [i.alt, i.complete, i.naturalWidth, i.naturalHeight])")
        tables = driver.execute_script(
            "return Array.from(document.querySelectorAll('table')).map(t => t.rows.length)")
        errors = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
    finally:
        driver.quit()
    pngs = sorted(p for p in os.listdir(report) if p.endswith(".png"))
    assert sorted(alt for alt, *_ in images) == pngs
    assert all(complete and width > 300 and height > 200 for _, complete, width, height in images), images
    md = (report / "results.md").read_text()
    assert len(tables) == md.count("\n\n| ") and all(rows >= 2 for rows in tables)  # every table, with rows
    assert errors == []

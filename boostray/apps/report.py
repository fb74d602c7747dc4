"""The report of a same-budget comparison: results.md/.csv (mean +- std over seeds), PNG plots and
report.html, which embeds both so that a person opens one file. Reads only the finished runs' metrics
and sample weights."""

from __future__ import annotations

import base64
import csv
import html
import json
import math
import os
from dataclasses import dataclass

import numpy as np

from boostray.config import TrainConfig


@dataclass(frozen=True)
class MethodSpec:
    label: str  # as given, e.g. "cbnn:eta=0.1"
    method: str
    overrides: dict


@dataclass(frozen=True)
class RunResult:
    spec: MethodSpec
    epochs: int
    seed: int
    run_dir: str
    metrics: dict


FIGURES = ("val_crossfit_accuracy", "val_crossfit_nll", "val_crossfit_ece", "error", "nll", "ece", "balanced_accuracy",
           "disagreement", "train_seconds", "val_accuracy", "val_balanced_accuracy", "members", "cost",
           "val_disagreement", "diversity_ratio", "late_gain")
# the baselines every method is set against: one network on the cosine schedule and on the papers' step schedule
BASELINES = (("single", "vs single"), ("single:schedule=step", "vs single (step)"))
# (key, header, scale, format) of the Markdown/HTML table; the CSV has every figure
COLUMNS = (
    ("val_crossfit_accuracy", "val acc. (cross-fit)", 100, "{:.2f} ± {:.2f} %"),
    ("val_crossfit_nll", "val NLL", 1, "{:.4f} ± {:.4f}"),
    ("val_crossfit_ece", "val ECE", 1, "{:.4f} ± {:.4f}"),
    ("error", "test error", 100, "{:.2f} ± {:.2f} %"),
    ("nll", "NLL", 1, "{:.4f} ± {:.4f}"),
    ("ece", "ECE", 1, "{:.4f} ± {:.4f}"),
    ("balanced_accuracy", "balanced acc.", 100, "{:.2f} ± {:.2f} %"),
    ("disagreement", "disagreement", 100, "{:.2f} ± {:.2f} %"),
    ("members", "members", 1, "{:.1f} ± {:.1f}"),
    ("diversity_ratio", "diversity ratio", 1, "{:.2f} ± {:.2f}"),
    ("late_gain", "late gain", 100, "{:+.2f} ± {:.2f}"),
    ("train_seconds", "train s", 1, "{:.1f} ± {:.1f}"),
    ("val_balanced_accuracy", "val bal. acc.", 100, "{:.2f} ± {:.2f} %"),
)


def _row(metrics: dict) -> dict:
    test, val = metrics["test"], metrics["val"]
    diag = metrics.get("diagnostics", {})  # runs written before the diagnostics: NaN
    crossfit = metrics.get("val_crossfit") or {"accuracy": val["accuracy"], "nll": val["nll"], "ece": val["ece"]}
    return {
        "val_crossfit_accuracy": crossfit["accuracy"], "val_crossfit_nll": crossfit["nll"], "val_crossfit_ece": crossfit["ece"],
        "error": 1 - test["accuracy"], "nll": test["nll"], "ece": test["ece"],
        "balanced_accuracy": test["balanced_accuracy"], "disagreement": test["disagreement"],
        "train_seconds": metrics["train_seconds"], "val_accuracy": val["accuracy"],
        "val_balanced_accuracy": val["balanced_accuracy"], "members": len(test["member_accuracy"]),
        "cost": metrics.get("cost", 1.0),  # runs written before the record: one network's budget
        "val_disagreement": diag.get("disagreement", math.nan), "diversity_ratio": diag.get("diversity_ratio", math.nan),
        "late_gain": diag.get("late_gain", math.nan),
    }


def _mean_std(values: list[float]) -> tuple[float, float]:
    a = np.asarray(values, dtype=np.float64)
    if np.isnan(a).all():
        return float("nan"), float("nan")
    return float(np.nanmean(a)), float(np.nanstd(a, ddof=1)) if np.count_nonzero(~np.isnan(a)) > 1 else 0.0


def shown(label: str, cost: float) -> str:
    """A method's label as tables and plots show it: marked with its cost when that is not one network's."""
    return label if abs(cost - 1.0) < 1e-9 else f"{label} ({cost:g}x cost)"


def baseline_gaps(table: list[dict]) -> None:
    """Add to each row its test accuracy minus each baseline's (BASELINES), in points; None where the
    baseline was not run."""
    errors = {row["method"]: row["error"] for row in table}
    for row in table:
        for label, _ in BASELINES:
            row[f"gap_{label}"] = (errors[label] - row["error"]) * 100 if label in errors else None


def summary_table(specs: list[MethodSpec], results: list[RunResult]) -> list[dict]:
    table = []
    for spec in specs:
        rows = [_row(r.metrics) for r in results if r.spec == spec]
        if not rows:
            continue
        entry = {"method": spec.label, "seeds": len(rows)}
        for key in FIGURES:
            entry[key], entry[f"{key}_std"] = _mean_std([r[key] for r in rows])
        table.append(entry)
    baseline_gaps(table)
    return table


def combination_table(specs: list[MethodSpec], results: list[RunResult]) -> list[dict]:
    """Every combination rule over the same runs' members (mean over seeds): what the rule alone changes."""
    rows = []
    for spec in specs:
        runs = [r for r in results if r.spec == spec and r.metrics.get("combinations")]
        if not runs:
            continue
        for rule in runs[0].metrics["combinations"]:
            figures = [r.metrics["combinations"][rule] for r in runs]
            val, val_std = _mean_std([f["val_crossfit"]["accuracy"] for f in figures])
            test, test_std = _mean_std([f["test"]["accuracy"] for f in figures])
            rows.append({"method": spec.label, "cost": _cost(spec, runs), "rule": rule,
                         "val_crossfit_accuracy": val, "val_std": val_std,
                         "test_accuracy": test, "test_std": test_std,
                         "val_nll": float(np.mean([f["val_crossfit"]["nll"] for f in figures]))})
    return rows


def _markdown_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])


def _html_table(header: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _main_rows(table: list[dict]) -> tuple[list[str], list[list[str]]]:
    header = ["method", *[h for _, h, _, _ in COLUMNS[:4]], *[h for _, h in BASELINES], *[h for _, h, _, _ in COLUMNS[4:]]]

    def gap(value: float | None) -> str:
        return "–" if value is None else f"{value:+.2f}"

    def cell(row: dict, key: str, scale: float, fmt: str) -> str:
        value = row[key]
        return "–" if value != value else fmt.format(value * scale, row[f"{key}_std"] * scale)  # NaN: not defined

    rows = [[shown(row["method"], row["cost"]), *[cell(row, k, scale, fmt) for k, _, scale, fmt in COLUMNS[:4]],
             *[gap(row[f"gap_{label}"]) for label, _ in BASELINES],
             *[cell(row, k, scale, fmt) for k, _, scale, fmt in COLUMNS[4:]]]
            for row in table]
    return header, rows


def _per_class_rows(specs: list[MethodSpec], results: list[RunResult]) -> tuple[list[str], list[list[str]]]:
    per_class = {shown(spec.label, _cost(spec, results)):
                 np.nanmean([r.metrics["test"]["per_class_accuracy"] for r in results if r.spec == spec], axis=0)
                 for spec in specs if any(r.spec == spec for r in results)}
    k = len(next(iter(per_class.values())))
    return (["method", *[str(c) for c in range(k)]],
            [[label, *[f"{v * 100:.1f}" for v in acc]] for label, acc in per_class.items()])


def _combination_rows(rows: list[dict]) -> tuple[list[str], list[list[str]]]:
    return (["method", "combination", "val acc. (cross-fit)", "val NLL", "test acc."],
            [[shown(r["method"], r["cost"]), r["rule"], f"{r['val_crossfit_accuracy'] * 100:.2f} ± {r['val_std'] * 100:.2f} %",
              f"{r['val_nll']:.4f}", f"{r['test_accuracy'] * 100:.2f} ± {r['test_std'] * 100:.2f} %"] for r in rows])


def _cost(spec: MethodSpec, results: list[RunResult]) -> float:
    return max((r.metrics.get("cost", 1.0) for r in results if r.spec == spec), default=1.0)


def budget_table(specs: list[MethodSpec], results: list[RunResult], budgets: list[int]) -> list[dict]:
    """Per method and budget: validation (cross-fitted) and test error, mean and std over seeds."""
    out = []
    for spec in specs:
        entry: dict = {"method": spec.label, "cost": _cost(spec, results)}
        for e in budgets:
            rows = [_row(r.metrics) for r in results if r.spec == spec and r.epochs == e]
            if rows:
                entry[f"val_error_{e}"], entry[f"val_error_{e}_std"] = _mean_std([1 - r["val_crossfit_accuracy"] for r in rows])
                entry[f"test_error_{e}"], entry[f"test_error_{e}_std"] = _mean_std([r["error"] for r in rows])
        out.append(entry)
    return out


def _budget_rows(table: list[dict], budgets: list[int]) -> tuple[list[str], list[list[str]]]:
    header = ["method", *[f"{what} error, {e} ep." for e in budgets for what in ("val", "test")]]
    rows = []
    for entry in table:
        cells = [shown(entry["method"], entry["cost"])]
        for e in budgets:
            for what in ("val", "test"):
                key = f"{what}_error_{e}"
                cells.append(f"{entry[key] * 100:.2f} ± {entry[key + '_std'] * 100:.2f} %" if key in entry else "–")
        rows.append(cells)
    return header, rows


def _png(path: str) -> str:
    with open(path, "rb") as f:
        return base64.b64encode(f.read()).decode()


def _reweights(result: RunResult) -> bool:
    axes = result.metrics.get("method_axes")
    return axes["reweight"] == "samme" if axes else result.spec.method == "cbnn"


def _short(label: str, width: int = 32) -> str:
    """A method's label as a legend or title can hold it (a label with overrides can be long)."""
    return label if len(label) <= width else label[: width - 1] + "…"


class _Figures:
    """The report's PNG files, each saved with its caption."""

    def __init__(self, out_dir: str) -> None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        self.plt, self.out_dir, self.saved = plt, out_dir, []

    def save(self, fig, name: str, caption: str) -> None:
        fig.tight_layout()
        fig.savefig(os.path.join(self.out_dir, name), dpi=110)
        self.plt.close(fig)
        self.saved.append((name, caption))


def _budget_figure(figs: _Figures, specs: list[MethodSpec], results: list[RunResult], budgets: list[int]) -> None:
    table = budget_table(specs, results, budgets)
    fig, axes = figs.plt.subplots(1, 2, figsize=(10, 4), sharey=True)
    for ax, what, title in ((axes[0], "val", "validation (cross-fitted)"), (axes[1], "test", "test")):
        for entry in table:
            xs = [e for e in budgets if f"{what}_error_{e}" in entry]
            ys = [entry[f"{what}_error_{e}"] * 100 for e in xs]
            err = [entry[f"{what}_error_{e}_std"] * 100 for e in xs]
            ax.errorbar(xs, ys, yerr=err, marker="o", capsize=3, label=_short(shown(entry["method"], entry["cost"]), 44))
        ax.set(xscale="log", xlabel="budget (epochs)", ylabel="error (%)", title=f"{title} error vs budget")
        ax.set_xticks(budgets, [str(b) for b in budgets])
        ax.minorticks_off()  # the log axis' own minor labels (2x10^1, ...) would overlap the budgets
    axes[1].legend(fontsize=7)
    figs.save(fig, "error_vs_budget.png", "Validation (cross-fitted) and test error against the budget, mean ± std over seeds")


def _staged_figure(figs: _Figures, specs: list[MethodSpec], at_top: list[RunResult], top: int) -> None:
    fig, ax = figs.plt.subplots(figsize=(6, 4))
    for spec in specs:
        staged = [r.metrics["test"]["staged_accuracy"] for r in at_top if r.spec == spec]
        if staged:
            length = min(len(x) for x in staged)
            mean = np.mean([x[:length] for x in staged], axis=0)
            ax.plot(range(1, length + 1), mean, marker="o", label=_short(shown(spec.label, _cost(spec, at_top)), 44))
    ax.set(xlabel="members", ylabel="test accuracy", title=f"Ensemble accuracy vs number of members ({top} epochs)")
    ax.legend(fontsize=8)
    figs.save(fig, "staged_accuracy.png", f"Ensemble test accuracy using the first k members, {top} epochs (mean over seeds)")


def _schedule_figure(figs: _Figures, base: TrainConfig, specs: list[MethodSpec], at_top: list[RunResult], top: int) -> None:
    fig, ax = figs.plt.subplots(figsize=(6, 4))
    for spec in specs:
        method = base.replace(**spec.overrides, method=spec.method, epochs=top).resolved().build_method()
        t = np.linspace(0, method.total_epochs, 400, endpoint=False)
        ax.plot(t, [base.lr * method.lr_factor(x) for x in t], label=_short(shown(spec.label, _cost(spec, at_top)), 44))
    ax.set(xlabel="epoch", ylabel="learning rate", title=f"LR schedule of each method ({top} epochs)")
    ax.legend(fontsize=8)
    figs.save(fig, "lr_schedules.png", "The learning-rate schedule of each method over the same budget")


def _boosting_figures(figs: _Figures, run: RunResult) -> None:
    """lambda_m and the effective sample size per round, and the weights' histograms, of one boosted run."""
    import pyarrow.parquet as pq

    fig, ax1 = figs.plt.subplots(figsize=(6, 4))
    members = run.metrics["members"]
    ax1.plot([m["round"] for m in members], [m["lambda"] for m in members], "o-", color="tab:blue")
    ax1.set(xlabel="round", ylabel="lambda_m", title=f"{_short(run.spec.label)} (seed {run.seed}): lambda and ESS")
    ax2 = ax1.twinx()
    ess = run.metrics["ess"]
    ax2.plot(range(1, len(ess) + 1), ess, "s--", color="tab:red")
    ax2.set_ylabel("effective sample size / n", color="tab:red")
    figs.save(fig, "cbnn_lambda_ess.png", f"{run.spec.label}: lambda_m and the effective sample size of the weights after each round")

    table = pq.read_table(os.path.join(run.run_dir, "sample_weights.parquet")).to_pydict()
    n = len(table["index"])
    fig, ax = figs.plt.subplots(figsize=(6, 4))
    for c in [c for c in table if c.startswith("round_")] + ["final"]:
        ax.hist(np.asarray(table[c]) * n, bins=50, histtype="step", log=True, label=c)
    ax.set(xlabel="n * w_i (1 = uniform)", ylabel="samples", title=f"{_short(run.spec.label)}: sample weights per round")
    ax.legend(fontsize=8)
    figs.save(fig, "cbnn_weight_histogram.png", f"{run.spec.label}: histogram of the sample weights used in each round")


def make_plots(out_dir: str, base: TrainConfig, specs: list[MethodSpec], results: list[RunResult],
               budgets: list[int]) -> list[tuple[str, str]]:
    """The report's figures, as (file name, caption); those of one budget show the largest."""
    figs = _Figures(out_dir)
    top = max(budgets)
    at_top = [r for r in results if r.epochs == top]
    if len(budgets) > 1:
        _budget_figure(figs, specs, results, budgets)
    _staged_figure(figs, specs, at_top, top)
    _schedule_figure(figs, base, specs, at_top, top)
    boosted = [r for r in at_top if _reweights(r)]
    if boosted:
        _boosting_figures(figs, boosted[0])
    return figs.saved


def _setup(base: TrainConfig, results: list[RunResult], budgets: list[int]) -> str:
    return (f"{base.dataset}" + (f" (imbalance ratio {base.imbalance_ratio:g})" if base.imbalance_ratio else "")
            + (f", training subset {base.train_subset}" if base.train_subset else "")
            + f", {base.model}, {', '.join(map(str, budgets))} epochs, {base.members} members, "
            f"{len({r.seed for r in results})} seeds, {base.workers} worker(s) per run")


def write_report(out_dir: str, base: TrainConfig, specs: list[MethodSpec], results: list[RunResult],
                 wall_seconds: float) -> dict:
    budgets = sorted({r.epochs for r in results})
    tables = {e: summary_table(specs, [r for r in results if r.epochs == e]) for e in budgets}
    with open(os.path.join(out_dir, "results.csv"), "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["epochs", "method", "seeds", *[c for k in FIGURES for c in (k, f"{k}_std")],
                                               *[f"gap_{label}" for label, _ in BASELINES]])
        writer.writeheader()
        writer.writerows({"epochs": e, **row} for e in budgets for row in tables[e])
    setup = _setup(base, results, budgets)
    note = ("Validation columns are cross-fitted: a combination that fits on validation data (greedy selection, "
            "lambda from validation error, the temperature) is fitted on one half and scored on the other, both ways. "
            "Mean ± std over seeds. 'vs single' columns: test accuracy minus that of one network on the cosine or "
            "the step schedule, in points. A method marked 'Nx cost' trains N times the budget. Diversity ratio: "
            "the members' disagreement on validation over their mean error; late gain: the final network's "
            "validation accuracy gain over the last quarter of its schedule (points; rising means compute-limited).")
    sections = []  # (title, header, rows)
    if len(budgets) > 1:
        sections.append(("Error against budget", *_budget_rows(budget_table(specs, results, budgets), budgets)))
    for e in budgets:
        at = [r for r in results if r.epochs == e]
        suffix = f", {e} epochs" if len(budgets) > 1 else ""
        sections.append((f"Methods{suffix}", *_main_rows(tables[e])))
        combos = combination_table(specs, at)
        if combos:
            sections.append((f"Combination rules over the same members{suffix}", *_combination_rows(combos)))
        sections.append((f"Per-class test accuracy (%), mean over seeds{suffix}", *_per_class_rows(specs, at)))
    markdown = f"Setup: {setup}. {note}\n\n" + "\n\n".join(f"{title}:\n\n{_markdown_table(h, rows)}" for title, h, rows in sections) + "\n"
    with open(os.path.join(out_dir, "results.md"), "w") as f:
        f.write(markdown)
    plots = make_plots(out_dir, base, specs, results, budgets)
    body = "".join(f"<h2>{html.escape(title)}</h2>{_html_table(h, rows)}" for title, h, rows in sections)
    images = "".join(f'<h2>{html.escape(caption)}</h2><img alt="{name}" src="data:image/png;base64,{_png(os.path.join(out_dir, name))}">'
                     for name, caption in plots)
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>boostray comparison</title>
<style>body{{font-family:sans-serif;max-width:1100px;margin:2em auto}}table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:4px 8px;text-align:right}}td:first-child{{text-align:left}}img{{max-width:100%}}</style></head><body>
<h1>Same-budget comparison</h1><p>{html.escape(setup)}. {html.escape(note)} This invocation took {wall_seconds:.0f} s (runs finished earlier are reused, not retrained).</p>
{body}{images}
</body></html>"""
    with open(os.path.join(out_dir, "report.html"), "w") as f:
        f.write(page)
    summary = {"setup": setup, "budgets": budgets, "tables": {str(e): tables[e] for e in budgets},
               "table": tables[budgets[-1]], "wall_seconds": wall_seconds, "plots": [p for p, _ in plots],
               "runs": [{"method": r.spec.label, "epochs": r.epochs, "seed": r.seed, "run_dir": r.run_dir} for r in results]}
    with open(os.path.join(out_dir, "summary.json"), "w") as f:
        json.dump(summary, f, indent=2)
    return summary

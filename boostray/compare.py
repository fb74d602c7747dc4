"""Same-budget comparison: several methods x seeds on one data set, model and budget, and a report.

Runs are concurrent Ray Train runs on one Ray instance (as many at once as the cluster's CPUs or GPUs
hold); each writes an ordinary run directory. The report folder gets a table (Markdown + CSV, mean
+- std over seeds), PNG plots and ``report.html``, which embeds both so a person opens one file.
A method may carry option overrides: ``cbnn:eta=0.1+error_source=running``.
"""

from __future__ import annotations

import base64
import csv
import html
import json
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace

import numpy as np

from boostray.config import FIELD_TYPES, LEGACY_VALUES, TrainConfig, _coerce
from boostray.errors import ConfigError


@dataclass(frozen=True)
class MethodSpec:
    label: str  # as given, e.g. "cbnn:eta=0.1"
    method: str
    overrides: dict


def parse_methods(text: str) -> list[MethodSpec]:
    specs = []
    for item in [t.strip() for t in text.split(",") if t.strip()]:
        name, _, rest = item.partition(":")
        overrides = {}
        for pair in [p for p in rest.split("+") if p]:
            key, eq, value = pair.partition("=")
            key = key.strip().replace("-", "_")
            if not eq or key not in FIELD_TYPES or key in ("method", "seed", "name", "output", "address"):
                raise ConfigError(f"--methods: bad override {pair!r} in {item!r} (use method:key=value+key=value)")
            import yaml

            overrides[key] = _coerce(key, yaml.safe_load(value))
        specs.append(MethodSpec(item, name, overrides))
    if not specs:
        raise ConfigError("--methods is empty")
    if len({s.label for s in specs}) != len(specs):
        raise ConfigError("--methods lists a method twice")
    return specs


def run_configs(base: TrainConfig, specs: list[MethodSpec], seeds: int, out_dir: str) -> list[tuple[MethodSpec, int, TrainConfig]]:
    """Every (method, seed) run's config, validated; a finished run trained with other options is an error."""
    runs = []
    for spec in specs:
        for seed in range(seeds):
            safe = spec.label.replace(":", "-").replace("=", "").replace("+", "-")
            config = replace(base, **spec.overrides, method=spec.method, seed=base.seed + seed,
                             name=f"{safe}-seed{base.seed + seed}", output=os.path.join(out_dir, "runs"))
            config.validate()
            check_finished_run_matches(config)
            runs.append((spec, seed, config))
    return runs


def check_finished_run_matches(config: TrainConfig) -> None:
    """A finished run is reused only if it was trained with the same options: the defaults may have
    changed since, and a stale run must not pass for the current one."""
    import yaml

    run_dir = os.path.join(config.output, config.name)
    saved_path = os.path.join(run_dir, "config.yaml")
    if not os.path.isfile(os.path.join(run_dir, "metrics.json")) or not os.path.isfile(saved_path):
        return
    with open(saved_path) as f:
        saved = yaml.safe_load(f) or {}
    wanted = {k: v for k, v in config.to_dict().items() if k != "name"}
    saved = {**LEGACY_VALUES, **saved}
    changed = sorted(k for k in wanted if k not in ("output", "address") and saved.get(k, wanted[k]) != wanted[k])
    if changed:
        detail = ", ".join(f"{k}: {saved.get(k)!r} -> {wanted[k]!r}" for k in changed)
        raise ConfigError(f"finished run {run_dir} was trained with other options ({detail}); use another --report folder")


def concurrency(base: TrainConfig) -> int:
    import ray

    resources = ray.cluster_resources()
    if base.gpu:
        return max(1, int(resources.get("GPU", 0) // max(base.workers, 1)))
    per_run = max(base.workers, 1) * base.cpus_per_worker
    return max(1, int(resources.get("CPU", 1) // per_run))


def run_comparison(base: TrainConfig, specs: list[MethodSpec], seeds: int, out_dir: str) -> dict:
    """Train every (method, seed) run (skipping ones already finished) and write the report."""
    from boostray.trainer import train

    runs = run_configs(base, specs, seeds, out_dir)
    os.makedirs(os.path.join(out_dir, "runs"), exist_ok=True)
    started = time.perf_counter()
    width = concurrency(base) if base.workers else 1

    def one(item):
        spec, seed, config = item
        run_dir = os.path.join(config.output, config.name)
        if os.path.isfile(os.path.join(run_dir, "metrics.json")):  # finished earlier: a rerun resumes
            with open(os.path.join(run_dir, "metrics.json")) as f:
                return spec, seed, run_dir, json.load(f)
        print(f"[compare] start {config.name}", flush=True)
        run_dir, metrics = train(config)
        print(f"[compare] done  {config.name}: test accuracy {metrics['test']['accuracy']:.4f}", flush=True)
        return spec, seed, run_dir, metrics

    with ThreadPoolExecutor(max_workers=width) as pool:
        results = list(pool.map(one, runs))
    return write_report(out_dir, base, specs, results, time.perf_counter() - started)


# --------------------------------------------------------------------------------------------- report

FIGURES = ("error", "nll", "ece", "balanced_accuracy", "disagreement", "train_seconds")


def _row(metrics: dict) -> dict:
    test = metrics["test"]
    return {
        "error": 1 - test["accuracy"], "nll": test["nll"], "ece": test["ece"],
        "balanced_accuracy": test["balanced_accuracy"], "disagreement": test["disagreement"],
        "train_seconds": metrics["train_seconds"], "val_accuracy": metrics["val"]["accuracy"],
        "val_balanced_accuracy": metrics["val"]["balanced_accuracy"],
    }


def summary_table(specs: list[MethodSpec], results: list) -> list[dict]:
    table = []
    for spec in specs:
        rows = [_row(m) for s, _, _, m in results if s == spec]
        entry = {"method": spec.label, "seeds": len(rows)}
        for key in (*FIGURES, "val_accuracy", "val_balanced_accuracy"):
            values = np.array([r[key] for r in rows])
            entry[key] = float(values.mean())
            entry[f"{key}_std"] = float(values.std(ddof=1)) if len(values) > 1 else 0.0
        table.append(entry)
    return table


def _png(path: str) -> str:
    with open(path, "rb") as f:
        return base64.b64encode(f.read()).decode()


def make_plots(out_dir: str, base: TrainConfig, specs: list[MethodSpec], results: list) -> list[tuple[str, str]]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import pyarrow.parquet as pq

    from boostray.methods import create_method

    plots = []
    fig, ax = plt.subplots(figsize=(6, 4))
    for spec in specs:
        staged = [m["test"]["staged_accuracy"] for s, _, _, m in results if s == spec]
        length = min(len(x) for x in staged)
        mean = np.mean([x[:length] for x in staged], axis=0)
        ax.plot(range(1, length + 1), mean, marker="o", label=spec.label)
    ax.set(xlabel="members", ylabel="test accuracy", title="Ensemble accuracy vs number of members")
    ax.legend(fontsize=8)
    plots.append(("staged_accuracy.png", "Ensemble test accuracy using the first k members (mean over seeds)"))
    fig.tight_layout(), fig.savefig(os.path.join(out_dir, plots[-1][0]), dpi=110), plt.close(fig)

    fig, ax = plt.subplots(figsize=(6, 4))
    for spec in specs:
        config = replace(base, **spec.overrides, method=spec.method)
        method = create_method(spec.method, epochs=config.epochs, checkpoints=config.checkpoints)
        t = np.linspace(0, config.epochs, 400, endpoint=False)
        ax.plot(t, [config.lr * method.lr_factor(x) for x in t], label=spec.label)
    ax.set(xlabel="epoch", ylabel="learning rate", title="LR schedule of each method")
    ax.legend(fontsize=8)
    plots.append(("lr_schedules.png", "The learning-rate schedule of each method over the same budget"))
    fig.tight_layout(), fig.savefig(os.path.join(out_dir, plots[-1][0]), dpi=110), plt.close(fig)

    boosted = [(s, seed, d, m) for s, seed, d, m in results if s.method == "cbnn"]
    if boosted:
        spec, seed, run_dir, metrics = boosted[0]
        fig, ax1 = plt.subplots(figsize=(6, 4))
        rounds = range(1, len(metrics["members"]) + 1)
        ax1.plot(rounds, [m["alpha"] for m in metrics["members"]], "o-", color="tab:blue")
        ax1.set(xlabel="round", ylabel="lambda_m", title=f"{spec.label} (seed {seed}): checkpoint weight and ESS")
        ax2 = ax1.twinx()
        ax2.plot(rounds, metrics["ess"][: len(rounds)], "s--", color="tab:red")
        ax2.set_ylabel("effective sample size / n", color="tab:red")
        plots.append(("cbnn_lambda_ess.png", "CBNN: lambda_m and the effective sample size of the weights after each round"))
        fig.tight_layout(), fig.savefig(os.path.join(out_dir, plots[-1][0]), dpi=110), plt.close(fig)

        table = pq.read_table(os.path.join(run_dir, "sample_weights.parquet")).to_pydict()
        n = len(table["index"])
        fig, ax = plt.subplots(figsize=(6, 4))
        columns = [c for c in table if c.startswith("round_")] + ["final"]
        for c in columns:
            ax.hist(np.asarray(table[c]) * n, bins=50, histtype="step", log=True, label=c)
        ax.set(xlabel="n * w_i (1 = uniform)", ylabel="samples", title=f"{spec.label}: sample weights per round")
        ax.legend(fontsize=8)
        plots.append(("cbnn_weight_histogram.png", "CBNN: histogram of the sample weights used in each round"))
        fig.tight_layout(), fig.savefig(os.path.join(out_dir, plots[-1][0]), dpi=110), plt.close(fig)
    return plots


def write_report(out_dir: str, base: TrainConfig, specs: list[MethodSpec], results: list, wall_seconds: float) -> dict:
    table = summary_table(specs, results)
    columns = ["method", "seeds", *[c for k in (*FIGURES, "val_accuracy", "val_balanced_accuracy") for c in (k, f"{k}_std")]]
    with open(os.path.join(out_dir, "results.csv"), "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows(table)
    header = "| method | test error | NLL | ECE | balanced acc. | disagreement | train s | val acc. | val bal. acc. |"
    lines = [header, "|" + "---|" * 9]
    for row in table:
        cells = [row["method"]]
        for key, scale, fmt in (("error", 100, "{:.2f} ± {:.2f} %"), ("nll", 1, "{:.4f} ± {:.4f}"), ("ece", 1, "{:.4f} ± {:.4f}"),
                                ("balanced_accuracy", 100, "{:.2f} ± {:.2f} %"), ("disagreement", 100, "{:.2f} ± {:.2f} %"),
                                ("train_seconds", 1, "{:.1f} ± {:.1f}"), ("val_accuracy", 100, "{:.2f} ± {:.2f} %"),
                                ("val_balanced_accuracy", 100, "{:.2f} ± {:.2f} %")):
            cells.append(fmt.format(row[key] * scale, row[f"{key}_std"] * scale))
        lines.append("| " + " | ".join(cells) + " |")
    per_class = {spec.label: np.nanmean([m["test"]["per_class_accuracy"] for s, _, _, m in results if s == spec], axis=0)
                 for spec in specs}
    setup = (f"{base.dataset}" + (f" (imbalance ratio {base.imbalance_ratio:g})" if base.imbalance_ratio else "")
             + (f", training subset {base.train_subset}" if base.train_subset else "")
             + f", {base.model}, {base.epochs} epochs, {base.checkpoints} checkpoints, {len(set(r[1] for r in results))} seeds,"
             f" {base.workers} worker(s) per run")
    k = len(next(iter(per_class.values())))
    pc_lines = ["| method | " + " | ".join(str(c) for c in range(k)) + " |", "|" + "---|" * (k + 1)]
    pc_lines += [f"| {label} | " + " | ".join(f"{v * 100:.1f}" for v in acc) + " |" for label, acc in per_class.items()]
    markdown = (f"Setup: {setup}. Test split except the val columns; mean ± std over seeds.\n\n" + "\n".join(lines)
                + "\n\nPer-class test accuracy (%), mean over seeds:\n\n" + "\n".join(pc_lines) + "\n")
    with open(os.path.join(out_dir, "results.md"), "w") as f:
        f.write(markdown)
    plots = make_plots(out_dir, base, specs, results)
    pc_rows = "".join(f"<tr><td>{html.escape(label)}</td>" + "".join(f"<td>{v * 100:.1f}</td>" for v in acc) + "</tr>"
                      for label, acc in per_class.items())
    table_html = "<table><tr>" + "".join(f"<th>{html.escape(h.strip())}</th>" for h in header.strip("|").split("|")) + "</tr>"
    for line in lines[2:]:  # the per-class table follows as its own HTML table
        table_html += "<tr>" + "".join(f"<td>{html.escape(c.strip())}</td>" for c in line.strip("|").split("|")) + "</tr>"
    table_html += "</table>"
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>boostray comparison</title>
<style>body{{font-family:sans-serif;max-width:1000px;margin:2em auto}}table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:4px 8px;text-align:right}}td:first-child{{text-align:left}}</style></head><body>
<h1>Same-budget comparison</h1><p>{html.escape(setup)}. Test split except the val columns; mean ± std over seeds. This invocation took {wall_seconds:.0f} s (runs finished earlier are reused, not retrained).</p>
{table_html}
<h2>Per-class test accuracy (%)</h2><table><tr><th>method</th>{"".join(f"<th>{c}</th>" for c in range(k))}</tr>{pc_rows}</table>
{"".join(f'<h2>{html.escape(caption)}</h2><img alt="{name}" src="data:image/png;base64,{_png(os.path.join(out_dir, name))}">' for name, caption in plots)}
</body></html>"""
    with open(os.path.join(out_dir, "report.html"), "w") as f:
        f.write(page)
    summary = {"setup": setup, "table": table, "wall_seconds": wall_seconds, "plots": [p for p, _ in plots],
               "runs": [{"method": s.label, "seed": seed, "run_dir": d} for s, seed, d, _ in results]}
    with open(os.path.join(out_dir, "summary.json"), "w") as f:
        json.dump(summary, f, indent=2)
    return summary

"""What users run on top of training: same-budget comparisons and their report, Tune sweeps, Serve
deployment, Ray Data batch prediction, evaluation and inspection of a run directory."""

"""Scaling laws: fit Chinchilla approaches 1-3 to a table of runs, predict, plan IsoFLOP sweeps.

    from scratchlm.scaling.runs import load_runs
    from scratchlm.scaling.fit import fit_runs, write_fit

    runs = load_runs("runs.jsonl")                        # JSONL / CSV / JSON / a sweep directory
    result = fit_runs(runs, approach=3, bootstrap=200)    # L(N, D) = E + A / N^alpha + B / D^beta
    write_fit(result, "fit/", predict_at=[1e21])          # fit.json (values, SEs, 95% CIs) + plots

Modules: `runs` (the table), `envelope` (approach 1), `isoflop` (approach 2), `parametric` and
`lbfgs` (approach 3), `bootstrap`, `laws` (N_opt = k_N C^a), `predict`, `shapes` (model shapes
for a parameter count), `plan` and `study` (IsoFLOP sweeps through `scratchlm.train.sweep`),
`plots`, `cli`. Nothing heavy is imported here.
"""

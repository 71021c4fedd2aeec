"""Scaling plots (matplotlib, Agg backend), each written atomically as a PNG:

- isoflops.png (Approach 2): loss against N per IsoFLOP slice, the fitted parabolas and minima;
- envelope.png (Approach 1): loss against compute for every run (its curve, or final point) and
  the envelope points that the fit uses;
- allocation.png (every approach): N_opt(C) and D_opt(C), the fitted law extrapolated beyond the
  data, the 95% bootstrap band, the points it was fitted to and the predicted budgets;
- contours.png (Approach 3): contours of L(N, D) over log N and log D, the runs, IsoFLOP lines
  C = 6 N D and the efficient frontier (N_opt(C), D_opt(C)).
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np

from scratchlm.io import atomic_write


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> Path:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    _plt().close(fig)
    with atomic_write(path, "wb") as f:
        f.write(buf.getvalue())
    return path


def plot_fit(result, out_dir: Path, predict_at=()) -> list[Path]:
    paths = [plot_allocation(result, out_dir / "allocation.png", predict_at)]
    if result.approach == 1:
        paths.append(plot_envelope(result, out_dir / "envelope.png"))
    if result.approach == 2:
        paths.append(plot_isoflops(result, out_dir / "isoflops.png"))
    if result.approach == 3:
        paths.append(plot_contours(result, out_dir / "contours.png", predict_at))
    return paths


def plot_isoflops(result, path: Path) -> Path:
    plt = _plt()
    runs, slices = result.runs, result.detail.slices
    fig, ax = plt.subplots(figsize=(7.5, 5))
    cmap = plt.get_cmap("viridis")
    logc = np.log10([s.c for s in slices])
    span = max(np.ptp(logc), 1e-9)
    for s, lc in zip(slices, logc):
        color = "0.7" if s.skipped else cmap((lc - logc.min()) / span)
        n, loss = runs.n[s.runs], runs.loss[s.runs]
        ax.scatter(n, loss, s=14, color=color, label=f"C={s.c:.2g}" + (" (not used)" if s.skipped else ""))
        if s.coef is not None and not s.skipped:
            x = np.linspace(np.log(n.min()) - 0.2, np.log(n.max()) + 0.2, 100)
            ax.plot(np.exp(x), np.polyval(s.coef, x), color=color, lw=1)
            ax.plot(s.n_opt, s.loss_opt, "*", color=color, ms=12, mec="k")
    ax.set_xscale("log")
    ax.set_xlabel("parameters N")
    ax.set_ylabel("loss")
    ax.set_title(f"IsoFLOP profiles: N_opt ~ C^{result.law.a:.3f}")
    ax.grid(alpha=0.3)
    if len(slices) <= 12:
        ax.legend(fontsize=7)
    fig.tight_layout()
    return _save(fig, path)


def plot_envelope(result, path: Path) -> Path:
    plt = _plt()
    runs, d = result.runs, result.detail
    fig, ax = plt.subplots(figsize=(7.5, 5))
    pts = d.all_points
    if d.used_curves:
        for i in range(len(runs)):
            m = pts["run"] == i
            ax.plot(pts["C"][m], pts["loss"][m], lw=0.7, alpha=0.6)
    else:
        ax.scatter(pts["C"], pts["loss"], s=10, color="0.5", label="runs")
    ax.plot(d.points["C"], d.points["loss"], "k*", ms=9, label="envelope (min loss per compute bin)")
    ax.set_xscale("log")
    ax.set_xlabel("compute C (FLOPs)")
    ax.set_ylabel("loss")
    ax.set_title(f"Approach 1: N_opt ~ C^{result.law.a:.3f}, D_opt ~ C^{result.law.b:.3f}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return _save(fig, path)


def _fit_points(result) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """(C, N_opt, D_opt) points the law was fitted to (None for Approach 3)."""
    if result.approach == 1:
        p = result.detail.points
        return p["C"], p["N"], p["D"]
    if result.approach == 2:
        used = result.detail.used
        c, n = np.array([s.c for s in used]), np.array([s.n_opt for s in used])
        return c, n, c / (6 * n)
    return None


def plot_allocation(result, path: Path, predict_at=()) -> Path:
    plt = _plt()
    runs, law, s = result.runs, result.law, result.samples
    c_lo = runs.c.min() / 3
    c_hi = max([runs.c.max() * 100, *[c * 3 for c in predict_at]])
    c = np.logspace(np.log10(c_lo), np.log10(c_hi), 200)
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.5))
    pts = _fit_points(result)
    for ax, what, curve, band_fn, col in (
        (axes[0], "N_opt", law.n_opt(c), None if s is None else s.n_opt, 1),
        (axes[1], "D_opt", law.d_opt(c), None if s is None else s.d_opt, 2),
    ):
        inside = c <= runs.c.max()
        ax.plot(c[inside], curve[inside], "C0-", label=f"fit ({what} ~ C^{law.a if col == 1 else law.b:.3f})")
        ax.plot(c[~inside], curve[~inside], "C0--", label="extrapolation")
        if band_fn is not None and len(s) >= 2:
            vals = band_fn(c)  # (B, len(c))
            lo, hi = np.nanpercentile(vals, [2.5, 97.5], axis=0)
            ax.fill_between(c, lo, hi, color="C0", alpha=0.2, label=f"95% bootstrap band ({len(s)} resamples)")
        if pts is not None:
            ax.plot(pts[0], pts[col], "ko", ms=4, label="fitted points")
        for b in predict_at:
            y = law.n_opt(b) if col == 1 else law.d_opt(b)
            ax.plot([b], [y], "r*", ms=11)
            ax.annotate(f"{y:.3g}", (b, y), textcoords="offset points", xytext=(5, -12), fontsize=8, color="r")
        ax.axvspan(runs.c.min(), runs.c.max(), color="0.9", zorder=0)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("compute C (FLOPs)")
        ax.set_ylabel("parameters N_opt" if col == 1 else "tokens D_opt")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(f"Approach {result.approach}: compute-optimal allocation (grey: compute range of the runs)")
    fig.tight_layout()
    return _save(fig, path)


def plot_contours(result, path: Path, predict_at=()) -> Path:
    from scratchlm.scaling.parametric import predict_loss

    plt = _plt()
    runs, law, params = result.runs, result.law, result.params
    c_all = [runs.c.min(), runs.c.max(), *predict_at]
    n_lo = min(runs.n.min(), *[law.n_opt(c) for c in c_all]) / 3
    n_hi = max(runs.n.max(), *[law.n_opt(c) for c in c_all]) * 3
    d_lo = min(runs.d.min(), *[law.d_opt(c) for c in c_all]) / 3
    d_hi = max(runs.d.max(), *[law.d_opt(c) for c in c_all]) * 3
    ln = np.linspace(np.log10(n_lo), np.log10(n_hi), 200)
    ld = np.linspace(np.log10(d_lo), np.log10(d_hi), 200)
    grid_n, grid_d = np.meshgrid(10**ln, 10**ld)
    loss = predict_loss(params, grid_n, grid_d)
    fig, ax = plt.subplots(figsize=(7.5, 6))
    levels = np.quantile(loss, np.linspace(0.02, 0.98, 16))
    cs = ax.contourf(
        np.log10(grid_n), np.log10(grid_d), loss, levels=np.unique(levels), cmap="viridis_r", extend="both"
    )
    fig.colorbar(cs, ax=ax, label="predicted loss L(N, D)")
    ax.scatter(np.log10(runs.n), np.log10(runs.d), c="w", s=8, edgecolors="k", linewidths=0.4, label="runs")
    for cc in np.logspace(np.log10(c_all[0]), np.log10(max(c_all)), 5):
        n_line = 10**ln
        ax.plot(ln, np.log10(cc / (6 * n_line)), "w:", lw=0.8)
    c_front = np.logspace(np.log10(min(c_all) / 3), np.log10(max(c_all) * 3), 100)
    ax.plot(np.log10(law.n_opt(c_front)), np.log10(law.d_opt(c_front)), "r-", lw=2, label="efficient frontier")
    for b in predict_at:
        ax.plot(np.log10(law.n_opt(b)), np.log10(law.d_opt(b)), "r*", ms=12)
    ax.set_xlim(ln[0], ln[-1])
    ax.set_ylim(ld[0], ld[-1])
    ax.set_xlabel("log10 parameters N")
    ax.set_ylabel("log10 tokens D")
    p = params
    ax.set_title(
        f"L = {p['E']:.3g} + {p['A']:.3g}/N^{p['alpha']:.3f} + {p['B']:.3g}/D^{p['beta']:.3f}  (dotted: C = 6ND)",
        fontsize=9,
    )
    ax.legend(fontsize=8, loc="upper right")
    fig.tight_layout()
    return _save(fig, path)

"""Compute-optimal allocation laws and the summaries of bootstrap samples every approach shares.

All three approaches end in the same form (Hoffmann et al. 2022, table 2):

    N_opt(C) = k_N C^a,   D_opt(C) = k_D C^b

Approaches 1 and 2 fit these as straight lines in log-log space; Approach 3 derives them from
L(N, D) (`parametric.allocation`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from scratchlm.errors import ScratchLMError


@dataclass
class Law:
    a: float  # N_opt exponent
    k_n: float  # N_opt = k_n C^a
    b: float  # D_opt exponent
    k_d: float  # D_opt = k_d C^b

    def n_opt(self, c):
        return self.k_n * np.power(c, self.a)

    def d_opt(self, c):
        return self.k_d * np.power(c, self.b)

    def to_json(self) -> dict[str, float]:
        return {"a": float(self.a), "k_N": float(self.k_n), "b": float(self.b), "k_D": float(self.k_d)}


@dataclass
class LawSamples:
    """Bootstrap samples of a law, arrays (B,): for bands and intervals."""

    a: np.ndarray
    k_n: np.ndarray
    b: np.ndarray
    k_d: np.ndarray

    def __len__(self) -> int:
        return len(self.a)

    def n_opt(self, c):  # (B,) for a scalar c, (B, len(c)) for an array
        return self.k_n[:, None] * np.power(np.atleast_1d(c)[None], self.a[:, None])

    def d_opt(self, c):
        return self.k_d[:, None] * np.power(np.atleast_1d(c)[None], self.b[:, None])


def fit_power_law(x: np.ndarray, y: np.ndarray, what: str = "power law") -> tuple[float, float]:
    """Least squares of log y = log k + p log x; returns (k, p). Needs >= 2 distinct x."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if len(x) < 2 or np.ptp(np.log(x)) == 0:
        raise ScratchLMError(f"{what}: needs at least 2 distinct compute levels, got {len(set(x.tolist()))}")
    p, logk = np.polyfit(np.log(x), np.log(y), 1)
    return float(np.exp(logk)), float(p)


def summarize(value: float, samples: np.ndarray | None) -> dict[str, float | list[float] | None]:
    """{"value", "se", "ci95"}: the point estimate, the bootstrap standard deviation and the 2.5 /
    97.5 percentile interval (None without samples)."""
    out: dict[str, float | list[float] | None] = {"value": float(value), "se": None, "ci95": None}
    if samples is not None:
        s = np.asarray(samples, dtype=np.float64)
        s = s[np.isfinite(s)]
        if len(s) >= 2:
            out["se"] = float(np.std(s, ddof=1))
            out["ci95"] = [float(np.percentile(s, 2.5)), float(np.percentile(s, 97.5))]
    return out

"""Published scaling-law fits used as references (tests, benchmarks, comparisons in reports)."""

from __future__ import annotations

# Besiroglu, Erdil, Barnett, You 2024, "Chinchilla Scaling: A replication attempt", table 1: the refit of
# L(N, D) = E + A / N^alpha + B / D^beta on the points extracted from Hoffmann et al.'s figure 4 (5 outliers
# dropped). name -> (estimate, standard error).
BESIROGLU_2024 = {
    "E": (1.817, 0.026),
    "A": (482.0, 124.5),
    "B": (2085.4, 1293.3),
    "alpha": (0.348, 0.015),
    "beta": (0.366, 0.021),
}
# Hoffmann et al. 2022 (Chinchilla), their own Approach 3 fit.
HOFFMANN_2022 = {"E": 1.69, "A": 406.4, "B": 410.7, "alpha": 0.34, "beta": 0.28}

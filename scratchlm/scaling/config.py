"""StudyConfig: an IsoFLOP study (budgets x model sizes), the settings of `scratchlm scaling plan`
and `scratchlm scaling sweep`. Presets live in configs/scaling/*.toml.

    scratchlm scaling sweep --spec owt_cpu_study                      # configs/scaling/owt_cpu_study.toml
    scratchlm scaling sweep --budgets 1e12 3e12 --sizes 4 --preset debug --set data.train=t.bin --out runs/s
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from scratchlm.errors import ScratchLMError
from scratchlm.scaling.shapes import ShapeRule


@dataclass
class StudyConfig:
    budgets: list[float] = field(default_factory=list)  # training FLOPs per IsoFLOP slice (the model's own count)
    sizes: int = 5  # model sizes per budget
    spread: float = 4.0  # sizes are log-uniform in [N0 / spread, N0 * spread] around the centre N0
    center: str = "chinchilla"  # N0: "chinchilla" (D = 20 N at C = 6 N D) or a fit.json path (its N_opt(C))
    train_preset: str = "debug"  # training preset (configs/train/ name or .toml) every run starts from
    train_set: dict[str, Any] = field(default_factory=dict)  # training overrides shared by every run
    out_dir: str = "runs/scaling"  # runs/ (one per point), runs.jsonl, plan.json, sweep.toml, approach*/
    parallel: int = 1  # training processes at once
    min_steps: int = 10  # warn about runs with fewer optimizer steps than this
    bootstrap: int = 200  # bootstrap resamples of the fits
    shape: ShapeRule = field(default_factory=ShapeRule)

    def validate(self) -> None:
        def bad(msg: str) -> None:
            raise ScratchLMError(f"invalid scaling study config: {msg}")

        if any(not 0 < b < math.inf for b in self.budgets):
            bad(f"budgets must be positive FLOP counts, got {self.budgets}")
        if self.sizes < 1:
            bad(f"sizes must be >= 1, got {self.sizes}")
        if self.spread < 1:
            bad(f"spread must be >= 1, got {self.spread}")
        if self.parallel < 1:
            bad(f"parallel must be >= 1, got {self.parallel}")
        if self.bootstrap < 0:
            bad(f"bootstrap must be >= 0, got {self.bootstrap}")
        if self.min_steps < 0:
            bad(f"min_steps must be >= 0, got {self.min_steps}")

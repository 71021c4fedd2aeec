"""The same pipeline file on a local Ray instance gives the same outputs and report as the process pool.

Ray is in the `web` extra, not `dev` (~240 MB installed): without it this test skips.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from test_web_pipeline import STAGES, config, outputs, quiet

from scratchlm.data.runner import run_pipeline

ray = pytest.importorskip("ray", reason="Ray is not installed (pip install 'scratchlm[web]')")
pytest.importorskip("fastwarc")
pytest.importorskip("fasttext")

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def local_ray():
    ray.init(
        num_cpus=2,
        include_dashboard=False,
        log_to_driver=False,
        configure_logging=False,
        runtime_env={"env_vars": {"PYTHONPATH": str(REPO)}},  # workers import this checkout of scratchlm
    )
    yield
    ray.shutdown()


def comparable(report: dict) -> list[dict]:
    return [{k: v for k, v in s.items() if k != "seconds"} for s in report["stages"]]


def test_ray_executor_matches_local(tmp_path, local_ray):
    local = run_pipeline(config(tmp_path, stages=STAGES), progress=False, log=quiet)
    local_docs = outputs(tmp_path / "run")
    cfg = config(tmp_path, stages=STAGES, executor="ray", output={"dir": str(tmp_path / "run_ray")})
    on_ray = run_pipeline(cfg, progress=False, log=quiet)
    assert on_ray["executor"] == "ray" and on_ray["workers"] == 2
    assert comparable(on_ray) == comparable(local)  # global stages (exact + MinHash dedup) included
    assert outputs(tmp_path / "run_ray") == local_docs
    again = run_pipeline(cfg, progress=False, log=quiet)  # resume works the same way on Ray
    assert all(p["processed"] == 0 for p in again["phases"])

"""Parity with lm-evaluation-harness on real weights: SmolLM2-135M-Instruct, a few MMLU questions, the
same weights exported for transformers. Skips without lm-eval (the `eval` extra), the shared MMLU data
or network to pull the model."""

from __future__ import annotations

import pytest
from pretrained_files import pulled_model_dir
from shared_data import SHARED

pytest.importorskip("lm_eval", reason="lm-eval not installed (pip install 'scratchlm[eval]')")


@pytest.mark.slow
def test_mmlu_loglikelihoods_match_lm_eval(request, tmp_path):
    from scratchlm.eval import mmlu
    from scratchlm.eval.lm_eval_parity import run_lm_eval_mmlu
    from scratchlm.eval.loglik import Scorer
    from scratchlm.eval.tasks import evaluate_mc
    from scratchlm.model.hf_export import save_hf_with_tokenizer
    from scratchlm.model.model_dir import load_model

    mmlu_dir = SHARED / "instruct" / "mmlu"
    if not (mmlu_dir / "val").is_dir():
        pytest.skip("../shared/data/instruct/mmlu not found (only on the project's machines)")
    model, chat = load_model(str(pulled_model_dir(request.config, "smollm2-135m-instruct")))
    subjects, limit = ["anatomy", "marketing"], 2
    metrics, records = evaluate_mc(Scorer(model, chat), mmlu.load(mmlu_dir, "val", 5, limit, subjects))
    save_hf_with_tokenizer(model, chat, tmp_path / "hf")
    ref = run_lm_eval_mmlu(tmp_path / "hf", mmlu_dir, subjects, limit, tmp_path / "tasks")
    for s in subjects:
        mine = [r["loglikelihoods"] for r in records if r["group"] == s]
        assert len(mine) == len(ref[s]) == limit
        for a, b in zip(mine, ref[s]):
            assert a == pytest.approx(b, abs=1e-4)
        assert metrics["groups"][s]["acc"] == ref["acc"][s]

"""The `demo` profile: its settings are valid, and stage 44 (Self-Instruct's experiment in miniature) runs end to end
on the tiny model with a run folder holding two filtered machine tasks: both fine-tunes train, three models are scored."""
import json, math, os, subprocess, sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = Path(sys.executable).parent/"selfinstruct-nb"


@pytest.mark.parametrize("profile", ["demo", "demo-ci"])
def test_demo_profiles_are_valid(profile):
    r = subprocess.run([str(SCRIPT), "run", profile, "--dry-run"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    for stage in ("10_bootstrap", "13_filter", "15_analysis", "44_experiment"): assert stage in r.stdout


def _machine_task(i: int, instruction: str, pairs: list) -> dict:
    return {"id": f"machine_{i}", "instruction": instruction, "is_classification": False, "source": "machine",
            "instances": [{"input": a, "output": b} for a, b in pairs]}


def test_stage_44_on_tiny_model(tmp_path):
    import papermill as pm
    run = tmp_path/"run"
    (run/"13_filter").mkdir(parents=True)
    tasks = [_machine_task(0, "Translate the word into French.", [("cat", "chat"), ("dog", "chien")]),
             _machine_task(1, "Write a short greeting.", [("", "Hello, and welcome!")])]
    (run/"13_filter"/"tasks.jsonl").write_text("".join(json.dumps(t) + "\n" for t in tasks))
    pm.execute_notebook(str(ROOT/"nbs/pipeline/44_experiment.ipynb"), str(tmp_path/"44.ipynb"), kernel_name="selfinstruct-nb",
                        cwd=str(ROOT/"nbs/pipeline"), progress_bar=False,
                        parameters={"run_dir": str(run), "figures_dir": str(tmp_path/"figs"), "max_steps": 2,
                                    "eval_items": 3, "loglik_items": 5, "max_tokens": 8, "n_boot": 200})
    out = run/"44_experiment"
    m = json.loads((out/"metrics.json").read_text())
    assert m["machine_tasks"] == 2
    si, seeds = m["training_data"]["self_instruct"], m["training_data"]["seeds"]
    assert si["train"]["tasks"] == si["heldout"]["tasks"] == 1                    # a tenth of 2 tasks: one held out
    assert si["train"]["examples"] + si["heldout"]["examples"] == 3
    assert (seeds["train"]["tasks"], seeds["heldout"]["tasks"]) == (157, 18)
    for name in ("seeds", "self_instruct"):
        f = m["fine_tunes"][name]
        assert [s for s, _ in f["losses"]] == [1, 2]                                  # max_steps caps the epoch
        assert math.isfinite(f["loss_start"]) and math.isfinite(f["loss_end"])
        assert f["heldout_loss_base"] > 0 and f["heldout_loss"] > 0
        assert f["heldout_loss"] != f["heldout_loss_base"]                            # the fine-tune moved
    models = [json.loads(l) for l in (out/"models.jsonl").read_text().splitlines()]
    assert [r["model"] for r in models] == ["base", "+seeds", "+self_instruct"]
    for row in models:
        assert row["rouge_items"] == 3 and row["loglik_items"] == 5
        assert row["loglik_per_token"] < 0 and math.isfinite(row["loglik_per_token"])
        assert 0 <= row["rougeL"] <= 1 and 0 <= row["cut_at_limit"] <= 3
    pairs = [json.loads(l) for l in (out/"pairs.jsonl").read_text().splitlines()]
    assert [(p["a"], p["b"]) for p in pairs[::2]] == [("+seeds", "base"), ("+self_instruct", "base"), ("+self_instruct", "+seeds")]
    assert all(p["lo"] <= p["diff"] <= p["hi"] for p in pairs)
    buckets = [json.loads(l) for l in (out/"buckets.jsonl").read_text().splitlines()]
    assert {b["n"] for b in buckets if b["bucket"] == "all" and b["measure"] == "loglik"} == {5}
    answers = [json.loads(l) for l in (out/"answers.jsonl").read_text().splitlines()]
    assert len(answers) == 3 * 3 and all(a["answer_tokens"] <= a["limit"] <= 8 for a in answers)
    for stem in ("experiment_sft_loss", "experiment_comparison"): assert (tmp_path/"figs"/f"{stem}.png").stat().st_size > 1000

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
                                    "eval_items": 3, "loglik_items": 5, "max_tokens": 8})
    m = json.loads((run/"44_experiment"/"metrics.json").read_text())
    assert m["machine_tasks"] == 2 and m["training_data"]["self_instruct"]["examples"] == 3
    assert m["training_data"]["seeds"]["tasks"] == 175
    for name in ("seeds", "self_instruct"):  # both fine-tunes took exactly max_steps logged steps
        assert [s for s, _ in m["fine_tunes"][name]["losses"]] == [1, 2]
    assert list(m["comparison"]) == ["base", "+seeds", "+self_instruct"]
    for row in m["comparison"].values():
        assert row["items_rouge"] == 3 and row["items_loglik"] == 5
        assert row["gold_loglik_per_token"] < 0 and math.isfinite(row["gold_loglik_per_token"])
        assert 0 <= row["rougeL all"] <= 1
    answers = [json.loads(l) for l in (run/"44_experiment"/"answers.jsonl").read_text().splitlines()]
    assert len(answers) == 3 * 3
    for stem in ("experiment_sft_loss", "experiment_comparison"): assert (tmp_path/"figs"/f"{stem}.png").stat().st_size > 1000

"""Stage 45_superni end to end on the fixture tasks: a server that gives known answers, the scores worked out by hand
(see nbs/45_superni.ipynb) and rouge_score item for item."""
from __future__ import annotations
import json, sys, uuid
from pathlib import Path

import pytest

from selfinstruct_nb import core, superni

sys.path.insert(0, str(Path(__file__).parent))
from fake_openai_server import FakeOpenAIServer  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
FIXTURE = ROOT/"data/fixtures/superni"
ANSWERS = {"task9001-0": "Yes", "task9001-1": "No.", "task9001-2": "yes, it follows",
           "task9002-0": "sleeping cats in a garden", "task9002-1": "rain delayed final",
           "task9003-0": "What is the capital of France?", "task9003-1": "How tall is the tower?\nThe tower is 300 m tall."}
HAND = [1, 1, 1/2, 4/7, 3/4, 1, 1/2]                     # per instance, in fixture order (nbs/45_superni.ipynb)


def known_answers(req: dict) -> str:
    "The answer fixed for the instance whose input ends the prompt; asserts the prompt is Tk-Instruct's."
    prompt = req["prompt"]
    assert prompt.startswith("Definition: ") and "\n\nNow complete the following example -\nInput: " in prompt and prompt.endswith("\nOutput: ")
    assert req["temperature"] == 0 and req["max_tokens"] == 128
    for inst in superni.eval_instances(FIXTURE):
        if superni.ni_prompt(inst["definition"], inst["input"]) == prompt: return ANSWERS[inst["id"]]
    raise AssertionError(f"unknown prompt {prompt[:80]!r}")


def test_stage_45_superni_scores_known_answers(tmp_path):
    pm = pytest.importorskip("papermill")
    run_dir = tmp_path/"run"
    with FakeOpenAIServer(responder=known_answers) as srv:
        pm.execute_notebook(str(ROOT/"nbs/pipeline/45_superni.ipynb"), str(tmp_path/"out.ipynb"), kernel_name="selfinstruct-nb",
                            cwd=str(tmp_path), progress_bar=False,
                            parameters=dict(run_dir=str(run_dir), superni_dir=str(FIXTURE), eval_backend="openai",
                                            eval_model=f"fake-{uuid.uuid4().hex[:8]}", eval_base_url=srv.url, eval_api_key_env=""))
    m = json.loads((run_dir/"45_superni/metrics.json").read_text())
    assert (m["tasks"], m["instances"], m["failed_requests"], m["first_line"]) == (3, 7, 0, False)
    assert m["rougeL"] == pytest.approx(100 * sum(HAND) / 7) == pytest.approx(100 * 149 / 196)
    assert m["rougeL_first_line"] == pytest.approx(100 * (sum(HAND) - 1/2 + 4/5) / 7)   # "How tall is the tower?" alone: 4/5
    assert m["rougeL_by_category"] == pytest.approx({"Textual Entailment": 100 * 5/6, "Title Generation": 100 * 37/56,
                                                     "Question Rewriting": 75.0})
    preds = core.read_jsonl(run_dir/"45_superni/predictions.jsonl")
    assert [p["rougeL"] / 100 for p in preds] == pytest.approx(HAND, abs=1e-12)
    # the metric is rouge_score's (with the stemmer), best over references, item for item
    from rouge_score import rouge_scorer
    sc = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    refs = {f'{i["task"]}/{i["id"]}': i["references"] for i in superni.eval_instances(FIXTURE)}
    assert [p["rougeL"] for p in preds] == [100 * max(sc.score(t, p["prediction"])["rougeL"].fmeasure for t in refs[f'{p["task"]}/{p["id"]}'])
                                            for p in preds]
    assert m["paper_table3"] == {"GPT3 (vanilla)": 6.8, "GPT3 + Self-Instruct (ours)": 39.9, "InstructGPT001": 40.8}


def test_stage_45_superni_refuses_a_folder_without_the_split(tmp_path):
    pm = pytest.importorskip("papermill")
    with pytest.raises(pm.PapermillExecutionError, match="no task list"):
        pm.execute_notebook(str(ROOT/"nbs/pipeline/45_superni.ipynb"), str(tmp_path/"out.ipynb"), kernel_name="selfinstruct-nb",
                            cwd=str(tmp_path), progress_bar=False, parameters=dict(run_dir=str(tmp_path/"run"), superni_dir=str(tmp_path)))

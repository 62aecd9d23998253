"""The `paper-full` profile: its dry run lists the released files it will download, and stage 16_released computes
Table 1 and GPT-4-LLM's pair counts on the fixtures in the released formats (values counted by hand, nbs/18_released.ipynb)."""
from __future__ import annotations
import json, os, subprocess, sys
from pathlib import Path

import pytest

from selfinstruct_nb import data

ROOT = Path(__file__).resolve().parent.parent
LARGE = {"self-instruct/data/gpt3_generations/batch_221203/all_instances_82K.jsonl": "ccceb2677cbafcac4c996be47520b5581dd10295",
         "gpt-4-llm/data/alpaca_gpt4_data.json": "25508714b7879a1e5a6764ba7f979a980f549f1a",
         "stanford_alpaca/alpaca_data.json": "3779ddbc040543ab1834ef216c983d6fcc06cc9a",
         "gpt-4-llm/data/comparison_data_v2.json": "decb04ca4c911d821a67364dfe058c4d383f241e"}


def test_paper_full_dry_run_lists_the_downloads():
    r = subprocess.run([sys.executable, "-c", "import sys; from selfinstruct_nb.cli import main; sys.exit(main())", "run", "paper-full", "--dry-run"], cwd=ROOT,
                       capture_output=True, text=True, timeout=300, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert r.returncode == 0, r.stderr[-2000:]
    lines = [l for l in r.stdout.splitlines() if l.startswith("released file ")]
    assert len(lines) == len(LARGE)
    for rel, blob in LARGE.items():
        assert data.REGISTRY[rel].git_blob == blob
        line = next(l for l in lines if l.startswith(f"released file {rel} "))
        assert line.endswith(f"checked by git blob {blob}")
        assert "local copy" in line or f"will download {data.REGISTRY[rel].url} (size not in the registry)" in line
    assert "released files: 4 named" in r.stdout and not (ROOT/"outputs"/"paper-full-<time>").exists()


def test_stage_16_released_on_the_fixtures(tmp_path):
    pm = pytest.importorskip("papermill")
    run_dir = tmp_path/"run"
    pm.execute_notebook(str(ROOT/"nbs/pipeline/16_released.ipynb"), str(tmp_path/"out.ipynb"), kernel_name="selfinstruct-nb",
                        cwd=str(ROOT), progress_bar=False, parameters=dict(run_dir=str(run_dir)))
    m = json.loads((run_dir/"16_released/metrics.json").read_text())
    s = m["self_instruct"]["stats"]
    assert (s["instructions"], s["instances"], s["instances_empty_input"], s["classification"]) == (4, 5, 2, None)
    assert (s["mean_instruction_words"], s["mean_input_words"], s["mean_output_words"]) == (5.75, 4.0, 5.2)
    assert m["self_instruct"]["paper_table1"]["instructions"] == 52445
    g = m["gpt4_llm"]
    assert g["top_pairs"] == [{"verb noun": "write letter", "GPT-4": 2, "GPT-3.5": 1}, {"verb noun": "read report", "GPT-4": 1, "GPT-3.5": 1},
                              {"verb noun": "use calculator", "GPT-4": 1, "GPT-3.5": 0}]
    assert g["mean_output_words"] == {"GPT-4": 5.5, "GPT-3.5": 3.25} and g["distinct_outputs_with_pair"] == {"GPT-4": 4, "GPT-3.5": 2}
    figs = {Path(p).name for p in m["self_instruct"]["figures"] + g["figures"]}
    assert {"released_verb_noun.png", "released_rouge_to_seed.png", "released_lengths.png", "gpt4_llm_top_pairs.png",
            "gpt4_llm_output_lengths.png"} <= figs

"tools/run_nbs.py: which cells must carry an output, what makes an output unclean, and the check's exit status."
import json, subprocess, sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT/"tools"))
import run_nbs  # noqa: E402

@pytest.mark.parametrize("src, kind", [
    ("x = 1", None),
    ("#| export\ndef f(x):\n    print(x)\n    return x", None),           # a print inside a def runs later
    ("test_eq(f(1), 1)", None),
    ("x = f(1)\ntest_fail(lambda: f('a'), contains='bad')", None),
    ("xs.append(3)", None),
    ("x = f(1); x;", None),                                                # trailing `;` hides the value
    ("x = f(1)\nx", "shows"),
    ("#| slow\nrun(1)[0]", "shows"),
    ("for r in rows: print(r)", "shows"),
    ("fig = plot_funnel(table)\ntest_eq(len(fig.axes), 1)", "draws"),
    ("fig, ax = plt.subplots()\nax.bar([1], [2])", "draws"),
])
def test_cell_kind(src, kind):
    assert run_nbs.cell_kind(src) == kind

def _stream(text, name="stdout"): return {"output_type": "stream", "name": name, "text": text}
def _result(text, **data): return {"output_type": "execute_result", "data": {"text/plain": text, **data}, "metadata": {}}

def test_output_problems():
    assert run_nbs.output_problems([_result("{'ok': 3}"), _stream("done\n")]) == []
    assert run_nbs.output_problems([_result("PosixPath('/work/main/outputs')")]) == ["absolute path (/work/main)"]
    assert run_nbs.output_problems([_result("<Foo at 0x7f3a2b1c9d80>")]) == ["memory address (at 0x7f3a2b1c9d80)"]
    assert run_nbs.output_problems([_stream("\rx: 100%|##| 2/2 [00:00<00:00, 9.1it/s]", "stderr")]) == ["progress bar"]
    warn = run_nbs.output_problems([_stream("f.py:3: FutureWarning: old\n", "stderr")])
    assert warn == ["stderr output (f.py:3: FutureWarning: old)", "warning (FutureWarning)"]
    assert run_nbs.output_problems([_result("{'http://127.0.0.1:39659/v1': {'ok': 3}}")]) == ["loopback port (127.0.0.1:39659)"]
    assert run_nbs.output_problems([_result("see localhost:8000 and [::1]:8080")]) == ["loopback port (localhost:8000)"]
    assert run_nbs.output_problems([_result("version 1.2.3:45 at example.org:443")]) == []      # not a loopback address
    assert run_nbs.output_problems([_stream("random: ab\ufffdc\n")]) == ["replacement character (U+FFFD: bytes that are not text)"]
    assert run_nbs.output_problems([_result("'aboutre into\\x00 did'")]) == []                 # an escaped repr is text
    assert run_nbs.output_problems([_result("'into\x00 did\x14'")]) == ["control characters (U+0000, U+0014)"]
    assert run_nbs.output_problems([_stream("a\tb\r\nc\n")]) == []                            # tab and line ends are fine
    img = {"output_type": "display_data", "data": {"image/png": "iVBOR", "text/plain": "<Figure>"}, "metadata": {}}
    assert run_nbs.output_problems([img, dict(img)]) == ["the same image twice"]

def test_progress_outputs_recognised():
    assert run_nbs.is_progress_output(_stream("\rfaults:   0%|   | 0/200 [00:00<?, ?it/s]", "stderr"))
    assert run_nbs.is_progress_output(_stream("parse: 12it [00:00, 80.1it/s]\n", "stderr"))
    assert run_nbs.is_progress_output({"output_type": "display_data", "metadata": {},
                                       "data": {"application/vnd.jupyter.widget-view+json": {"model_id": "ab"}}})
    assert not run_nbs.is_progress_output(_stream("a real warning\n", "stderr"))
    assert not run_nbs.is_progress_output(_stream("12 of 20 kept [rouge < 0.7, 3 dropped]\n"))

def _nb(tmp_path, cells):
    nb = {"cells": [{"cell_type": "code", "execution_count": None, "id": f"c{i}", "metadata": {}, "outputs": outs,
                     "source": src} for i, (src, outs) in enumerate(cells)],
          "metadata": {}, "nbformat": 4, "nbformat_minor": 5}
    p = tmp_path/"01_x.ipynb"; p.write_text(json.dumps(nb)); return p

def _check(p):
    return subprocess.run([sys.executable, str(ROOT/"tools"/"run_nbs.py"), "--check", str(p)], capture_output=True, text=True)

def test_check_counts_and_fails_on_a_missing_output(tmp_path):
    p = _nb(tmp_path, [("x = 1", []), ("x", [_result("1")]), ("print(x)", [])])
    r = _check(p)
    assert r.returncode == 1
    assert "cells that display something: 2, with their committed output: 1" in r.stdout
    assert "cell 2: displays something but has no output: print(x)" in r.stderr
    r = _check(_nb(tmp_path, [("x = 1", []), ("x", [_result("1")]), ("print(x)", [_stream("1\n")])]))
    assert r.returncode == 0 and "with their committed output: 2" in r.stdout, r.stderr


# ---------------------------------------------------------------- tools/sample_run.py: the excerpt of a run
sys.path.insert(0, str(ROOT/"tests"))

RUN_DIR, N_POOL = "outputs/demo-20260101-000000", 20

def _executed_nb(run_dir: str, root: str) -> dict:
    "A stage notebook as papermill leaves it: injected parameters, timings, an absolute path and a progress bar."
    return {"cells": [
        {"cell_type": "code", "execution_count": 1, "id": "p", "metadata": {"tags": ["injected-parameters"], "papermill": {"duration": 0.1}},
         "outputs": [], "source": f'# Parameters\nrun_dir = "{run_dir}"\n'},
        {"cell_type": "code", "execution_count": 2, "id": "a", "metadata": {"execution": {"iopub.status.busy": "2026"}},
         "outputs": [_stream(f"generated set: {root}/{run_dir}/13_filter/tasks.jsonl\n"),
                     _stream("\rbootstrap: 100%|##| 2/2 [00:00<00:00, 9.1it/s]", "stderr")], "source": "print(1)"}],
        "metadata": {"papermill": {"input_path": f"{root}/nbs/pipeline/10_bootstrap.ipynb", "duration": 3.0}},
        "nbformat": 4, "nbformat_minor": 5}

@pytest.fixture(scope="module")
def fake_run(tmp_path_factory):
    "A small run of stages 10-13 made by the library against the fake OpenAI server, with a manifest as the runner writes."
    from fake_openai_server import FakeOpenAIServer
    from responders import SelfInstructResponder
    from selfinstruct_nb import data
    from selfinstruct_nb.bootstrap import bootstrap
    from selfinstruct_nb.classify import classify_instructions
    from selfinstruct_nb.core import Task, read_jsonl
    from selfinstruct_nb.filters import filter_stage
    from selfinstruct_nb.instances import generate_instances
    from selfinstruct_nb.llm import LLMClient, make_backend
    from selfinstruct_nb.prompts import clf_examples_from_seeds
    root = tmp_path_factory.mktemp("checkout")
    run = root/RUN_DIR
    seeds = data.seed_tasks()
    with FakeOpenAIServer(responder=SelfInstructResponder(items=3)) as srv:
        client = LLMClient(make_backend("openai", "teacher", base_url=srv.url, api_key_env=""), cache=None, concurrency=4)
        summary = bootstrap(client, seeds, run/"10_bootstrap", num_instructions=N_POOL, seed=3,
                            requests_per_round=2, window=2, max_rounds=40, progress=False)
        tasks = read_jsonl(run/"10_bootstrap"/"machine_instructions.jsonl", validate=Task.from_dict)
        recs = classify_instructions(client, [t.instruction for t in tasks], clf_examples_from_seeds(seeds, seed=0),
                                     run/"11_classify"/"is_classification.jsonl")
        for t, r in zip(tasks, recs): t.is_classification = r["is_classification"]
        generate_instances(client, tasks, run/"12_instances")
    metrics = filter_stage(run, figures_dir=root/"figs")
    stages = {"10_bootstrap": {"status": "ok", "seconds": 1.0, "params": {"seed": 3}, "metrics": {**summary, "machine_instructions": len(tasks)}},
              "11_classify": {"status": "ok", "seconds": 1.0, "params": {"seed": 0}},
              "12_instances": {"status": "ok", "seconds": 1.0}, "13_filter": {"status": "ok", "seconds": 1.0, "metrics": metrics}}
    (run/"manifest.json").write_text(json.dumps({"profile": "demo", "run_dir": RUN_DIR, "status": "ok", "stages": stages,
                                                 "git": {"commit": "a" * 40, "dirty": False}, "command": ["selfinstruct-nb", "run", "demo"]}))
    (run/"notebooks").mkdir()
    for name in stages: (run/"notebooks"/f"{name}.ipynb").write_text(json.dumps(_executed_nb(RUN_DIR, str(root))))
    return root, run

def _sample(run, out, ex, *extra):
    return subprocess.run([sys.executable, str(ROOT/"tools"/"sample_run.py"), str(run), "--out", str(out), "--examples", str(ex),
                           "--figures", str(Path(out).parent/"figures"), *extra],
                          capture_output=True, text=True)

def test_sample_run_excerpt(fake_run, tmp_path):
    "The excerpt of a run: every request with its rebuilt in-context instructions, every candidate's fate, the joins."
    root, run = fake_run
    out, ex = tmp_path/"samples", tmp_path/"examples"
    r = _sample(run, out, ex)
    assert r.returncode == 0, r.stderr
    d = out/"demo"
    rd = lambda n: [json.loads(l) for l in (d/f"{n}.jsonl").read_text().splitlines()]
    rounds = [json.loads(l) for l in (run/"10_bootstrap"/"rounds.jsonl").read_text().splitlines()]
    reqs = rd("bootstrap_requests")
    assert [q["id"] for q in reqs] == [x["id"] for u in rounds for x in u["responses"]]
    assert all(q["prompt_verified"] for q in reqs)           # the rebuilt prompt hashes to the journal's
    assert all(len(q["in_context"]) == 8 for q in reqs)
    assert all(sum(c["source"] == "machine" for c in q["in_context"]) <= 2 for q in reqs)
    assert any(c["source"] == "machine" for q in reqs for c in q["in_context"])   # later prompts show the model's own
    assert reqs[0]["in_context"][0]["task_id"].startswith("seed_task_")
    cands = rd("bootstrap_candidates")
    raw = [c for c in (json.loads(l) for l in (run/"10_bootstrap"/"candidates.jsonl").read_text().splitlines()) if c["instruction"]]
    assert [(c["instruction"], c["kept"], c["reason"]) for c in cands] == [(c["instruction"], c["kept"], c["reason"]) for c in raw]
    assert sum(c["kept"] for c in cands) == N_POOL
    clf = rd("classify")
    assert len(clf) == N_POOL and all(c["raw"].strip().startswith(("Yes", "No")) for c in clf)
    assert all(c["nearest_seed_id"].startswith("seed_task_") and 0 <= c["nearest_seed_rouge"] <= 1 for c in clf)
    assert len(rd("classify_examples")) == 31
    inst = rd("instances")
    assert {g["template"] for g in inst} <= {"input_first", "output_first"} and len(inst) == N_POOL
    kept_tasks = rd("tasks")
    assert sum(x["fate"] == "kept" for g in inst for x in g["parsed"]) == sum(len(t["instances"]) for t in kept_tasks)
    assert {g["task_id"] for g in inst if g["task_fate"] == "kept"} == {t["id"] for t in kept_tasks}
    assert all(x["fate"] is not None for g in inst for x in g["parsed"])   # every parsed instance is accounted for
    assert {f["level"] for f in rd("funnel")} == {"instructions", "tasks", "instances"}
    info = json.loads((d/"run.json").read_text())
    assert info["run_dir"] == RUN_DIR and info["made_by"] == f"python tools/sample_run.py {RUN_DIR}"
    assert info["files"] == {p.name: len(p.read_text().splitlines()) for p in d.glob("*.jsonl")}
    assert not any(d.glob("experiment_*"))                   # no 44_experiment in this run: no experiment files
    assert {p.name for p in (tmp_path/"figures"/"demo").iterdir()} == {"pipeline.png", "pipeline.pdf"}
    first = {p.name: p.read_bytes() for p in d.iterdir()}
    assert _sample(run, out, ex).returncode == 0             # a second run of the tool gives the same bytes
    assert {p.name: p.read_bytes() for p in d.iterdir()} == first

def test_sample_run_notebooks_and_check(fake_run, tmp_path, monkeypatch):
    "The executed notebooks come out clean, and run_nbs --check ties them to the excerpt's run."
    root, run = fake_run
    out, ex = tmp_path/"samples", tmp_path/"examples"
    assert _sample(run, out, ex).returncode == 0
    nbs = sorted((ex/"demo").glob("*.ipynb"))
    assert [p.stem for p in nbs] == ["10_bootstrap", "11_classify", "12_instances", "13_filter"]
    text = nbs[0].read_text()
    assert str(root) not in text and "papermill" not in text and "100%|" not in text and '"execution_count": 2' not in text
    assert f"generated set: {RUN_DIR}/13_filter/tasks.jsonl" in text
    monkeypatch.setattr(run_nbs, "SAMPLES", out); monkeypatch.setattr(run_nbs, "EXAMPLES", ex)
    assert run_nbs.run_problems(ex/"demo") == []
    info = json.loads((out/"demo"/"run.json").read_text())
    (out/"demo"/"run.json").write_text(json.dumps({**info, "run_dir": "outputs/demo-20270101-000000"}))
    bad = run_nbs.run_problems(ex/"demo")
    assert len(bad) == 4 and "executed in run 'outputs/demo-20260101-000000', the excerpt" in bad[0]
    nbs[-1].unlink()
    (out/"demo"/"run.json").write_text(json.dumps(info))
    assert run_nbs.run_problems(ex/"demo") == [f"{ex/'demo'}: stage notebooks ['10_bootstrap.ipynb', '11_classify.ipynb', "
                                               f"'12_instances.ipynb'], the excerpt's run has ok stages ['10_bootstrap.ipynb', "
                                               f"'11_classify.ipynb', '12_instances.ipynb', '13_filter.ipynb']"]

def test_sample_run_errors(tmp_path):
    r = _sample(tmp_path, tmp_path/"o", tmp_path/"e")
    assert r.returncode == 2 and r.stderr.strip() == f"sample_run: {tmp_path}: no manifest.json (not a run folder)"
    (tmp_path/"manifest.json").write_text(json.dumps({"profile": "demo", "run_dir": "x"}))
    r = _sample(tmp_path, tmp_path/"o", tmp_path/"e")
    assert r.returncode == 2 and r.stderr.strip() == f"sample_run: {tmp_path/'10_bootstrap'/'config.json'}: missing (the bootstrap's settings)"

def test_committed_excerpt_and_examples_name_the_same_run():
    "The committed excerpt is under 1 MB, counts what it holds, and the committed executed notebooks are of its run."
    for d in sorted(run_nbs.SAMPLES.glob("*/run.json")):
        folder = d.parent
        assert sum(p.stat().st_size for p in folder.iterdir()) < 1_000_000
        info = json.loads(d.read_text())
        assert info["files"] == {p.name: len(p.read_text().splitlines()) for p in folder.glob("*.jsonl")}
        assert info["made_by"] == f"python tools/sample_run.py {info['run_dir']}"
        assert run_nbs.run_problems(run_nbs.EXAMPLES/folder.name) == []

def test_sample_run_experiment_tables(fake_run, tmp_path):
    "When the run has 44_experiment, its tables come along as experiment_<name>.jsonl; a too large one is named, not copied."
    import shutil
    _, run0 = fake_run
    run = tmp_path/"outputs"/"demo-20260101-000000"; shutil.copytree(run0, run)
    d = run/"44_experiment"; d.mkdir()
    (d/"comparison.csv").write_text("model,rougeL all,answer_words\nbase,0.111,19.5\n+self_instruct,0.010,3.4\n")
    (d/"answers.jsonl").write_text("".join(json.dumps({"id": f"u{i}", "model": m, "answer": "x"}) + "\n" for m in ("base", "+seeds") for i in range(3)))
    (d/"requests_base.jsonl").write_text("{}\n")                       # a journal, not a table
    (d/"big.csv").write_text("a\n" + "x" * 250_000 + "\n")
    man = json.loads((run/"manifest.json").read_text())
    man["stages"]["44_experiment"] = {"status": "ok", "seconds": 1.0}
    (run/"manifest.json").write_text(json.dumps(man))
    out = tmp_path/"samples"
    r = _sample(run, out, tmp_path/"examples", "--no-notebooks")
    assert r.returncode == 0, r.stderr
    d2 = out/"demo"
    assert sorted(p.name for p in d2.glob("experiment_*")) == ["experiment_answers.jsonl", "experiment_comparison.jsonl"]
    rows = [json.loads(l) for l in (d2/"experiment_comparison.jsonl").read_text().splitlines()]
    assert rows[1] == {"model": "+self_instruct", "rougeL all": 0.01, "answer_words": 3.4}
    info = json.loads((d2/"run.json").read_text())
    assert info["left_out"] == [{"file": "44_experiment/big.csv", "bytes": (d/"big.csv").stat().st_size}]
    sys.path.insert(0, str(ROOT))
    from selfinstruct_nb.excerpt import pipeline_counts
    assert pipeline_counts("demo", samples=out)["rouge_l"] == {"base": 0.111, "+self_instruct": 0.01}

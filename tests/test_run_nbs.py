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

def test_sample_run(tmp_path):
    "tools/sample_run.py: n tasks of a run's 13_filter/tasks.jsonl, in order, with a README entry naming the source."
    run = tmp_path/"outputs"/"demo-20260101-000000"; (run/"13_filter").mkdir(parents=True)
    (run/"manifest.json").write_text(json.dumps({"profile": "demo", "run_dir": "outputs/demo-20260101-000000", "status": "ok",
                                                 "git": {"commit": "a" * 40, "dirty": False}, "command": ["selfinstruct-nb", "run", "demo"]}))
    tasks = [{"id": f"machine_task_{i}", "instruction": f"Do {i}.", "instances": [{"input": "", "output": str(i)}],
              "is_classification": False, "source": "machine", "generation": {"created_at": 1.0}} for i in range(10)]
    (run/"13_filter"/"tasks.jsonl").write_text("".join(json.dumps(t) + "\n" for t in tasks))
    out = tmp_path/"samples"
    for _ in range(2):  # a second sample of the same profile replaces the first's README entry
        r = subprocess.run([sys.executable, str(ROOT/"tools"/"sample_run.py"), str(run), "-n", "4", "--out", str(out)], capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
    rows = [json.loads(l) for l in (out/"demo_tasks.jsonl").read_text().splitlines()]
    assert len(rows) == 4 and [r["id"] for r in rows] == sorted((r["id"] for r in rows), key=lambda x: int(x.split("_")[-1]))
    assert set(rows[0]) == {"id", "instruction", "is_classification", "instances"}   # no clock fields
    readme = (out/"README.md").read_text()
    assert readme.count("## `demo_tasks.jsonl`") == 1 and "4 of the 10 machine-generated tasks in `13_filter/tasks.jsonl`" in readme

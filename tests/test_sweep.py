"""`selfinstruct-nb sweep` end to end: a bad grid refused before anything runs, a dry run that writes nothing, a sweep
interrupted with Ctrl-C and resumed without rerunning its finished points (on a throwaway two-stage project), and a
2 x 2 sweep of the real `smoke` pipeline whose bootstrap stages are run once and shared."""
import csv, json, os, re, signal, shutil, subprocess, sys, time
from pathlib import Path

import pytest

from selfinstruct_nb.core import project_root
from selfinstruct_nb.sweep import _toy_project

SCRIPT = Path(sys.executable).parent/"selfinstruct-nb"
ROOT = project_root()


def cli(root, *args, **kw):
    env = {**os.environ, "SELFINSTRUCT_ROOT": str(root)}
    return subprocess.run([str(SCRIPT), *args], cwd=root, env=env, capture_output=True, text=True, timeout=600, **kw)


@pytest.fixture
def toy(tmp_path):
    return _toy_project(tmp_path/"proj")


def one_line_error(r, *contains):
    assert r.returncode == 2, r.stdout + r.stderr
    assert r.stdout == "" and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert r.stderr.startswith("selfinstruct-nb: error: ")
    for c in contains: assert c in r.stderr, (c, r.stderr)


def test_bad_grid_refused(toy):
    "An unknown key, a wrong-typed value, an empty list: one line, exit 2, no folder made."
    one_line_error(cli(toy, "sweep", "toy", "-p", "bogus=[1,2]"), "-p bogus: unknown parameter 'bogus'")
    one_line_error(cli(toy, "sweep", "toy", "-p", "n=[1,2]", "-p", "20_sum.scale=[1,many]"),
                   "-p 20_sum.scale: expected float", "got str 'many'")
    one_line_error(cli(toy, "sweep", "toy", "-p", "n=[]"), "-p n: empty list of values")
    one_line_error(cli(toy, "sweep", "toy", "-p", "n=[1,2]", "-p", "20_sum.scale=[1,2,3]", "--zip"), "--zip: the lists differ in length")
    one_line_error(cli(toy, "sweep", "toy", "-p", "20_sum.scale=[1,2]", "--only", "10_make"), "stage 20_sum is not selected")
    one_line_error(cli(toy, "sweep", "toy", "-p", "n=[1,2]", "--metric", "30_x.y"), "--metric 30_x.y")
    assert not (toy/"outputs").exists()
    # the real project's profiles go through the same checks
    before = sorted((ROOT/"outputs").glob("sweep-*")) if (ROOT/"outputs").exists() else []
    one_line_error(cli(ROOT, "sweep", "smoke", "-p", "10_bootstrap.rouge_threshhold=[0.5,0.7]"), "did you mean 'rouge_threshold'")
    after = sorted((ROOT/"outputs").glob("sweep-*")) if (ROOT/"outputs").exists() else []
    assert before == after


def test_dry_run_writes_nothing(toy):
    r = cli(toy, "sweep", "toy", "-p", "n=[2,3]", "-p", "20_sum.scale=[1,10]", "--dry-run")
    assert r.returncode == 0, r.stderr
    assert "4 point(s)" in r.stdout
    for name in ["00-n=2,scale=1", "01-n=2,scale=10", "02-n=3,scale=1", "03-n=3,scale=10"]: assert f"  {name}: " in r.stdout
    assert not (toy/"outputs").exists()
    r = cli(toy, "sweep", "toy", "-p", "20_sum.scale=[1,10]", "--dry-run")
    assert "run once and shared: 10_make" in r.stdout


def wait_for(cond, timeout, what):
    t = time.time()
    while time.time() - t < timeout:
        if (v := cond()): return v
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def read(p):
    try: return json.loads(Path(p).read_text())
    except (OSError, ValueError): return None


@pytest.mark.parametrize("sig,ignored", [(signal.SIGINT, False), (signal.SIGINT, True),
                                        pytest.param(signal.SIGKILL, False, marks=pytest.mark.slow)],
                         ids=["SIGINT", "SIGINT-ignored-at-start", "SIGKILL"])
def test_interrupt_and_resume(toy, sig, ignored):
    """Ctrl-C (SIGINT to the sweep's process group) or SIGKILL mid-sweep, then --resume: finished points are not run
    again. After SIGKILL the sweep cannot write its manifest, but its points notice they are orphans and stop.
    SIGINT is sent once points 2-3 are inside 10_make's cell (a marker file it writes), not after a guessed sleep;
    `ignored`: the sweep starts with SIGINT ignored, as a script's `cmd &` leaves it (the cause of a lost Ctrl-C)."""
    nb_path = toy/"nbs"/"pipeline"/"10_make.ipynb"
    nb = json.loads(nb_path.read_text())
    assert nb["cells"][2]["source"].startswith("import time\ntime.sleep(wait)\n")
    nb["cells"][2]["source"] = ("import time\nfrom selfinstruct_nb import core\n(core.resolve(run_dir)/'10_make.started').write_text('')\n"
                                "if not core.resolve('fast').exists(): time.sleep(wait)   # a resumed sweep need not wait\n"
                                + nb["cells"][2]["source"].removeprefix("import time\ntime.sleep(wait)\n"))
    nb_path.write_text(json.dumps(nb, indent=1))
    args = ["sweep", "toy", "-p", "10_make.wait=[0.0,0.1,60.0,60.1]", "-p", "n=3", "--workers", "2", "--metric", "20_sum.sum.total"]
    env = {**os.environ, "SELFINSTRUCT_ROOT": str(toy)}
    ignore = (lambda: signal.signal(signal.SIGINT, signal.SIG_IGN)) if ignored else None
    p = subprocess.Popen([str(SCRIPT), *args], cwd=toy, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True, start_new_session=True, preexec_fn=ignore)
    try:
        sweep = wait_for(lambda: next((toy/"outputs").glob("sweep-toy-*"), None) if (toy/"outputs").exists() else None, 60, "the sweep folder")
        def slow_points_in_stage():
            man = read(sweep/"sweep.json")
            if not man or [q["status"] for q in man["points"]] != ["ok", "ok", "running", "running"]: return False
            return all((sweep/q["name"]/"10_make.started").exists() for q in man["points"][2:])
        wait_for(slow_points_in_stage, 240, "points 0-1 finished and points 2-3 inside 10_make's cell")
        t0 = time.time()
        os.killpg(p.pid, sig)
        out, err = p.communicate(timeout=60)
    finally:
        if p.poll() is None: os.killpg(p.pid, signal.SIGKILL); p.wait()
    man = read(sweep/"sweep.json")
    if sig == signal.SIGINT:
        assert p.returncode == 130 and time.time() - t0 < 45, out + err   # not after the points' 60 s
        assert "interrupted" in err and "--resume" in out
        assert man["status"] == "interrupted"
        assert [q["status"] for q in man["points"]] == ["ok", "ok", "interrupted", "interrupted"]
    else:
        assert p.returncode == -signal.SIGKILL and man["status"] == "running"
        wait_for(lambda: not any((sweep/q["name"]/"point.pid").exists() for q in man["points"]), 60, "the orphaned points to stop")
    for q in man["points"][2:]:   # each interrupted point's own run manifest says so too, and no child is left
        m = read(sweep/q["name"]/"manifest.json")
        assert m["status"] == "interrupted" and m["stages"]["10_make"]["status"] == "interrupted"
        assert not (sweep/q["name"]/"point.pid").exists()
    finished = {f: f.stat().st_mtime_ns for q in man["points"][:2] for f in (sweep/q["name"]).rglob("*.json")}

    (toy/"fast").write_text("")
    r = cli(toy, "sweep", "toy", "--resume")
    assert r.returncode == 0, r.stdout + r.stderr
    for q in man["points"][:2]: assert f"{q['name']}: skipped, finished earlier" in r.stdout
    assert {f: f.stat().st_mtime_ns for f in finished} == finished   # nothing of the finished points was rewritten
    man = read(sweep/"sweep.json")
    assert man["status"] == "ok" and man["resumed"] and [q["status"] for q in man["points"]] == ["ok"] * 4
    assert man["workers"] == 2 and man["command"] == ["selfinstruct-nb", *args]   # the resumed sweep's own settings
    rows = list(csv.DictReader(open(sweep/"results.csv")))
    assert [float(r["20_sum.sum.total"]) for r in rows] == [3.0] * 4
    assert [float(r["10_make.wait"]) for r in rows] == [0.0, 0.1, 60.0, 60.1]
    assert (sweep/"sweep.png").exists()


@pytest.mark.slow
def test_smoke_2x2_shared_bootstrap():
    "A 2 x 2 sweep of 13_filter's word limits on `smoke`: the stages before 13_filter run once, the table has 4 rows."
    args = ["sweep", "smoke", "--only", "10_bootstrap,11_classify,12_instances,13_filter", "--workers", "2",
            "-p", "13_filter.max_output_words=[5,300]", "-p", "13_filter.max_input_words=[5,300]",
            "-p", "10_bootstrap.max_rounds=1", "-p", "10_bootstrap.max_tokens=48", "-p", "12_instances.max_tokens=32"]
    r = cli(ROOT, *args)
    m = re.search(r"^sweep (outputs/sweep-smoke-\S+):", r.stdout, re.M)
    assert m, r.stdout + r.stderr
    sweep = ROOT/m[1]
    try:
        assert r.returncode == 0, r.stdout + r.stderr[-3000:]
        man = read(sweep/"sweep.json")
        assert man["shared_stages"] == ["10_bootstrap", "11_classify", "12_instances"] and man["shared"]["status"] == "ok"
        assert man["cache"] == ["outputs/cache/llm.sqlite"]
        rows = list(csv.DictReader(open(sweep/"results.csv")))
        assert len(rows) == 4 and {r["status"] for r in rows} == {"ok"}
        assert (sweep/"sweep.png").stat().st_size > 10_000 and (sweep/"results.md").read_text().count("\n") == 6
        for q in man["points"]:
            run = read(sweep/q["name"]/"manifest.json")
            assert run["status"] == "ok"
            assert [run["stages"][s]["reused"] for s in man["stages"]] == [True, True, True, False]
            f = read(sweep/q["name"]/"13_filter"/"metrics.json")["params"]   # each point got its own values
            assert (f["max_output_words"], f["max_input_words"]) == (q["params"]["13_filter.max_output_words"],
                                                                    q["params"]["13_filter.max_input_words"])
            # the shared bootstrap's outputs are the same in every point
            assert (sweep/q["name"]/"10_bootstrap"/"candidates.jsonl").read_bytes() == \
                   (sweep/"_shared"/"10_bootstrap"/"candidates.jsonl").read_bytes()
    finally:
        shutil.rmtree(sweep, ignore_errors=True)


def test_failing_point_does_not_stop_the_others(toy):
    """One point's stage raises: it is reported with its error, the other point finishes, the exit code is 1. Then
    --resume reruns only the failed point, and the shared stages keep their record (status, time): not run again."""
    r = cli(toy, "sweep", "toy", "-p", "20_sum.fail=[True,False]", "--workers", "1", "--metric", "20_sum.sum.total")
    assert r.returncode == 1, r.stdout + r.stderr
    assert re.search(r"00-fail=true: failed in [\d.]+ s: stage 20_sum failed .*failed on purpose", r.stdout), r.stdout
    assert "01-fail=false: ok" in r.stdout and "1 of 2 point(s) failed" in r.stdout
    sweep = next((toy/"outputs").glob("sweep-toy-*"))
    man = read(sweep/"sweep.json")
    assert man["status"] == "failed" and [q["status"] for q in man["points"]] == ["failed", "ok"]
    assert man["shared_stages"] == ["10_make"] and man["shared"]["status"] == "ok"
    rows = list(csv.DictReader(open(sweep/"results.csv")))
    assert [(r["status"], r["20_sum.sum.total"]) for r in rows] == [("failed", ""), ("ok", "3.0")]
    shared, shared_mtime = man["shared"], (sweep/"_shared"/"manifest.json").stat().st_mtime_ns
    assert shared["seconds"] > 0 and shared["finished_at"]
    r = cli(toy, "sweep", "toy", "--resume")
    assert r.returncode == 1, r.stdout + r.stderr
    assert "_shared: skipped, finished earlier" in r.stdout and "_shared: running" not in r.stdout, r.stdout
    assert "01-fail=false: skipped, finished earlier" in r.stdout and re.search(r"00-fail=true: failed in", r.stdout)
    man = read(sweep/"sweep.json")
    assert man["resumed"] and man["shared"] == shared                      # carried over from the first run
    assert (sweep/"_shared"/"manifest.json").stat().st_mtime_ns == shared_mtime
    assert [q["status"] for q in man["points"]] == ["failed", "ok"]

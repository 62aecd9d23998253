"""The `selfinstruct-nb` command end to end, on a throwaway project of three tiny stage notebooks.

Each test drives the real console script in a subprocess, with `SELFINSTRUCT_ROOT` pointing at a temporary git
checkout (settings.ini + nbs/pipeline/), and runs the notebooks with papermill on the `selfinstruct-nb` kernel.
"""
import hashlib, json, os, subprocess, sys
from importlib import metadata
from pathlib import Path

import pytest

SCRIPT = Path(sys.executable).parent/"selfinstruct-nb"
SECRET = "sk-test-SECRET"

SETTINGS = """\
# Profiles of the throwaway test project.

[DEFAULT]
seed = 0

[smoke]
# Three tiny stages, small n.
stages = all
n = 2

[half]
# Only the first stage, with n set for that stage alone.
stages = 10_make
10_make.n = 5

[badkey]
# A profile with a key that no stage declares.
stages = all
bogus = 1

[badtype]
# A profile with a value of the wrong type.
stages = all
n = many
"""

STAGES = {
    "10_make": ("Make items",
        'n: int = 3  # how many items\napi_key_env: str = "OPENAI_API_KEY"  # variable that holds the API key',
        ['import os\nfrom selfinstruct_nb import core\nkey = os.environ.get(api_key_env, "")  # a real stage hands it to the client\n'
         'out = core.resolve(run_dir)/"10_make"\ncore.write_json(out/"items.json", list(range(n)))\nprint("items:", n, "key set:", bool(key))'],
        '{"n": n, "seed": seed}'),
    "20_sum": ("Sum items",
        "scale: float = 1.0  # multiplier\nfail: bool = False  # raise on purpose",
        ['import json\nfrom selfinstruct_nb import core\nitems = json.loads((core.resolve(run_dir)/"10_make"/"items.json").read_text())',
         'if fail: raise ValueError("boom requested")',
         'out = core.resolve(run_dir)/"20_sum"\ncore.write_json(out/"sum.json", sum(items) * scale)'],
        '{"sum": sum(items) * scale}'),
    "30_report": ("Report",
        'label: str = "report"  # a label\nhf_token: str = ""  # a secret-named parameter (only to test redaction)',
        ['import json\nfrom selfinstruct_nb import core\nout = core.resolve(run_dir)/"30_report"\n'
         'total = json.loads((core.resolve(run_dir)/"20_sum"/"sum.json").read_text())\ncore.write_json(out/"report.json", {"label": label, "total": total})'],
        '{"total": total}'),
}

def _cell(kind, src, tags=None):
    c = {"cell_type": kind, "id": hashlib.sha1(src.encode()).hexdigest()[:8], "metadata": {"tags": tags} if tags else {}, "source": src}
    if kind == "code": c |= {"execution_count": None, "outputs": []}
    return c

def write_stage(folder: Path, name, title, params, body, metrics):
    cells = [_cell("markdown", f"# {title}\nA throwaway stage for the runner's tests."),
             _cell("code", 'run_dir: str = "outputs/dev"  # the run folder\nseed: int = 0  # random seed\n' + params, ["parameters"]),
             *[_cell("code", b) for b in body],
             _cell("code", f"core.write_json(core.resolve(run_dir)/{name!r}/'metrics.json', {metrics})")]
    nb = {"cells": cells, "metadata": {"kernelspec": {"name": "python3", "display_name": "python3", "language": "python"},
                                       "language_info": {"name": "python"}}, "nbformat": 4, "nbformat_minor": 5}
    (folder/f"{name}.ipynb").write_text(json.dumps(nb, indent=1))

def git(root, *args):
    return subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@example.com", *args], cwd=root,
                          check=True, capture_output=True, text=True).stdout.strip()

def make_project(root: Path) -> Path:
    (root/"nbs"/"pipeline").mkdir(parents=True)
    (root/"settings.ini").write_text(SETTINGS)
    (root/"pyproject.toml").write_text('[project]\nname = "throwaway"\n')
    (root/".gitignore").write_text("outputs/\n")
    for name, spec in STAGES.items(): write_stage(root/"nbs"/"pipeline", name, *spec)
    git(root, "init", "-q"); git(root, "add", "-A"); git(root, "commit", "-qm", "throwaway project")
    return root

def cli(root, *args, env=None):
    e = {k: v for k, v in os.environ.items() if k != "OPENAI_API_KEY"} | {"SELFINSTRUCT_ROOT": str(root)} | (env or {})
    return subprocess.run([str(SCRIPT), *args], cwd=root, env=e, capture_output=True, text=True, timeout=300)

def runs(root, profile="smoke"): return sorted((root/"outputs").glob(f"{profile}-*"))

def snapshot(root):
    "Every file under outputs/ with its sha256 and mtime."
    return {str(p.relative_to(root)): (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
            for p in sorted((root/"outputs").rglob("*")) if p.is_file()}

def one_line_error(r, *contains, only_line=True):
    "The command failed with one error line (and, if `only_line`, nothing else on stderr: no kernel was started)."
    assert r.returncode != 0, r.stdout + r.stderr
    err = [l for l in r.stderr.splitlines() if l.startswith("selfinstruct-nb:")]
    assert len(err) == 1, r.stderr
    if only_line: assert r.stderr.strip() == err[0], r.stderr
    for c in contains: assert c in err[0], (c, err[0])
    return err[0]

@pytest.fixture(scope="module")
def ran(tmp_path_factory):
    "A project with one earlier successful run (profile `half`)."
    root = make_project(tmp_path_factory.mktemp("proj"))
    r = cli(root, "run", "half", "--no-progress")
    assert r.returncode == 0, r.stderr
    return root

NOISE = ("Kernel is running over TCP without encryption", "KeyboardInterrupt", "TqdmWarning")

def test_help_fits_a_screen_and_params_has_the_detail(ran):
    for args in (["--help"], ["run", "--help"]):
        r = cli(ran, *args)
        assert r.returncode == 0, r.stderr
        lines = r.stdout.splitlines()
        assert len(lines) <= 40 and max(map(len, lines)) <= 120, (args, len(lines), max(map(len, lines)))
        for s in ["smoke", "Three tiny stages, small n.", "half", "Only the first stage, with n set for that stage alone.",
                  "10_make, 20_sum, 30_report", "selfinstruct-nb params STAGE"]:
            assert s in r.stdout, (args, s)
        assert "how many items" not in r.stdout  # a stage's parameters are in `params STAGE`
    r = cli(ran, "list")
    assert r.returncode == 0 and "10_make" in r.stdout and "stages: 10_make, 20_sum, 30_report" in r.stdout
    r = cli(ran, "params", "20_sum")
    assert r.returncode == 0 and "profile smoke: seed=0" in r.stdout and "scale: float = 1.0" in r.stdout
    r = cli(ran, "params", "10_make")
    for s in ["n: int = 3", "how many items", 'api_key_env: str = "OPENAI_API_KEY"', "run_dir: str", "seed: int = 0", "random seed"]:
        assert s in r.stdout, s

def test_console_is_quiet(tmp_path):
    "A run's console: the run line, one running and one ok line (time, outputs, funnel) per stage, the final line; no kernel noise."
    root = make_project(tmp_path)
    r = cli(root, "run", "smoke", "--no-progress")
    assert r.returncode == 0, r.stderr
    out = r.stdout + r.stderr
    assert not [l for l in out.splitlines() if any(n in l for n in NOISE)], out
    assert r.stderr == "" and len(r.stdout.splitlines()) == 1 + 2 * 3 + 1, r.stdout
    run, = runs(root)
    ok = [l for l in r.stdout.splitlines() if ": ok in " in l]
    assert ok[1].startswith("[2/3] 20_sum: ok in ") and ok[1].endswith(f"-> {run.relative_to(root)}/20_sum/  (sum 1)"), ok[1]
    assert ok[0].endswith(f"-> {run.relative_to(root)}/10_make/"), ok[0]  # its metrics only echo its parameters n and seed
    assert not list(root.glob("kernel-*"))  # the IPC sockets live in Jupyter's runtime folder, not in the project

def test_earlier_run(ran):
    run, = runs(ran, "half")
    assert json.loads((run/"10_make"/"items.json").read_text()) == [0, 1, 2, 3, 4]  # 10_make.n = 5
    assert not (run/"20_sum").exists()

def test_two_runs_at_once(tmp_path):
    "Two runs started together from the same project: each talks to its own kernels (their sockets are not shared)."
    root = make_project(tmp_path)
    e = {k: v for k, v in os.environ.items() if k != "OPENAI_API_KEY"} | {"SELFINSTRUCT_ROOT": str(root)}
    procs = [subprocess.Popen([str(SCRIPT), "run", "smoke", "--no-progress", "-p", f"label=run{i}"], cwd=root, env=e,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    assert [err for _, err in outs] == ["", ""], outs
    assert sorted(json.loads((r/"30_report"/"report.json").read_text())["label"] for r in runs(root)) == ["run0", "run1"]
    assert not list(root.glob("kernel-*"))

@pytest.mark.parametrize("args,contains", [
    (["run", "nope"], ["unknown profile 'nope'", "settings.ini has smoke, half"]),
    (["run", "smoke", "-p", "nope=1"], ["-p nope", "unknown parameter 'nope'"]),
    (["run", "smoke", "-p", "20_sum.n=1"], ["-p 20_sum.n", "unknown parameter 'n'", "20_sum does not declare it"]),
    (["run", "badkey"], ["settings.ini [badkey] bogus", "unknown parameter 'bogus'"]),
    (["run", "smoke", "-p", "n=many"], ["-p n", "expected int", "got str 'many'"]),
    (["run", "badtype"], ["settings.ini [badtype] n", "expected int"]),
    (["run", "smoke", "-p", "fail=1"], ["-p fail", "expected bool", "got int 1"]),
    (["run", "smoke", "-p", "scale=fast"], ["-p scale", "expected float"]),
    (["run", "smoke", "-p", "run_dir=x"], ["run_dir is set by the runner"]),
    (["run", "smoke", "--only", "99_nope"], ["--only: unknown stage '99_nope'"]),
    (["run", "smoke", "--kernel", "no-such-kernel-xyz"], ["jupyter kernel 'no-such-kernel-xyz' not found",
                                                          "python -m ipykernel install --user --name no-such-kernel-xyz"]),
    (["run", "smoke", "--kernel", "no-such-kernel-xyz", "--dry-run"], ["jupyter kernel 'no-such-kernel-xyz' not found"]),
    (["run", "half", "-p", "scale=2"], ["-p scale: no selected stage declares 'scale' (selected: 10_make; declared by 20_sum)",
                                         "--only"]),
    (["run", "smoke", "--only", "10_make", "-p", "20_sum.scale=2"], ["-p 20_sum.scale: stage 20_sum is not selected"]),
    (["run", "smoke", "--resume"], ["--resume: no earlier run outputs/smoke-* to continue; run without --resume"]),
    (["run", "smoke", "--resume", "--dry-run"], ["--resume: no earlier run outputs/smoke-*"]),
    (["run", "smoke", "--resume", "outputs/nope", "--dry-run"], ["--resume outputs/nope: no such run folder"]),
    (["run", "smoke", "--resume", "nbs", "--dry-run"], ["--resume nbs: not a run folder (no manifest.json)"]),
    (["run", "smoke", "-p", "api_key_env=NO_SUCH_KEY_XYZ", "--dry-run"], []),  # no openai backend here: a name is just a name
])
def test_refused_before_anything_runs(ran, args, contains):
    before = snapshot(ran)
    r = cli(ran, *args)
    if not contains: assert r.returncode == 0, r.stderr  # a control case: accepted
    else:
        one_line_error(r, *contains)
        assert r.returncode == 2
    assert snapshot(ran) == before  # nothing run, nothing created, earlier outputs intact

@pytest.mark.parametrize("mirror,contains", [("no/such/mirror", "is not a folder: point it at the data mirror"),
                                             ("empty", "registered data files (e.g.")])
def test_bad_data_mirror_is_one_short_line(ran, tmp_path, mirror, contains):
    path = tmp_path/mirror
    if mirror == "empty": path.mkdir()
    for dry in ([], ["--dry-run"]):
        before = snapshot(ran)
        r = cli(ran, "run", "smoke", *dry, env={"SELFINSTRUCT_DATA": str(path)})
        err = one_line_error(r, f"SELFINSTRUCT_DATA={path}", contains)
        assert r.returncode == 2 and len(err) < 200 + len(str(path)), err
        assert snapshot(ran) == before

def test_int_accepted_for_float(ran):
    r = cli(ran, "run", "smoke", "-p", "scale=2", "--dry-run")
    assert r.returncode == 0, r.stderr
    assert '20_sum: {"run_dir": "outputs/smoke-<time>", "seed": 0, "scale": 2.0}' in r.stdout

def test_only(tmp_path):
    root = make_project(tmp_path)
    r = cli(root, "run", "smoke", "--only", "10_make", "--no-progress")
    assert r.returncode == 0, r.stderr
    run, = runs(root)
    man = json.loads((run/"manifest.json").read_text())
    assert man["selected_stages"] == ["10_make"] and list(man["stages"]) == ["10_make"]
    assert sorted(p.name for p in run.iterdir()) == ["10_make", "manifest.json", "notebooks"]

def test_failure_then_resume(tmp_path):
    root = make_project(tmp_path)
    r = cli(root, "run", "smoke", "-p", "fail=True", "--no-progress")
    err = one_line_error(r, "stage 20_sum failed in nbs/pipeline/20_sum.ipynb, cell 4", "ValueError: boom requested", only_line=False)
    assert r.returncode == 1, err
    run, = runs(root)
    assert json.loads((run/"10_make"/"items.json").read_text()) == [0, 1]  # the stage before it kept its outputs
    assert not (run/"30_report").exists()                                  # the stage after it never ran
    man = json.loads((run/"manifest.json").read_text())
    assert (man["status"], man["stages"]["10_make"]["status"], man["stages"]["20_sum"]["status"]) == ("failed", "ok", "failed")
    assert "boom requested" in man["stages"]["20_sum"]["error"]
    made = (run/"notebooks"/"10_make.ipynb").stat().st_mtime_ns

    r = cli(root, "run", "smoke", "--resume", "--no-progress")  # fail=False now: 20_sum's parameters changed
    assert r.returncode == 0, r.stderr
    assert runs(root) == [run]
    assert "[1/3] 10_make: skipped" in r.stdout and "[2/3] 20_sum: ok" in r.stdout and "[3/3] 30_report: ok" in r.stdout
    assert (run/"notebooks"/"10_make.ipynb").stat().st_mtime_ns == made
    assert json.loads((run/"30_report"/"report.json").read_text()) == {"label": "report", "total": 1.0}

    r = cli(root, "run", "smoke", "--resume", "-p", "20_sum.scale=2", "--no-progress")
    assert r.returncode == 0, r.stderr
    assert "10_make: skipped" in r.stdout and "20_sum: ok" in r.stdout and "30_report: ok" in r.stdout  # later stages rerun too
    assert json.loads((run/"30_report"/"report.json").read_text()) == {"label": "report", "total": 2.0}

    before = snapshot(root)
    r = cli(root, "run", "smoke", "--resume", str(run), "-p", "20_sum.scale=2", "--no-progress")
    assert r.returncode == 0, r.stderr
    assert r.stdout.count("skipped") == 3
    changed = {k for k in set(before) | set(snapshot(root)) if before.get(k) != snapshot(root).get(k)}
    assert changed == {str((run/"manifest.json").relative_to(root))}
    man = json.loads((run/"manifest.json").read_text())
    assert man["status"] == "ok" and all(s["reused"] for s in man["stages"].values())

def test_manifest_and_secrets(tmp_path):
    root = make_project(tmp_path)
    r = cli(root, "run", "smoke", "-p", f"30_report.hf_token={SECRET}", "-p", "label=final", "--no-progress",
            env={"OPENAI_API_KEY": SECRET, "PWD": str(root)})
    assert r.returncode == 0, r.stderr
    assert SECRET not in r.stdout + r.stderr
    run, = runs(root)
    leaks = [str(p) for p in run.rglob("*") if p.is_file() and SECRET.encode() in p.read_bytes()]
    assert leaks == []
    executed = (run/"notebooks"/"10_make.ipynb").read_text()
    assert "key set: True" in executed  # the stage did see the key, from the environment
    man = json.loads((run/"manifest.json").read_text())
    assert man["profile"] == "smoke" and man["status"] == "ok"
    assert man["git"]["commit"] == git(root, "rev-parse", "HEAD") and man["git"]["dirty"] is False
    assert man["packages"]["papermill"] == metadata.version("papermill")
    assert man["packages"]["selfinstruct-nb"] == metadata.version("selfinstruct-nb")
    assert man["platform"]["python"] == sys.version.split()[0]
    assert man["kernel"]["name"] == "selfinstruct-nb"
    st = man["stages"]
    assert list(st) == ["10_make", "20_sum", "30_report"]
    assert st["10_make"]["params"] == {"run_dir": man["run_dir"], "seed": 0, "n": 2, "api_key_env": "OPENAI_API_KEY"}
    assert st["10_make"]["set_by"]["n"] == "settings.ini [smoke] n"
    assert st["30_report"]["params"]["hf_token"] == "<redacted>" and st["30_report"]["params"]["label"] == "final"
    assert st["30_report"]["set_by"]["label"] == "-p label"
    assert st["20_sum"]["metrics"] == {"sum": 1.0} and st["10_make"]["metrics"] == {"n": 2, "seed": 0}
    assert all(s["status"] == "ok" and s["seconds"] > 0 for s in st.values())
    assert any("<redacted>" in a for a in man["command"])
    context = json.dumps({k: man[k] for k in ("run_dir", "git", "platform", "packages", "kernel", "data")})
    assert "<redacted>" not in context and os.path.realpath(man["platform"]["executable"]) == os.path.realpath(sys.executable)  # nothing else scrubbed
    data = man["data"]
    if "error" not in data:  # selfinstruct_nb.data is there: every registered file found locally is listed and checked
        from selfinstruct_nb import data as D
        present = {rel for rel in D.REGISTRY if any((Path(s)/rel).exists() for s in data["sources"])}
        assert set(data["files"]) == present and data["present"] == len(present)
        assert all(f["matches_registry"] for f in data["files"].values())
        if os.environ.get("SELFINSTRUCT_DATA"): assert data["present"] > 0


# --- slow: the real stage notebooks, twice ------------------------------------------------------------------------------
REPO = Path(__file__).resolve().parents[1]
# The stages whose metrics held absolute paths or differed between two runs with the same seed, all of which run on
# the released data and the tiny model alone (32_generate needs 30_sft's student: its relative path is checked by
# tests/test_training.py's stage chain).
TWICE = "31_reward,40_eval_rouge,41_judge"
# What may differ between two runs: the stage and run times and the manifest's clock fields, the run folder's name
# inside paths (outputs/smoke-<time>/...) and the manifest's hash of each stage's parameters (run_dir is one). Nothing else in any metrics.json is excluded. The response cache
# (outputs/cache/) is emptied before each run, so the second run does the same work as the first (served from the
# cache, its request accounting would differ).
RUN_VARYING = {"seconds", "started_at", "updated_at", "created_at", "finished_at",
               "params_hash"}  # a hash of the parameters, run_dir (the run folder) among them

def _strip(obj):
    if isinstance(obj, dict): return {k: _strip(v) for k, v in obj.items() if k not in RUN_VARYING}
    if isinstance(obj, list): return [_strip(v) for v in obj]
    return obj

@pytest.mark.slow
def test_smoke_twice_same_metrics_relative_paths_quiet(tmp_path):
    "Two smoke runs of 31_reward, 40_eval_rouge and 41_judge: the same metrics, project-relative paths, a quiet console."
    root = tmp_path/"project"
    root.mkdir()
    for name in ("settings.ini", "pyproject.toml"): (root/name).write_bytes((REPO/name).read_bytes())
    import shutil
    shutil.copytree(REPO/"nbs"/"pipeline", root/"nbs"/"pipeline")
    if (REPO/"outputs"/"models").exists(): shutil.copytree(REPO/"outputs"/"models", root/"outputs"/"models")  # the tiny model
    got = []
    for _ in range(2):
        shutil.rmtree(root/"outputs"/"cache", ignore_errors=True)
        r = cli(root, "run", "smoke", "--only", TWICE, "--no-progress")
        assert r.returncode == 0, r.stderr[-3000:]
        assert not [l for l in (r.stdout + r.stderr).splitlines() if any(n in l for n in NOISE)], r.stdout + r.stderr
        run = runs(root)[-1]
        for nb in (run/"notebooks").glob("*.ipynb"):
            text = nb.read_text()
            assert not [n for n in NOISE if n in text], nb.name
        metrics = {s: json.loads((run/s/"metrics.json").read_text()) for s in TWICE.split(",")}
        text = json.dumps(metrics)
        assert str(root) not in text and str(REPO) not in text and '"/' not in text, "an absolute path in metrics.json"
        man = json.loads((run/"manifest.json").read_text())
        got.append(json.dumps({"metrics": metrics, "manifest": _strip(man["stages"])}).replace(run.name, "RUN"))
    first, second = (json.loads(g) for g in got)
    assert first["metrics"] == second["metrics"]  # every metric, accuracy_before and the loss curve of 31_reward too
    assert first["manifest"] == second["manifest"]
    for nb in ("31_reward", "40_eval_rouge"):  # each figure drawn once: by the inline backend, not again as the cell's value
        cells = json.loads((runs(root)[-1]/"notebooks"/f"{nb}.ipynb").read_text())["cells"]
        pngs = [sum("image/png" in o.get("data", {}) for o in c.get("outputs", [])) for c in cells if c["cell_type"] == "code"]
        assert max(pngs) == 1 and sum(pngs) == 1, (nb, pngs)

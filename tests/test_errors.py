"""Bad input through the real `selfinstruct-nb` command and the real stage notebooks.

Each case must end with one error line naming what is wrong (file:line:field for bad records), a non-zero exit,
and every output written before it left as it was. The project is a scratch root (`SELFINSTRUCT_ROOT`) holding the
real settings.ini and stage notebooks, so runs never touch the checkout's own outputs/.
"""
import hashlib, json, os, shutil, subprocess, sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = Path(sys.executable).parent/"selfinstruct-nb"
MIRROR = Path(os.environ.get("SELFINSTRUCT_DATA", REPO.parent/"shared"/"data"))


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    "A scratch project: the real settings.ini, pyproject.toml and pipeline notebooks, its own outputs/."
    r = tmp_path_factory.mktemp("project")
    for name in ("settings.ini", "pyproject.toml"): shutil.copy(REPO/name, r/name)
    (r/"nbs").mkdir()
    shutil.copytree(REPO/"nbs"/"pipeline", r/"nbs"/"pipeline")
    models = REPO/"outputs"/"models"  # reuse the tiny model if the checkout already built it
    if models.exists(): shutil.copytree(models, r/"outputs"/"models")
    return r


def cli(root, *args, env=None):
    e = {k: v for k, v in os.environ.items() if k != "OPENAI_API_KEY"}
    e |= {"SELFINSTRUCT_ROOT": str(root), "SELFINSTRUCT_DATA": str(MIRROR)} | (env or {})
    return subprocess.run([str(SCRIPT), *args, "--no-progress"], cwd=root, env=e, capture_output=True, text=True, timeout=600)


def snapshot(folder: Path) -> dict:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def one_error_line(r, *contains) -> str:
    assert r.returncode != 0, r.stdout[-2000:] + r.stderr[-2000:]
    lines = [l for l in r.stderr.splitlines() if l.startswith("selfinstruct-nb:")]
    assert len(lines) == 1, r.stderr[-3000:]
    for c in contains: assert c in lines[0], (c, lines[0])
    return lines[0]


def test_malformed_jsonl_names_file_line_field(root, tmp_path):
    good, bad = tmp_path/"good.jsonl", tmp_path/"bad.jsonl"
    task = {"id": "m1", "instruction": "Write a haiku about rain.", "instances": [{"input": "", "output": "Rain falls."}],
            "is_classification": False, "source": "machine"}
    good.write_text(json.dumps(task) + "\n")
    bad.write_text(json.dumps(task) + "\n" + json.dumps({**task, "id": "m2", "instances": [{"input": ""}]}) + "\n")
    r = cli(root, "run", "smoke", "--only", "14_finetune_data", "-p", f"14_finetune_data.tasks_path={good}")
    assert r.returncode == 0, r.stderr[-3000:]
    run = max((root/"outputs").glob("smoke-*"))
    before = snapshot(run/"14_finetune_data")
    assert "alpaca.jsonl" in before

    r = cli(root, "run", "smoke", "--only", "14_finetune_data", "--resume", str(run), "-p", f"14_finetune_data.tasks_path={bad}")
    one_error_line(r, "14_finetune_data", f"{bad}:2: instances[0].output: missing")
    assert r.returncode == 1
    assert snapshot(run/"14_finetune_data") == before  # the earlier stage output is intact


def test_unknown_profile_and_parameter(root):
    before = snapshot(root/"outputs") if (root/"outputs").exists() else {}
    one_error_line(cli(root, "run", "nosuchprofile"), "unknown profile 'nosuchprofile'")
    one_error_line(cli(root, "run", "smoke", "-p", "no_such_param=1"), "unknown parameter 'no_such_param'")
    after = snapshot(root/"outputs") if (root/"outputs").exists() else {}
    assert after == before  # refused before anything ran


def no_new_folder(root, before):
    "Nothing was written: no run folder, earlier outputs as they were."
    assert snapshot(root/"outputs") == before


def test_missing_api_key(root):
    before = snapshot(root/"outputs")
    r = cli(root, "run", "smoke", "--only", "42_mc", "-p", "42_mc.eval_backend=openai", "-p", "42_mc.eval_model=some-model",
            "-p", "42_mc.method=generate", "-p", "42_mc.eval_base_url=http://127.0.0.1:9/v1",
            "-p", "42_mc.eval_api_key_env=SELFINSTRUCT_TEST_UNSET_KEY")
    one_error_line(r, "42_mc: eval_api_key_env names SELFINSTRUCT_TEST_UNSET_KEY, which is not set",
                   "export SELFINSTRUCT_TEST_UNSET_KEY=")
    no_new_folder(root, before)


def test_model_path_that_does_not_exist(root):
    before = snapshot(root/"outputs")
    for dry in ([], ["--dry-run"]):
        r = cli(root, "run", "smoke", "--only", "42_mc", "-p", "42_mc.eval_model=./no/such/model", *dry)
        one_error_line(r, "42_mc.eval_model: model path does not exist", "./no/such/model")
    no_new_folder(root, before)


def test_resume_dry_run_without_an_earlier_run(root):
    before = snapshot(root/"outputs")
    r = cli(root, "run", "full", "--resume", "--dry-run", "-p", "paper_scale=False")   # (else: set its models first)
    one_error_line(r, "--resume: no earlier run outputs/full-* to continue")
    no_new_folder(root, before)


def test_key_that_no_selected_stage_declares(root):
    "teacher_chat belongs to the teacher stages: sent to the judge and the evaluation alone, it would reach nothing."
    before = snapshot(root/"outputs")
    r = cli(root, "run", "smoke", "--only", "41_judge,42_mc", "-p", "teacher_chat=True")
    one_error_line(r, "-p teacher_chat: no selected stage declares 'teacher_chat' (selected: 41_judge, 42_mc; declared by 10_bootstrap")
    no_new_folder(root, before)


def test_teacher_model_reaches_exactly_the_teacher_stages(root):
    r = cli(root, "run", "smoke", "--dry-run", "-p", "teacher_model=org/teacher-x")
    assert r.returncode == 0, r.stderr
    got = {line.split(":")[0]: json.loads(line.split(": ", 1)[1]) for line in r.stdout.splitlines() if line[:2].isdigit()}
    assert len(got) == len(list((REPO/"nbs"/"pipeline").glob("[0-9]*.ipynb"))), r.stdout  # every stage planned
    reached = {stage for stage, params in got.items() if "org/teacher-x" in json.dumps(params)}
    assert reached == {"10_bootstrap", "11_classify", "12_instances", "20_distill"}, reached
    assert all(got[s]["teacher_model"] == "org/teacher-x" for s in reached)
    assert "checks ok" in r.stdout.splitlines()[-1]


def test_checksum_mismatch(root, tmp_path):
    mirror = tmp_path/"mirror"
    shutil.copytree(MIRROR, mirror)
    seeds = mirror/"self-instruct"/"data"/"seed_tasks.jsonl"
    seeds.chmod(0o644)
    seeds.write_text(seeds.read_text().replace("breakfast", "brunch", 1))
    figures = tmp_path/"figures"; figures.mkdir()
    (figures/"earlier.png").write_bytes(b"an earlier figure")
    before = snapshot(root/"outputs")
    r = cli(root, "run", "paper", "--only", "15_analysis", "-p", f"figures_dir={figures}", env={"SELFINSTRUCT_DATA": str(mirror)})
    one_error_line(r, "sha256 mismatch", "self-instruct/data/seed_tasks.jsonl", "restore it from https://")
    assert snapshot(figures) == {"earlier.png": hashlib.sha256(b"an earlier figure").hexdigest()}
    no_new_folder(root, before)

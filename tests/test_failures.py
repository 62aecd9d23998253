"""Failures a user running the teacher stages against real servers meets, through the real `selfinstruct-nb` command
and the real `10_bootstrap` stage, against the fault server (issue 17): a SIGKILL of the command (the stage kernel
dies with it, no request reaches the server after the kill, and the resumed run's `metrics.json` counts every call
the server saw); a refused key; a stage whose requests all failed; a stage that produced nothing; a paper-scale
profile left on the random `tiny` model."""
import json, os, shutil, signal, subprocess, sys, time
from pathlib import Path

import psutil
import pytest

sys.path.insert(0, str(Path(__file__).parent))
from fake_openai_server import FakeOpenAIServer
from responders import SelfInstructResponder
from test_errors import one_error_line

REPO = Path(__file__).resolve().parents[1]
SCRIPT = Path(sys.executable).parent/"selfinstruct-nb"
MIRROR = Path(os.environ.get("SELFINSTRUCT_DATA", REPO.parent/"shared"/"data"))


@pytest.fixture
def root(tmp_path):
    "A scratch project: the real settings.ini, pyproject.toml and pipeline notebooks, its own outputs/."
    for name in ("settings.ini", "pyproject.toml"): shutil.copy(REPO/name, tmp_path/name)
    (tmp_path/"nbs").mkdir()
    shutil.copytree(REPO/"nbs"/"pipeline", tmp_path/"nbs"/"pipeline")
    return tmp_path


def cli(root, *args, env=None, timeout=600):
    e = {**os.environ, "SELFINSTRUCT_ROOT": str(root), "SELFINSTRUCT_DATA": str(MIRROR), **(env or {})}
    return subprocess.run([str(SCRIPT), *args, "--no-progress"], cwd=root, env=e, capture_output=True, text=True, timeout=timeout)


def teacher(url, key_env='""'):
    return ["-p", "teacher_backend=openai", "-p", "teacher_model=teacher", "-p", f"teacher_base_url={url}",
            "-p", f"teacher_api_key_env={key_env}", "-p", 'cache=""']




def test_a_refused_key_stops_the_stage_in_one_line_naming_the_variable(root):
    with FakeOpenAIServer(responder=SelfInstructResponder(), api_key="sk-right-key-0000") as srv:
        r = cli(root, "run", "smoke", "--only", "10_bootstrap", *teacher(srv.url, "SELFINSTRUCT_TEST_KEY"),
                env={"SELFINSTRUCT_TEST_KEY": "sk-wrong-key-1111"})
        refused = srv.snapshot().get("401", 0)
    line = one_error_line(r, "10_bootstrap", "$SELFINSTRUCT_TEST_KEY", "HTTP 401")
    assert "sk-wrong" not in r.stderr + r.stdout and "sk-right" not in line
    assert 1 <= refused <= 8                                  # the calls already in flight, then none


def test_a_stage_whose_requests_all_failed_fails_with_the_reasons(root):
    with FakeOpenAIServer(fault_plan=lambda req, attempt: "400") as srv:
        r = cli(root, "run", "smoke", "--only", "10_bootstrap", *teacher(srv.url))
    one_error_line(r, "stage 10_bootstrap: all 12 requests failed (http_400 12)", "metrics.json")
    man = json.loads(next((root/"outputs").glob("smoke-*/manifest.json")).read_text())
    assert man["status"] == "failed" and man["stages"]["10_bootstrap"]["status"] == "failed"


def test_a_stage_that_produced_nothing_says_so_and_the_run_goes_on(root):
    with FakeOpenAIServer(responder=lambda req: "") as srv:
        r = cli(root, "run", "smoke", "--only", "10_bootstrap", *teacher(srv.url))
    assert r.returncode == 0, r.stderr[-3000:]
    line = next(l for l in r.stdout.splitlines() if "10_bootstrap: ok in" in l)
    assert "warning: 0 instructions kept" in line
    m = json.loads(next((root/"outputs").glob("smoke-*/10_bootstrap/metrics.json")).read_text())
    assert m["machine_instructions"] == 0 and m["warnings"] and m["warnings"][0].startswith("0 instructions kept")


def test_a_paper_scale_profile_refuses_the_tiny_model_up_front(root):
    r = cli(root, "run", "full", "--dry-run")
    line = one_error_line(r, "profile 'full' is paper-scale", "teacher_model (10_bootstrap, 11_classify, 12_instances, 20_distill)",
                          "judge_model (41_judge)", "-p paper_scale=False")
    assert not (root/"outputs").exists() or not list((root/"outputs").glob("full-*"))
    ok = cli(root, "run", "full", "--dry-run", "-p", "paper_scale=False")
    assert ok.returncode == 0 and "checks ok" in ok.stdout.splitlines()[-1], ok.stderr[-2000:]
    ok = cli(root, "run", "full", "--dry-run", "-p", "teacher_model=org/teacher", "-p", "assistant_model=org/assistant",
             "-p", "judge_model=org/judge", "-p", "44_experiment.student_model=org/student")
    assert ok.returncode == 0 and "checks ok" in ok.stdout.splitlines()[-1], ok.stderr[-2000:]


def test_sigkill_of_the_command_stops_every_request_and_resume_counts_them_all(root):
    env = {**os.environ, "SELFINSTRUCT_ROOT": str(root), "SELFINSTRUCT_DATA": str(MIRROR)}
    with FakeOpenAIServer(responder=SelfInstructResponder(), latency=0.02, rate_500=0.05, seed=3) as srv:
        args = [str(SCRIPT), "run", "smoke", "--only", "10_bootstrap", "--no-progress",
                "-p", "teacher_backend=openai", "-p", "teacher_model=teacher", "-p", f"teacher_base_url={srv.url}",
                "-p", 'teacher_api_key_env=""', "-p", 'cache=""', "-p", "num_instructions=100000",
                "-p", "10_bootstrap.max_rounds=250", "-p", "concurrency=8", "-p", "10_bootstrap.max_tokens=300"]
        p = subprocess.Popen(args, cwd=root, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             start_new_session=True)          # its own process group, as a shell gives a job
        t0 = time.time()
        while srv.requests < 60:                              # the kernel is up and sending
            assert p.poll() is None, p.communicate()[1][-3000:]
            assert time.time() - t0 < 240, "the stage sent too little in time"
            time.sleep(0.01)
        family = psutil.Process(p.pid).children(recursive=True)
        assert family, "no stage kernel under the command"
        os.killpg(p.pid, signal.SIGKILL); p.wait()           # what a shell's kill -9 %1 or a scheduler does
        at_kill = srv.requests
        time.sleep(2.0)
        assert srv.requests <= at_kill + 8                    # at most the requests already on the wire (concurrency)
        settled = srv.requests
        time.sleep(1.0)
        assert srv.requests == settled                        # and then nothing: no process is left to send
        assert not [c.pid for c in family if c.is_running() and c.status() != psutil.STATUS_ZOMBIE]

        run = next((root/"outputs").glob("smoke-*"))
        r = subprocess.run([*args, "--resume", str(run)], cwd=root, env=env, capture_output=True, text=True, timeout=600)
        assert r.returncode == 0, r.stderr[-3000:]
        server_calls = srv.requests
    m = json.loads((run/"10_bootstrap"/"metrics.json").read_text())
    llm, lost = m["llm"], m["llm"]["lost_calls"]
    # every call the server saw is in metrics.json; the only ones counted beyond them died with the process
    # (written to the call log before sending, killed before they left)
    assert 0 <= llm["backend_calls"] - server_calls <= lost["died"] <= 8, (llm["backend_calls"], server_calls, lost)
    assert lost["calls"] >= lost["died"] and lost["died_completion_tokens"] is None
    assert m["requests"] == 250 * m["params"]["requests_per_round"] and m["requests_failed"] == 0

"""SIGKILL of the real `selfinstruct-nb` command while `10_bootstrap` sends requests to the fault server (issue 17):
the stage kernel dies with the command, no request reaches the server after the kill, and the resumed run's
`metrics.json` counts every call the server saw (the calls that died unanswered are labelled so)."""
import json, os, shutil, signal, subprocess, sys, time
from pathlib import Path

import psutil
import pytest

sys.path.insert(0, str(Path(__file__).parent))
from fake_openai_server import FakeOpenAIServer
from responders import SelfInstructResponder

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

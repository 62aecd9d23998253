"""A crash names its cause: a stage whose kernel is killed by a signal fails with one line naming the signal and
what to check, and `run --dry-run` of a profile that generates with llama.cpp finds a crashing build in seconds."""
import importlib.util, json, os, signal, subprocess, sys
from pathlib import Path

import pytest

from selfinstruct_nb import gemma
from selfinstruct_nb.runner import ConfigError, run_profile
from selfinstruct_nb.sweep import _toy_project

SCRIPT = Path(sys.executable).parent/"selfinstruct-nb"


def add_stage(root: Path, name: str, params: str, body: str):
    "A stage notebook beside the toy project's two (the same shape: parameters cell, body, metrics)."
    nb = json.loads((root/"nbs"/"pipeline"/"10_make.ipynb").read_text())
    nb["cells"][1]["source"] = 'run_dir: str = "outputs/dev"  # the run folder\nseed: int = 0  # seed\n' + params
    nb["cells"][2]["source"] = body + f"\nfrom selfinstruct_nb import core\ncore.write_json(core.resolve(run_dir)/'{name}'/'metrics.json', {{}})"
    (root/"nbs"/"pipeline"/f"{name}.ipynb").write_text(json.dumps(nb, indent=1))


@pytest.fixture
def toy(tmp_path):
    return _toy_project(tmp_path/"proj")


@pytest.mark.parametrize("sig,hint", [("SIGSEGV", "python -m selfinstruct_nb.gemma check"), ("SIGKILL", "out-of-memory killer")])
def test_killed_kernel_names_its_signal(toy, sig, hint):
    add_stage(toy, "15_crash", 'sig: str = ""  # a signal the kernel sends itself', "import os, signal\nos.kill(os.getpid(), getattr(signal, sig))")
    env = {**os.environ, "SELFINSTRUCT_ROOT": str(toy)}
    r = subprocess.run([str(SCRIPT), "run", "toy", "-p", f"15_crash.sig={sig}", "--no-progress"], cwd=toy, env=env,
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 1, r.stdout + r.stderr
    err = [l for l in r.stderr.splitlines() if l.startswith("selfinstruct-nb:")]
    assert len(err) == 1 and f"stage 15_crash failed" in err[0] and f"its kernel died from {sig} (" in err[0], r.stderr
    assert hint in err[0] and "DeadKernelError" not in r.stderr and "Kernel died" not in r.stderr
    man = json.loads(next((toy/"outputs").glob("toy-*/manifest.json")).read_text())
    assert man["status"] == "failed" and sig in man["stages"]["15_crash"]["error"]


@pytest.mark.skipif(importlib.util.find_spec("llama_cpp") is None, reason="the [llamacpp] extra is not installed")
def test_dry_run_finds_a_crashing_llamacpp_build(toy, monkeypatch, tmp_path):
    "`--dry-run` generates once with each llamacpp model in a child process: here the child segfaults."
    model = tmp_path/"m.gguf"; model.write_bytes(b"x")
    add_stage(toy, "15_gen", f'backend: str = "llamacpp"  # backend\nmodel: str = "{model}"  # a GGUF', "")
    monkeypatch.setenv("SELFINSTRUCT_ROOT", str(toy))
    monkeypatch.setattr(gemma, "_PROBE", 'import json, os, signal; print(json.dumps({"system_info": "CPU : AMX_INT8 = 1 |"}), '
                        'flush=True); os.kill(os.getpid(), signal.SIGSEGV)')
    with pytest.raises(ConfigError) as e: run_profile("toy", dry_run=True, log=lambda s: None)
    msg = str(e.value)
    assert msg.startswith("15_gen.model: llama.cpp test generation") and "SIGSEGV" in msg and gemma.LLAMACPP_INSTALL in msg
    assert "\n" not in msg and not (toy/"outputs").exists()
    monkeypatch.setattr(gemma, "_PROBE", 'import json; print(json.dumps({"system_info": "CPU : AVX2 = 1 |"})); '
                        'print(json.dumps({"text": " ok", "completion_tokens": 2, "seconds": 0.1}))')
    lines = []
    run_profile("toy", dry_run=True, log=lines.append)
    assert lines[-1].endswith(f"; llama.cpp: {model} generated 2 tokens in 0.1 s"), lines[-1]

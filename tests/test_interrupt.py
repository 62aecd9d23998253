"""Ctrl-C reaches every phase of `selfinstruct-nb run`: SIGINT to the command's process group while a stage kernel
starts, while a cell runs, while the kernel shuts down, and with SIGINT inherited as ignored (a script's `cmd &`).
Each time the command exits 130, says how to resume, marks the run `interrupted` and leaves no kernel behind.
Every SIGINT is sent when the stage has reached the phase (a marker file it writes), never after a guessed sleep."""
import json, os, signal, subprocess, sys, time
from pathlib import Path

import pytest

from selfinstruct_nb.sweep import _toy_project

SCRIPT = Path(sys.executable).parent/"selfinstruct-nb"

WAIT_STAGE = """import atexit, os, pathlib, time
def _mark(): pathlib.Path(mark).write_text(str(os.getpid()))
if phase == "cell": _mark(); time.sleep(120)
if phase == "shutdown": atexit.register(lambda: (_mark(), time.sleep(120)))   # runs while the kernel shuts down
"""


def wait_for(cond, timeout, what):
    t = time.time()
    while time.time() - t < timeout:
        if (v := cond()): return v
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def alive(pid: int) -> bool:
    try: os.kill(pid, 0)
    except ProcessLookupError: return False
    return True


@pytest.fixture
def toy(tmp_path):
    root = _toy_project(tmp_path/"proj")
    nb = json.loads((root/"nbs"/"pipeline"/"10_make.ipynb").read_text())
    nb["cells"][1]["source"] = ('run_dir: str = "outputs/dev"  # the run folder\nseed: int = 0  # seed\n'
                                'phase: str = ""  # where to wait\nmark: str = ""  # marker file, written there')
    nb["cells"][2]["source"] = WAIT_STAGE + "from selfinstruct_nb import core\ncore.write_json(core.resolve(run_dir)/'15_wait'/'metrics.json', {})"
    (root/"nbs"/"pipeline"/"15_wait.ipynb").write_text(json.dumps(nb, indent=1))
    # a kernel that takes its time to start: it writes the marker, then waits before becoming the real kernel
    kdir = tmp_path/"jupyter"/"kernels"/"slow-start"; kdir.mkdir(parents=True)
    (kdir/"kernel.json").write_text(json.dumps({
        "argv": ["/bin/sh", "-c", f'echo $$ > "{tmp_path}/start.mark"; sleep 120; exec "{sys.executable}" -m ipykernel_launcher -f "$0"',
                 "{connection_file}"], "display_name": "slow start", "language": "python"}))
    return root


@pytest.mark.parametrize("phase", ["kernel start", "cell", "kernel shutdown", "cell, SIGINT ignored at start"])
def test_ctrl_c_in_every_phase(toy, tmp_path, phase):
    mark = tmp_path/("start.mark" if phase == "kernel start" else "wait.mark")
    stage_phase = {"kernel start": "start", "cell": "cell", "kernel shutdown": "shutdown"}[phase.split(",")[0]]
    args = ["run", "toy", "--no-progress", "-p", f"15_wait.phase={stage_phase}", "-p", f"15_wait.mark={mark}"]
    if phase == "kernel start": args += ["--only", "15_wait", "--kernel", "slow-start"]
    env = {**os.environ, "SELFINSTRUCT_ROOT": str(toy), "JUPYTER_PATH": str(tmp_path/"jupyter")}
    ignore = (lambda: signal.signal(signal.SIGINT, signal.SIG_IGN)) if "ignored" in phase else None
    p = subprocess.Popen([str(SCRIPT), *args], cwd=toy, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         start_new_session=True, preexec_fn=ignore)
    try:
        pid = int(wait_for(lambda: mark.exists() and mark.read_text().strip(), 240, f"the stage to reach {phase}"))
        t0 = time.time()
        os.killpg(p.pid, signal.SIGINT)
        out, err = p.communicate(timeout=90)
        seconds = time.time() - t0
    finally:
        if p.poll() is None: os.killpg(p.pid, signal.SIGKILL); p.wait()
    assert p.returncode == 130, out + err
    assert "selfinstruct-nb: interrupted" in err and "run interrupted: outputs/toy-" in out, out + err
    resume = out.split("continue with: ")[1].splitlines()[0]
    assert resume.startswith("selfinstruct-nb run toy --resume outputs/toy-") and "-p 15_wait.phase=" in resume
    assert seconds < 60, seconds   # not the 120 s the stage would have slept
    man = json.loads(next((toy/"outputs").glob("toy-*/manifest.json")).read_text())
    assert man["status"] == "interrupted" and man["stages"]["15_wait"]["status"] == "interrupted", man["stages"]
    wait_for(lambda: not alive(pid), 30, "the stage kernel to be gone")

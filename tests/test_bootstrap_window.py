"""The window schedule of the bootstrap against the fault-injecting test server: a SIGKILLed run that resumes to the
pool, the candidate rows and the accounting of an uninterrupted one; a rerun from the cache; two endpoints, one broken."""
from __future__ import annotations
import hashlib, json, os, signal, subprocess, sys, textwrap, time
from collections import Counter
from pathlib import Path

import pytest

from selfinstruct_nb import data
from selfinstruct_nb.bootstrap import bootstrap
from selfinstruct_nb.core import Task, read_jsonl, project_root
from selfinstruct_nb.llm import LLMClient, load_journal, make_backend

sys.path.insert(0, str(Path(__file__).parent))
from fake_openai_server import FakeOpenAIServer
from responders import SelfInstructResponder

ROOT = project_root()
ENV = {**os.environ, "SELFINSTRUCT_ROOT": str(ROOT)}
SETTINGS = dict(num_instructions=300, seed=0, requests_per_round=4, window=16, max_rounds=100, schedule="window")
FAULTS = dict(latency=0.003, rate_500=0.06, rate_429=0.04, seed=4)
TOTALS = ("backend_calls", "prompt_tokens", "completion_tokens", "retries")


@pytest.fixture(scope="module")
def seeds():
    return data.seed_tasks()


def client_for(url: str, cache, **kw) -> LLMClient:
    return LLMClient(make_backend("openai", "teacher", base_url=url, api_key_env=""), cache=cache, concurrency=8,
                     backoff_base=0.01, backoff_max=0.05, prices={"prompt": 0.5, "completion": 1.5}, **kw)


def pool(stage: Path) -> list[str]:
    return [t.instruction for t in read_jsonl(stage/"machine_instructions.jsonl", validate=Task.from_dict)]


RUNNER = textwrap.dedent(f"""
    import json, sys
    sys.path.insert(0, {str(Path(__file__).parent)!r})
    from test_bootstrap_window import client_for, SETTINGS
    from selfinstruct_nb import data
    from selfinstruct_nb.bootstrap import bootstrap
    url, out, cache = sys.argv[1:4]
    over = json.loads(sys.argv[4]) if len(sys.argv) > 4 else {{}}
    client = client_for(url, cache)
    s = bootstrap(client, data.seed_tasks(), out, progress=False, **{{**SETTINGS, **over}})
    print("STATS", json.dumps(client.stats), flush=True)
    print("DONE", s["kept"], flush=True)
""")


class Hold:
    "A responder that holds answers `first`..`last` (1-based calls) for `delay` seconds: requests caught in flight."
    def __init__(self, first: int, last: int, delay: float):
        self.responder, self.first, self.last, self.delay, self.calls = SelfInstructResponder(), first, last, delay, 0
    def __call__(self, req):
        self.calls += 1
        if self.first <= self.calls <= self.last: time.sleep(self.delay)
        return self.responder(req)


def per_request(journal: Path) -> dict:
    "id -> (attempts, usage, retries) of each journaled answer."
    return {i: (r.attempts, r.usage, r.retries, r.resent) for i, (_, r) in load_journal(journal).items()}


def test_sigkilled_window_run_resumes_to_the_same_pool_rows_and_totals(tmp_path, seeds):
    with FakeOpenAIServer(responder=SelfInstructResponder(), **FAULTS) as srv:
        ref_client = client_for(srv.url, tmp_path/"ref.sqlite")
        ref = bootstrap(ref_client, seeds, tmp_path/"ref", progress=False, **SETTINGS)
    assert ref["kept"] == 300 and ref["requests_failed"] == 0 and ref["stop_reason"] == "reached_n"

    hold = Hold(first=30, last=37, delay=4.0)    # 8 answers held: every worker waits on one when the kill comes
    with FakeOpenAIServer(responder=hold, **FAULTS) as srv:
        out, cache = tmp_path/"killed", tmp_path/"killed.sqlite"
        cmd = [sys.executable, "-c", RUNNER, srv.url, str(out), str(cache)]
        p = subprocess.Popen(cmd, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        t0 = time.time()
        while time.time() - t0 < 60 and p.poll() is None and hold.calls < 37: time.sleep(0.01)
        time.sleep(0.3)
        assert p.poll() is None, f"finished before it could be killed: {p.communicate()}"
        p.send_signal(signal.SIGKILL); p.wait()
        t_kill = time.monotonic()
        committed = len(read_jsonl(out/"rounds.jsonl", skip_torn_tail=True))
        assert 0 < committed < ref["requests"]                    # killed midway
        sent = {json.loads(l)["id"] for l in (out/"llm_journal.jsonl.sent").read_text().splitlines()}
        in_flight = sent - set(load_journal(out/"llm_journal.jsonl"))
        assert len(in_flight) == 8                               # the held ones, one per worker
        while time.monotonic() - t_kill < 30 and sum(t > t_kill for t, _ in srv.answers) < 8: time.sleep(0.05)
        t_resume = time.monotonic()                              # the held answers were written to a dead process
        p2 = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=120)
        assert p2.returncode == 0, p2.stderr[-2000:]
        assert "DONE 300" in p2.stdout
        server_calls, answers = srv.requests, list(srv.answers)
    stats = json.loads(next(l for l in p2.stdout.splitlines() if l.startswith("STATS"))[6:])

    # the bill: every call the server saw is in the totals, the killed process's included; so are the tokens of
    # every answer that reached a process; the 8 answers that came after the kill are counted as calls that died
    assert stats["backend_calls"] == server_calls
    read = [u for t, u in answers if not t_kill < t < t_resume]
    assert len(answers) - len(read) == 8
    assert (stats["prompt_tokens"], stats["completion_tokens"]) == \
        (sum(u["prompt_tokens"] for u in read), sum(u["completion_tokens"] for u in read))
    lost = stats["lost_calls"]
    assert lost["died"] == 8 and lost["calls"] >= 8 and lost["died_completion_tokens"] is None
    assert lost["died_prompt_tokens_est"] == sum(u["prompt_tokens"] for t, u in answers if t_kill < t < t_resume)

    # the identical pool, and every candidate row once, in the same order
    assert pool(out) == pool(tmp_path/"ref") and len(set(pool(out))) == 300
    assert read_jsonl(out/"candidates.jsonl") == read_jsonl(tmp_path/"ref"/"candidates.jsonl")
    assert [r["i"] for r in read_jsonl(out/"rounds.jsonl")] == list(range(ref["requests"]))
    # the same accounting, up to the requests in flight at the kill, which were really sent twice
    # (the requests in flight when the pool filled are journaled, not committed: timing decides how many, so they
    # are left out of the comparison, as the summary's `past_stop` leaves them out of the committed totals)
    mine, theirs = per_request(out/"llm_journal.jsonl"), per_request(tmp_path/"ref"/"llm_journal.jsonl")
    committed = {r["id"] for u in read_jsonl(out/"rounds.jsonl") for r in u["responses"]}
    assert len(committed) == ref["requests_committed"] and committed <= set(mine) and committed <= set(theirs)
    resent = {i for i, v in mine.items() if v[3]}
    assert resent == in_flight and stats["resent"] == len(in_flight) and resent <= committed
    assert stats["requests"] - len(set(mine) - committed) == ref_client.stats["requests"] - len(set(theirs) - committed)
    assert len(set(theirs) - committed) == ref["requests_past_stop"] and stats["requests"] == len(mine)
    assert ({i: mine[i][:3] for i in committed - resent} == {i: theirs[i][:3] for i in committed - resent})
    def minus(st, rows):   # totals without some requests' share, and without the killed process's lost calls
        lost = st["lost_calls"]
        out = {"backend_calls": st["backend_calls"] - lost["calls"] - sum(r[0] for r in rows),
               "prompt_tokens": st["prompt_tokens"] - lost["prompt_tokens"] - sum(r[1].get("prompt_tokens", 0) for r in rows),
               "completion_tokens": st["completion_tokens"] - lost["completion_tokens"]
                                    - sum(r[1].get("completion_tokens", 0) for r in rows),
               "retries": Counter(st["retries_by_reason"])}
        for r in rows: out["retries"].subtract(r[2])
        out["retries"] = +out["retries"]
        return out
    drop = lambda rows: [rows[i] for i in resent | (set(rows) - committed)]
    assert minus(stats, drop(mine)) == minus(ref_client.stats, drop(theirs))
    assert stats["resent_usage"]["backend_calls"] == sum(mine[i][0] for i in resent)
    assert ref_client.stats["retries"] > 0 and set(ref_client.stats["retries_by_reason"]) == {"http_500", "http_429"}
    cost = lambda st: st["est_cost_usd"] - (st["prompt_tokens"] * 0.5 + st["completion_tokens"] * 1.5) / 1000
    assert abs(cost(stats)) < 1e-6 and abs(cost(ref_client.stats)) < 1e-6


def test_rerun_from_the_cache_sends_nothing(tmp_path, seeds):
    with FakeOpenAIServer(responder=SelfInstructResponder(), latency=0.002, tail_rate=0.2, tail_latency=0.03) as srv:
        first = bootstrap(client_for(srv.url, tmp_path/"c.sqlite"), seeds, tmp_path/"a", progress=False,
                          **{**SETTINGS, "num_instructions": 120})
        n = srv.requests
        again = client_for(srv.url, tmp_path/"c.sqlite")
        second = bootstrap(again, seeds, tmp_path/"b", progress=False, **{**SETTINGS, "num_instructions": 120})
        assert srv.requests == n and again.stats["backend_calls"] == 0
    assert pool(tmp_path/"a") == pool(tmp_path/"b") and len(pool(tmp_path/"a")) == 120
    timing = ("requests_past_stop", "past_stop")    # what was in flight at the stop: apart from the committed totals
    assert {k: v for k, v in first.items() if k not in timing} == {k: v for k, v in second.items() if k not in timing}
    # nothing is sent once the pool is full: only requests already sent are completed (at most `window` + 1: those
    # the commits were waiting on), each one attempt here (no faults); the cached rerun has none at its stop
    assert first["requests_past_stop"] <= SETTINGS["window"] + 1
    assert first["past_stop"]["backend_calls"] == first["requests_past_stop"]
    assert second["requests_past_stop"] == 0 and second["past_stop"]["backend_calls"] == 0
    assert n == first["requests"] + first["requests_past_stop"]


def test_two_endpoints_one_broken(tmp_path, seeds):
    "One endpoint answers 500 to everything: it leaves the rotation, the run completes on the other, both are reported."
    with FakeOpenAIServer(rate_500=1.0) as bad, FakeOpenAIServer(responder=SelfInstructResponder()) as good:
        client = client_for(f"{bad.url},{good.url}", None)
        s = bootstrap(client, seeds, tmp_path/"run", progress=False, **{**SETTINGS, "num_instructions": 100})
        assert bad.counters["500"] == bad.requests >= 5
    assert s["kept"] == 100 and s["requests_failed"] == 0
    eps = client.stats["endpoints"]
    assert set(eps) == {bad.url, good.url}
    assert (eps[bad.url]["ok"], eps[bad.url]["failed"]) == (0, bad.requests)
    assert eps[bad.url]["circuit_opened"] >= 1 and not eps[bad.url]["in_rotation"]
    assert eps[good.url]["ok"] == good.requests == client.stats["requests"] and eps[good.url]["failed"] == 0
    assert eps[good.url]["mean_latency_s"] > 0 and eps[good.url]["p95_latency_s"] >= eps[good.url]["p50_latency_s"]
    assert client.stats["retries_by_reason"] == {"http_500": bad.requests}


def fail_once(req, attempt):
    "A third of the prompts get a 400 (not retried) the first time the server sees them, and an answer after that."
    return "400" if attempt == 0 and int(hashlib.sha256(req["prompt"].encode()).hexdigest(), 16) % 3 == 0 else None


def test_failed_requests_stay_failed_after_a_sigkill_resume(tmp_path, seeds):
    """A request that failed and was journaled, but not yet committed (behind a slower one) when the run was killed,
    is not sent again on resume, where it would now succeed: the resumed run builds the uninterrupted run's pool."""
    over = {"num_instructions": 200}
    with FakeOpenAIServer(responder=SelfInstructResponder(), fault_plan=fail_once) as srv:
        ref = bootstrap(client_for(srv.url, None), seeds, tmp_path/"ref", progress=False, **{**SETTINGS, **over})
    assert ref["kept"] == 200 and ref["requests_failed"] > 0
    ref_ids = {r["request_id"] for r in read_jsonl(tmp_path/"ref"/"candidates.jsonl")}

    hold = Hold(first=12, last=12, delay=4.0)
    with FakeOpenAIServer(responder=hold, fault_plan=fail_once) as srv:
        out = tmp_path/"killed"
        cmd = [sys.executable, "-c", RUNNER, srv.url, str(out), str(tmp_path/"killed.sqlite"), json.dumps(over)]
        p = subprocess.Popen(cmd, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        t0 = time.time()
        while time.time() - t0 < 60 and p.poll() is None and hold.calls < 12: time.sleep(0.01)
        time.sleep(1.0)                                           # the requests after the held one finish meanwhile
        assert p.poll() is None, f"finished before it could be killed: {p.communicate()}"
        p.send_signal(signal.SIGKILL); p.wait()
        committed = {r["id"] for u in read_jsonl(out/"rounds.jsonl", skip_torn_tail=True) for r in u["responses"]}
        waiting = {i for i, (_, r) in load_journal(out/"llm_journal.jsonl").items()
                   if not r.ok and i not in committed and i in ref_ids}
        assert waiting, "no failed request (of those the run commits) was waiting to be committed at the kill"
        p2 = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=120)
        assert p2.returncode == 0, p2.stderr[-2000:]
    assert pool(out) == pool(tmp_path/"ref")
    assert read_jsonl(out/"candidates.jsonl") == read_jsonl(tmp_path/"ref"/"candidates.jsonl")
    failed = {r["request_id"] for r in read_jsonl(out/"candidates.jsonl") if r["reason"] == "request_failed"}
    assert waiting <= failed                                      # still failures, as in the uninterrupted run


def test_black_hole_replica_costs_seconds_not_minutes(tmp_path, seeds):
    """One replica accepts connections and never answers: it is taken out after a short silence, the requests it
    held are hedged on the healthy one, and the run takes about as long as on the healthy replica alone (issue 17:
    it took 3-4x, each stuck request waiting the full timeout). The pool is the same."""
    from fake_openai_server import BlackHoleServer
    over = {**SETTINGS, "num_instructions": 200}
    times = {}
    with FakeOpenAIServer(responder=SelfInstructResponder(), latency=0.02) as good:
        for name, urls in (("alone", good.url), ("hole", None)):
            with BlackHoleServer() as hole:
                client = client_for(urls or f"{hole.url},{good.url}", None)
                t0 = time.perf_counter()
                s = bootstrap(client, seeds, tmp_path/name, progress=False, **over)
                times[name] = time.perf_counter() - t0
                assert s["kept"] == 200 and s["requests_failed"] == 0
                if name == "hole":
                    ep = client.stats["endpoints"][hole.url]
                    assert hole.connections >= 1 and ep["stalled"] >= 1 and ep["ok"] == 0
                    assert client.stats["retries_by_reason"].get("stalled", 0) == hole.connections
                    assert client.stats["backend_calls"] == good.requests - n_alone + hole.connections
            if name == "alone": n_alone = good.requests
    assert pool(tmp_path/"hole") == pool(tmp_path/"alone")
    # loose: the run took 3-4x; a stall costs one probe time (>= 1 s) on a run of a few seconds
    assert times["hole"] < 2.5 * times["alone"] + 3.0, times

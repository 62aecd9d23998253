"""`selfinstruct_nb.batch` (the OpenAI Batch API) against `fake_openai_server.py`'s `/v1/files` and `/v1/batches`:
a process SIGKILLed while its batch is in progress resumes by polling the same batch, and every request is
accounted for."""
import json, os, signal, subprocess, sys, textwrap, threading, time, uuid

import pytest

from fake_openai_server import FakeOpenAIServer
from selfinstruct_nb.batch import BatchClient, batch_line, batch_state_path, load_batch_state
from selfinstruct_nb import core
from selfinstruct_nb.core import JsonlAppender
from selfinstruct_nb.llm import LLMClient, LLMRequest, ResponseCache, load_journal, make_backend, request_key

N_CHAT, N_TEXT = 40, 20

SCRIPT = textwrap.dedent("""
    import json, sys
    from selfinstruct_nb.batch import BatchClient
    from selfinstruct_nb.llm import LLMClient, LLMRequest, make_backend
    url, cache, journal, out = sys.argv[1:5]
    reqs = [LLMRequest(f"a{i}", messages=[{"role": "user", "content": f"Answer question {i} briefly."}],
                       params={"max_tokens": 10}) for i in range(%d)]
    reqs += [LLMRequest(f"s{i}", prompt=f"Rate answer {i} from 1 to 10:", params={"max_tokens": 4}) for i in range(%d)]
    client = LLMClient(make_backend("openai", "fake", base_url=url, api_key_env=""), cache=cache)
    res = BatchClient(client, poll_interval=0.05).run(reqs, journal=journal, progress=False)
    json.dump({"results": [[r.id, r.status, r.reason, r.text] for r in res], "stats": client.stats}, open(out, "w"))
""" % (N_CHAT, N_TEXT))


def line_fault(body: dict):
    "Per-line errors: question 7 gets a 500, answer 3's rating a 400."
    text = json.dumps(body)
    return "500" if "question 7 " in text else "400" if "answer 3 " in text else None


def _wait(cond, timeout=60.0, what=""):
    t0 = time.monotonic()
    while not cond():
        if time.monotonic() - t0 > timeout: raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def test_sigkill_in_progress_resumes_same_batch(tmp_path):
    cache, journal, out = tmp_path/"c.sqlite", tmp_path/"run.jsonl", tmp_path/"out.json"
    argv = [sys.executable, "-c", SCRIPT, None, str(cache), str(journal), str(out)]
    with FakeOpenAIServer(batch_hold=True, batch_line_fault=line_fault) as srv:
        argv[3] = srv.url
        p = subprocess.Popen(argv, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:   # two batches (chat, completions) in progress, and the client has polled them a few times
            _wait(lambda: len(srv.batches) == 2 and all(b["status"] == "in_progress" for b in srv.batches.values())
                  and srv.batch_counters["batch_retrieves"] >= 4 or p.poll() is not None, what="batches in progress")
            assert p.poll() is None, p.stderr.read().decode()[-2000:]
        finally: p.send_signal(signal.SIGKILL); p.wait()
        assert not out.exists()
        assert dict(srv.batch_counters)["batches_created"] == 2 and srv.batch_counters["files_created"] == 2
        state = load_batch_state(batch_state_path(journal))
        assert sorted(s["batch_id"] for s in state) == sorted(srv.batches) and not any(s["collected"] for s in state)
        assert not load_journal(journal)                      # no result yet
        srv.release_batches()
        r = subprocess.run(argv, cwd=tmp_path, capture_output=True, timeout=120)
        assert r.returncode == 0, r.stderr.decode()[-2000:]
        counters = dict(srv.batch_counters)
    assert (counters["batches_created"], counters["files_created"]) == (2, 2)   # polled the same batches, paid once
    assert counters["batch_lines"] == N_CHAT + N_TEXT
    got = json.load(open(out))
    res, st = got["results"], got["stats"]
    assert [x[0] for x in res] == [f"a{i}" for i in range(N_CHAT)] + [f"s{i}" for i in range(N_TEXT)]
    failed = {x[0]: x[2] for x in res if x[1] == "failed"}
    assert failed == {"a7": "http_500", "s3": "http_400"}
    assert st["ok"] + st["failed"] == st["requests"] == N_CHAT + N_TEXT and st["failed"] == 2
    assert all(x[3] and x[3].startswith("echo ") for x in res if x[1] == "ok")
    assert len(load_journal(journal)) == N_CHAT + N_TEXT
    assert len(ResponseCache(cache)) == N_CHAT + N_TEXT - 2
    assert all(s["collected"] for s in load_batch_state(batch_state_path(journal)))


def test_upload_journaled_before_kill_is_not_uploaded_again(tmp_path):
    "A run killed after the upload was journaled: the next run finds the batch by its file, or creates it from the file."
    reqs = [LLMRequest(f"r{i}", prompt=f"Task {i}:", params={"max_tokens": 5}) for i in range(6)]
    with FakeOpenAIServer() as srv:
        client = LLMClient(make_backend("openai", "fake", base_url=srv.url, api_key_env=""), cache=None)
        bc = BatchClient(client, poll_interval=0.02)
        for name, also_create in (("created", True), ("uploaded", False)):
            journal = tmp_path/f"{name}.jsonl"
            # what the killed run did: upload, journal the upload, (maybe) create the batch, die before journaling it
            lines = [batch_line(client.backend, r, request_key(client.backend, r)) for r in reqs]
            f = client.backend.client.files.create(file=("x.jsonl", "".join(json.dumps(l) + "\n" for l in lines).encode()),
                                                   purpose="batch")
            with JsonlAppender(batch_state_path(journal)) as w:
                w.append({"event": "uploaded", "file_id": f.id, "endpoint": "/v1/completions",
                          "keys": [l["custom_id"] for l in lines]})
            if also_create: client.backend.client.batches.create(input_file_id=f.id, endpoint="/v1/completions",
                                                                 completion_window="24h")
            before = dict(srv.batch_counters)
            out = bc.run(reqs, journal=journal, progress=False)
            assert [r.status for r in out] == ["ok"] * 6
            assert srv.batch_counters["files_created"] == before["files_created"]            # not uploaded again
            assert srv.batch_counters["batches_created"] == before["batches_created"] + (0 if also_create else 1)


def test_cancelled_batch_fails_its_requests(tmp_path):
    reqs = [LLMRequest(f"r{i}", prompt=f"Task {i}:") for i in range(4)]
    with FakeOpenAIServer(batch_validating=0.5) as srv:
        client = LLMClient(make_backend("openai", "fake", base_url=srv.url, api_key_env=""), cache=None)
        oc = client.backend.client
        def cancel_soon():
            _wait(lambda: srv.batches, what="a batch")
            oc.batches.cancel(next(iter(srv.batches)))
        t = threading.Thread(target=cancel_soon); t.start()
        out = BatchClient(client, poll_interval=0.02).run(reqs, journal=tmp_path/"j.jsonl", progress=False)
        t.join()
    assert [r.reason for r in out] == ["batch_cancelled"] * 4
    assert client.stats["ok"] + client.stats["failed"] == 4


def test_stage_41_judge_through_the_batch_api(tmp_path):
    "Stage 41 with use_batch_api: the same totals as the synchronous test, no completion call, one batch."
    pm = pytest.importorskip("papermill")
    from test_judge import CANDIDATE, REF_SCORE, ROOT, cand_score, consistent_judge
    n = 4
    answers = tmp_path/"answers.jsonl"
    core.write_jsonl(answers, [{"question_id": q, "answer_id": f"a{q}", "model_id": "student", "text": f"{CANDIDATE} {q}"}
                               for q in range(1, n + 1)])
    run_dir = tmp_path/"run"
    with FakeOpenAIServer(responder=consistent_judge) as srv:
        pm.execute_notebook(str(ROOT/"nbs/pipeline/41_judge.ipynb"), str(tmp_path/"out.ipynb"), kernel_name="selfinstruct-nb",
                            cwd=str(tmp_path), progress_bar=False,
                            parameters=dict(run_dir=str(run_dir), judge_backend="openai", judge_model=f"fake-judge-{uuid.uuid4().hex[:8]}",
                                            judge_base_url=srv.url, judge_api_key_env="", candidate_answers=str(answers), limit=n,
                                            reference_model="gpt35", both_orders=True, judge_max_tokens=0,
                                            use_batch_api=True, batch_poll_interval=0.05))
        assert srv.requests == 0                                   # nothing sent one by one
        assert (srv.batch_counters["batches_created"], srv.batch_counters["batch_lines"]) == (1, 2 * n)
    m = json.loads((run_dir/"41_judge/metrics.json").read_text())
    scored = [q for q in range(1, n + 1) if q % 4 != 0]
    assert (m["requests"], m["request_failed"], m["parsed"]) == (2 * n, 0, 2 * len(scored))
    assert m["totals"] == {"student": 2.0 * sum(cand_score(q) for q in scored), "gpt35": 2.0 * REF_SCORE * len(scored)}
    assert m["llm_stats"]["backend_calls"] == 2 * n
    assert len(load_batch_state(batch_state_path(run_dir/"41_judge/journal_reviews.jsonl"))) == 1


@pytest.mark.parametrize("step", ["upload", "create", "retrieve", "content", "all"])
def test_a_lost_answer_at_any_step_never_bills_a_line_twice(tmp_path, step):
    """The server does the work and the connection drops before its answer (issue 17: a lost answer to
    `batches.create` made a second batch from the same file and billed its lines twice). Each step's first answer is
    lost (or every step's, `all`); the run still gets every result, from one batch per endpoint, each line billed once."""
    routes = {"upload": ("POST", lambda p: p == "/v1/files"), "create": ("POST", lambda p: p == "/v1/batches"),
              "retrieve": ("GET", lambda p: p.startswith("/v1/batches/")),
              "content": ("GET", lambda p: p.startswith("/v1/files/") and p.endswith("/content"))}
    dropped = set()
    def drop(method, path):
        for name, (m, match) in routes.items():
            if (step in (name, "all")) and m == method and match(path) and name not in dropped:
                dropped.add(name); return True
        return False
    reqs = [LLMRequest(f"r{i}", prompt=f"Task {i}:", params={"max_tokens": 5}) for i in range(20)]
    with FakeOpenAIServer(batch_drop=drop) as srv:
        client = LLMClient(make_backend("openai", "fake", base_url=srv.url, api_key_env=""), cache=None,
                           backoff_base=0.01, backoff_max=0.02)
        res = BatchClient(client, poll_interval=0.05).run(reqs, journal=tmp_path/"j.jsonl", progress=False)
        counters = dict(srv.batch_counters)
    assert dropped == (set(routes) if step == "all" else {step})     # the fault happened
    assert counters["dropped_answers"] == len(dropped)
    assert all(r.ok for r in res) and client.stats["ok"] == 20
    assert counters["batches_created"] == 1 and counters["batch_lines"] == 20   # one batch, each line billed once
    assert counters["files_created"] == 1 + (step in ("upload", "all"))          # a lost upload leaves an unused file

"""Self-Instruct's generation stages end to end against the fault-injecting OpenAI-compatible test server:
bootstrap to 300 instructions, classification, instances, a SIGKILLed run that resumes, and the pipeline notebooks."""
from __future__ import annotations
import json, os, signal, subprocess, sys, textwrap, time
from collections import Counter
from pathlib import Path

import pytest
from rouge_score import rouge_scorer

from selfinstruct_nb import data
from selfinstruct_nb.bootstrap import bootstrap
from selfinstruct_nb.classify import classify_instructions, clf_counts
from selfinstruct_nb.core import Task, read_jsonl, project_root
from selfinstruct_nb.filters import filter_stage
from selfinstruct_nb.analysis import analyze_set, load_instruction_set
from selfinstruct_nb.instances import generate_instances, instance_counts
from selfinstruct_nb.llm import LLMClient, make_backend
from selfinstruct_nb.prompts import clf_examples_from_seeds
from selfinstruct_nb.rouge import RougeL

sys.path.insert(0, str(Path(__file__).parent))
from fake_openai_server import FakeOpenAIServer
from responders import SelfInstructResponder, is_classification_text, labels_of

ROOT = project_root()
ENV = {**os.environ, "SELFINSTRUCT_ROOT": str(ROOT)}   # conftest.py sets SELFINSTRUCT_DATA


@pytest.fixture(scope="module")
def seeds():
    return data.seed_tasks()


def client_for(url: str, cache, **kw) -> LLMClient:
    return LLMClient(make_backend("openai", "teacher", base_url=url, api_key_env=""), cache=cache,
                     backoff_base=0.01, backoff_max=0.05, **kw)


def machine_pool(stage_dir: Path) -> list[str]:
    return [t.instruction for t in read_jsonl(stage_dir/"machine_instructions.jsonl", validate=Task.from_dict)]


def test_three_stages_reach_300(tmp_path, seeds):
    "Bootstrap to N=300 through a server that drops, rate-limits and garbles some answers; then classify and instances."
    with FakeOpenAIServer(responder=SelfInstructResponder(), latency=0.002, rate_429=0.05, rate_500=0.03,
                          rate_malformed=0.02, seed=1) as srv:
        client = client_for(srv.url, tmp_path/"llm.sqlite")
        run = tmp_path/"run"
        s = bootstrap(client, seeds, run/"10_bootstrap", num_instructions=300, seed=0, max_rounds=100, progress=False)
        assert (s["kept"], s["stop_reason"]) == (300, "reached_n")
        assert s["requests_failed"] == 0        # faults were retried (checked below that they happened)
        rows = read_jsonl(run/"10_bootstrap"/"candidates.jsonl")
        assert len(rows) == s["candidates"] + s["requests_failed"] + s["requests_without_items"]
        assert sum(r["kept"] for r in rows) == 300
        assert s["dropped"] == sum(s["dropped_by_reason"].values())
        assert {"rouge_similar", "keyword", "too_short", "write_a_program"} <= set(s["dropped_by_reason"])
        pool = machine_pool(run/"10_bootstrap")
        assert len(pool) == len(set(pool)) == 300
        assert not any("Here are" in x or "\n" in x for x in pool)
        # the pool filter held: no kept instruction has ROUGE-L >= 0.7 with a seed or an earlier kept one
        rouge = RougeL()
        seed_instr = [" ".join(t.instruction.split()) for t in seeds]
        assert all(rouge.max_scores([x], seed_instr + pool[:i])[0] < 0.7 for i, x in enumerate(pool))
        scorer = rouge_scorer.RougeScorer(["rougeL"])     # and, for the last 15, with the reference scorer itself
        assert all(scorer.score(y, x)["rougeL"].fmeasure < 0.7 for i, x in enumerate(pool[-15:], 285)
                   for y in seed_instr + pool[:i])

        recs = classify_instructions(client, pool, clf_examples_from_seeds(seeds), run/"11_classify"/"is_classification.jsonl")
        counts = clf_counts(recs)
        assert counts["instructions"] == 300 and counts["ok"] == 300
        assert [r["is_classification"] for r in recs] == [is_classification_text(x) for x in pool]
        assert 0 < counts["classification"] < 300

        tasks = read_jsonl(run/"10_bootstrap"/"machine_instructions.jsonl", validate=Task.from_dict)
        labels = {r["instruction"]: r["is_classification"] for r in recs}
        for t in tasks: t.is_classification = labels[t.instruction]
        done, gens = generate_instances(client, tasks, run/"12_instances")
        ic = instance_counts(gens)
        assert ic["tasks"] == 300 and ic["failed"] == 0 and ic["with_instances"] == 300
        saved = read_jsonl(run/"12_instances"/"tasks.jsonl", validate=Task.from_dict)
        assert [t.id for t in saved] == [t.id for t in tasks]
        for t in saved:
            assert t.source == "machine" and t.instances and t.generation is not None
            if t.is_classification:   # output-first: one instance per label, labels balanced
                assert [x.output for x in t.instances] == labels_of(t.instruction)
        assert min(srv.counters[k] for k in ("429", "500", "malformed")) > 0 and client.stats["failed"] == 0
        # the next stage reads these outputs
        m = filter_stage(run, figures_dir=tmp_path/"figs")
        assert m["instructions"]["kept"] == 300 and m["kept_tasks"] > 0
        # and the analysis of the generated set (Table 1, Figures 2-4)
        generated = load_instruction_set("generated", str(run))
        res = analyze_set("generated", generated, seeds, tmp_path/"analysis")
        assert res.stats["instructions"] == len(generated) == m["kept_tasks"]
        assert res.stats["instances"] == m["kept_instances"]
        assert len(res.scores) == len(generated) and (res.scores < 0.7).all()  # the pool filter kept them under 0.7
        assert {f"generated_{k}.png" for k in ("verb_noun", "rouge_to_seed", "lengths")} <= {p.name for p in res.files}


def test_chat_and_number_styles(tmp_path, seeds):
    "Chat replies (preamble, blank lines, closing remark) and the released code's `9.` lists parse cleanly."
    with FakeOpenAIServer(responder=SelfInstructResponder()) as srv:
        client = client_for(srv.url, None)
        s = bootstrap(client, seeds, tmp_path/"chat", num_instructions=30, chat=True, progress=False)
        assert s["kept"] == 30 and s["requests_without_items"] == 0
        pool = machine_pool(tmp_path/"chat")
        assert not any(x.startswith(("Here are", "Let me know", "Task")) for x in pool)
        s = bootstrap(client, seeds, tmp_path/"number", num_instructions=30, style="number", progress=False)
        assert s["kept"] == 30
        assert not any(x[:1].isdigit() for x in machine_pool(tmp_path/"number"))


RUNNER = textwrap.dedent("""
    import sys
    from selfinstruct_nb import data
    from selfinstruct_nb.bootstrap import bootstrap
    from selfinstruct_nb.llm import LLMClient, make_backend
    url, out, cache = sys.argv[1:4]
    client = LLMClient(make_backend("openai", "teacher", base_url=url, api_key_env=""), cache=cache)
    s = bootstrap(client, data.seed_tasks(), out, num_instructions=300, seed=0, max_rounds=100, schedule="step",
                  progress=False)
    print("DONE", s["kept"], flush=True)
""")


class SlowSteps:
    "A responder that holds the answers to calls `first`..`last` (1-based) for `delay` seconds: a step caught in flight."
    def __init__(self, responder, first: int, last: int, delay: float):
        self.responder, self.first, self.last, self.delay, self.calls = responder, first, last, delay, 0
    def __call__(self, req):
        self.calls += 1
        if self.first <= self.calls <= self.last: time.sleep(self.delay)
        return self.responder(req)


def test_sigkill_resume(tmp_path, seeds):
    "A step-schedule bootstrap SIGKILLed in the middle of a step and restarted ends with the pool an uninterrupted run makes."
    with FakeOpenAIServer(responder=SelfInstructResponder()) as srv:
        ref = bootstrap(client_for(srv.url, tmp_path/"ref.sqlite"), seeds, tmp_path/"ref", num_instructions=300,
                        seed=0, max_rounds=100, schedule="step", progress=False)
        ref_requests = srv.requests
    slow = SlowSteps(SelfInstructResponder(), first=27, last=32, delay=3.0)   # step 3 (8 requests a step): 2 answered, 6 held
    with FakeOpenAIServer(responder=slow) as srv:
        out, cache = tmp_path/"killed", tmp_path/"killed.sqlite"
        cmd = [sys.executable, "-c", RUNNER, srv.url, str(out), str(cache)]
        p = subprocess.Popen(cmd, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        journal, t0 = out/"rounds.jsonl", time.time()
        while time.time() - t0 < 60 and p.poll() is None and slow.calls < 32:
            time.sleep(0.01)
        time.sleep(0.2)
        assert p.poll() is None, f"finished before it could be killed: {p.communicate()}"
        p.send_signal(signal.SIGKILL); p.wait()
        assert journal.read_bytes().count(b"\n") == 3                      # steps 0-2 journaled, step 3 in flight
        p2 = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=120)
        assert p2.returncode == 0, p2.stderr[-2000:]
        assert "DONE 300" in p2.stdout
        total = srv.requests
    assert machine_pool(out) == machine_pool(tmp_path/"ref")
    assert len(set(machine_pool(out))) == 300
    assert read_jsonl(out/"candidates.jsonl") == read_jsonl(tmp_path/"ref"/"candidates.jsonl")
    assert [r["step"] for r in read_jsonl(out/"rounds.jsonl")] == list(range(ref["rounds"]))
    # only the step in flight was asked again: its 2 finished answers came from the journal, the 6 held ones were redone
    assert total == ref_requests + 6


@pytest.mark.slow
def test_pipeline_notebooks(tmp_path):
    """Stages 10, 11 and 12 as papermill notebooks against the test server (the openai backend, chat off); stage 10 is
    given two endpoints, one of which answers 500 to everything."""
    pm = Path(sys.executable).parent/"papermill"
    with FakeOpenAIServer(responder=SelfInstructResponder()) as srv, FakeOpenAIServer(rate_500=1.0) as bad:
        common = ["-p", "run_dir", str(tmp_path/"run"), "-p", "teacher_backend", "openai", "-p", "teacher_model", "teacher",
                  "-p", "teacher_api_key_env", "", "-p", "cache", str(tmp_path/"llm.sqlite")]
        for stage, extra in [("10_bootstrap", ["-p", "num_instructions", "25", "-p", "max_rounds", "10",
                                               "-p", "teacher_base_url", f"{bad.url},{srv.url}"]),
                             ("11_classify", ["-p", "teacher_base_url", srv.url]),
                             ("12_instances", ["-p", "teacher_base_url", srv.url, "-p", "max_tokens", "0"])]:
            r = subprocess.run([str(pm), str(ROOT/"nbs"/"pipeline"/f"{stage}.ipynb"), str(tmp_path/f"{stage}.ipynb"),
                                "-k", "python3", "--log-level", "WARNING", *common, *extra],
                               env=ENV, capture_output=True, text=True, timeout=300)
            assert r.returncode == 0, r.stderr[-3000:]
    m10 = json.loads((tmp_path/"run"/"10_bootstrap"/"metrics.json").read_text())
    m11 = json.loads((tmp_path/"run"/"11_classify"/"metrics.json").read_text())
    m12 = json.loads((tmp_path/"run"/"12_instances"/"metrics.json").read_text())
    assert (m10["kept"], m10["stop_reason"]) == (25, "reached_n")
    assert m11["instructions"] == 25 and m11["ok"] == 25
    assert m12["tasks"] == 25 and m12["with_instances"] == 25
    assert (tmp_path/"run"/"figures"/"bootstrap_pool_growth.png").exists()
    assert m10["llm"]["failed"] == m11["llm"]["failed"] == m12["llm"]["failed"] == 0
    assert m10["params"]["schedule"] == "window"
    eps = m10["llm"]["endpoints"]
    assert set(eps) == {bad.url, srv.url} and eps[bad.url]["ok"] == 0 and eps[srv.url]["ok"] == m10["llm"]["requests"]
    assert m10["llm"]["retries_by_reason"] == {"http_500": eps[bad.url]["failed"]} and eps[bad.url]["circuit_opened"] >= 1

"""LLM-as-judge: the review parser on every released GPT-4 review and on broken ones, `judge_pairs` against a real
loopback OpenAI-compatible server whose replies we choose, position-flip counting, and stage 41_judge end to end."""
from __future__ import annotations
import json, re, sys, uuid
from collections import Counter
from pathlib import Path

import pytest

from selfinstruct_nb import core, judge
from selfinstruct_nb.llm import LLMClient, make_backend

sys.path.insert(0, str(Path(__file__).parent))
from fake_openai_server import FakeOpenAIServer  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
CANDIDATE = "CANDIDATE ANSWER"


# ---------------------------------------------------------------- the parser on real and broken review texts
@pytest.fixture(scope="module")
def released():
    return judge.released_reviews()


def test_parser_reproduces_every_released_score(released):
    assert len(released) == 720 and released.file.nunique() == 9
    bad = released[~released.agrees]
    assert bad.empty, bad[["file", "question_id", "score_1", "score_2", "parsed_1", "parsed_2"]].to_string()
    # FastChat's own parser fails exactly on the math reviews (the score tuple comes after the solution)
    strict_failed = released[~released.strict_agrees]
    assert len(strict_failed) == 27 and set(strict_failed.category) == {"math"}
    assert set(released[released.method.isin(["tuple", "labelled"])].category) == {"math"}


def test_released_totals_match_the_score_field(released):
    t = judge.released_totals(released)
    for f, g in released.groupby("file"):
        row = t.set_index("file").loc[f]
        assert row.total_1 == g.score_1.sum() and row.total_2 == g.score_2.sum() and row.n == 80
        assert row.relative_2_vs_1 == pytest.approx(100 * g.score_2.sum() / g.score_1.sum())


@pytest.mark.parametrize("text", ["", "   \n", "garbage", "8", "8\n7", "8 7 6", "-1 -1", "11 3", "0 12",
                                  "Both answers are good, 2 of them cite 3 sources.",
                                  "Assistant 1:\nx = 6.\n\nAssistant 2:\nf(2) = 5(2)^3 - 2(2) + 3",
                                  "Assistant 1 is better.\nAssistant 2 is verbose.", None])
def test_parser_rejects_broken_reviews(text):
    p = judge.parse_pair_scores(text)
    assert not p.ok and p.scores is None and p.method == "failed" and p.error
    assert judge.fastchat_parse_score(text or "") == [-1, -1] or text in ("11 3", "0 12")  # FastChat has no range check


def test_parser_reads_common_variants():
    cases = {"8/10 and 7/10\nwhy": (8, 7), "Assistant 1: 8, Assistant 2: 7": (8, 7), "Assistant 2: 7; Assistant 1: 8": (8, 7),
             "**8 7**": (8, 7), "Scores: 9.5 vs 6": (9.5, 6), "Long review.\nThe output tuple is (3, 9).": (3, 9)}
    for text, want in cases.items(): assert judge.parse_pair_scores(text).scores == want, text


# ---------------------------------------------------------------- judging through a real HTTP server
def _user(req: dict) -> str:
    return "\n".join(m["content"] for m in req["messages"] if m["role"] == "user")


def _case(req: dict) -> tuple[int, bool]:
    "(question id, whether the candidate sits in position 1) of a judge request."
    text = _user(req)
    qid = int(re.search(rf"{CANDIDATE} (\d+)", text).group(1))
    first = text.split("[The End of Assistant 1's Answer]")[0]
    return qid, CANDIDATE in first


def cand_score(qid: int) -> int: return 1 + qid % 9
REF_SCORE = 6


def consistent_judge(req: dict) -> str:
    "Scores the candidate 1 + qid % 9 and the reference 6 in any order, in four formats; qid % 4 == 0 is garbage."
    qid, cand_first = _case(req)
    s1, s2 = (cand_score(qid), REF_SCORE) if cand_first else (REF_SCORE, cand_score(qid))
    return {0: "I think both assistants did their best here.",
            1: f"{s1} {s2}\nAssistant 1 ...",
            2: f"Assistant 1: {s1}/10, Assistant 2: {s2}/10\nThe first ...",
            3: f"First, let me solve the problem.\nf(2) = 5(2)^3 = 40\n\nScores:\nAssistant 1: {s1}\nAssistant 2: {s2}\n"}[qid % 4]


def first_position_judge(req: dict) -> str:
    return "9 5\nAssistant 1 is clearly better."


def _questions(n):
    return [{"question_id": i, "text": f"Question {i}?", "category": ["generic", "coding", "math"][i % 3]} for i in range(1, n + 1)]


def _client(srv, **kw):
    backend = make_backend("openai", f"fake-judge-{uuid.uuid4().hex[:8]}", base_url=srv.url, api_key_env="")
    return LLMClient(backend, cache=None, concurrency=4, max_retries=1, backoff_base=0.01, **kw)


def test_judge_pairs_totals_and_failures_match_the_responder():
    qs = _questions(12)
    cand = {q["question_id"]: f"{CANDIDATE} {q['question_id']}" for q in qs}
    ref = {q["question_id"]: f"Reference answer {q['question_id']}" for q in qs}
    del cand[12]                                   # a question the candidate did not answer: not judged
    # question 5 with the candidate first always gets HTTP 500: a failed request, not a score
    plan = lambda req, attempt: "500" if _case(req) == (5, True) else None
    with FakeOpenAIServer(responder=consistent_judge, fault_plan=plan) as srv:
        client = _client(srv)
        reviews = judge.judge_pairs(client, qs, cand, ref, "student", "gpt35", both_orders=True)
        counters = srv.snapshot()
    s = judge.judge_summary(reviews, "student", "gpt35")
    judged = [q for q in range(1, 12)]
    assert s["requests"] == 2 * len(judged) == len(reviews)
    assert s["request_failed"] == 1
    assert s["request_failed_reasons"] == {"http_500": 1}
    failed = next(r for r in reviews if r["status"] != "ok")
    assert failed["id"] == "q5-candidate_first" and failed["error"].endswith("(after 2 attempts)") and failed["scores"] is None
    assert counters == {"ok": 2 * len(judged) - 1, "500": 2}   # one retry of the failing request
    garbage = [q for q in judged if q % 4 == 0]
    assert s["parse_failed"] == 2 * len(garbage)
    scored = [(q, o) for q in judged for o in judge.ORDERS if q % 4 != 0 and (q, o) != (5, "candidate_first")]
    assert s["parsed"] == len(scored)
    assert s["totals"] == {"student": float(sum(cand_score(q) for q, _ in scored)), "gpt35": float(REF_SCORE * len(scored))}
    assert s["relative_score"] == pytest.approx(100 * s["totals"]["student"] / s["totals"]["gpt35"])
    assert s["parse_methods"] == {"first_line": sum(q % 4 == 1 for q, _ in scored),
                                  "first_line_labelled": sum(q % 4 == 2 for q, _ in scored),
                                  "labelled": sum(q % 4 == 3 for q, _ in scored)}
    # a consistent judge never flips; the per-order totals add up
    assert s["position"]["flips"] == 0
    assert s["position"]["questions_both_orders"] == len([q for q in judged if q % 4 != 0 and q != 5])
    po = s["per_order"]
    assert po["candidate_first"]["totals"]["student"] + po["reference_first"]["totals"]["student"] == s["totals"]["student"]
    # every record says who sat where; the reviewer follows the category
    r = next(r for r in reviews if r["id"] == "q3-reference_first")
    assert (r["assistant_1"], r["assistant_2"], r["reviewer_id"]) == ("gpt35", "student", "gpt-4-0328-default")
    assert next(r for r in reviews if r["question_id"] == 2)["reviewer_id"] == "gpt-4-0328-math"
    assert r["scores"] == {"student": cand_score(3), "gpt35": REF_SCORE}


def test_flip_rate_is_100_percent_for_a_judge_that_prefers_position_1():
    qs = _questions(6)
    cand = {q["question_id"]: f"{CANDIDATE} {q['question_id']}" for q in qs}
    ref = {q["question_id"]: f"Reference {q['question_id']}" for q in qs}
    with FakeOpenAIServer(responder=first_position_judge) as srv:
        reviews = judge.judge_pairs(_client(srv), qs, cand, ref, "student", "gpt35", both_orders=True)
    pos = judge.position_consistency(reviews)
    assert pos == {"questions_both_orders": 6, "flips": 6, "flip_rate": 1.0, "position_1_wins": 12,
                   "position_2_wins": 0, "ties": 0, "position_1_win_rate": 1.0}
    s = judge.judge_summary(reviews, "student", "gpt35")
    assert s["totals"] == {"student": 6 * (9 + 5.0), "gpt35": 6 * (9 + 5.0)} and s["relative_score"] == 100.0
    assert s["per_order"]["candidate_first"]["relative_score"] == pytest.approx(180.0)


def test_one_order_only():
    qs = _questions(3)
    cand = {q["question_id"]: f"{CANDIDATE} {q['question_id']}" for q in qs}
    with FakeOpenAIServer(responder=first_position_judge) as srv:
        reviews = judge.judge_pairs(_client(srv), qs, cand, cand | {1: "x", 2: "y", 3: "z"}, "student", "gpt35", both_orders=False)
    assert [r["order"] for r in reviews] == ["candidate_first"] * 3
    assert judge.position_consistency(reviews)["flip_rate"] is None


def test_single_grading_counts_parse_failures():
    qs = _questions(4)
    answers = {q["question_id"]: f"{CANDIDATE} {q['question_id']}" for q in qs}
    def grader(req):
        qid = int(re.search(rf"{CANDIDATE} (\d+)", _user(req)).group(1))
        return "No idea." if qid == 4 else f"Fine. Rating: [[{qid + 4}]]"
    with FakeOpenAIServer(responder=grader) as srv:
        grades = judge.grade_single(_client(srv), qs, answers, "student", reference_answers={2: "ref two"})
    assert [g["rating"] for g in grades] == [5.0, 6.0, 7.0, None]
    assert [g["judge_prompt"] for g in grades] == ["single-v1", "single-math-v1", "single-v1", "single-v1"]
    assert judge.single_summary(grades) == {"requests": 4, "request_failed": 0, "parsed": 3, "parse_failed": 1, "mean_rating": 6.0}


# ---------------------------------------------------------------- stage 41_judge end to end
def test_stage_41_judge_end_to_end(tmp_path):
    pm = pytest.importorskip("papermill")
    n = 8
    answers = tmp_path/"answers.jsonl"
    core.write_jsonl(answers, [{"question_id": q, "answer_id": f"a{q}", "model_id": "student", "text": f"{CANDIDATE} {q}"}
                               for q in range(1, n + 1)])
    run_dir = tmp_path/"run"
    with FakeOpenAIServer(responder=consistent_judge) as srv:
        pm.execute_notebook(str(ROOT/"nbs/pipeline/41_judge.ipynb"), str(tmp_path/"out.ipynb"), kernel_name="selfinstruct-nb",
                            cwd=str(tmp_path), progress_bar=False,
                            parameters=dict(run_dir=str(run_dir), judge_backend="openai", judge_model=f"fake-judge-{uuid.uuid4().hex[:8]}",
                                            judge_base_url=srv.url, judge_api_key_env="", candidate_answers=str(answers), limit=n,
                                            reference_model="gpt35", both_orders=True, judge_max_tokens=0))
    m = json.loads((run_dir/"41_judge/metrics.json").read_text())
    scored = [q for q in range(1, n + 1) if q % 4 != 0]
    assert (m["requests"], m["request_failed"], m["parse_failed"], m["parsed"]) == (2 * n, 0, 2 * (n - len(scored)), 2 * len(scored))
    assert m["totals"] == {"student": 2.0 * sum(cand_score(q) for q in scored), "gpt35": 2.0 * REF_SCORE * len(scored)}
    assert m["position"]["flips"] == 0 and m["generated_answers"] is None
    assert m["judge"]["params"] == {"seed": 0}
    reviews = core.read_jsonl(run_dir/"41_judge/reviews.jsonl")
    assert len(reviews) == 2 * n and sum(r["scores"] is None for r in reviews) == m["parse_failed"]


# ---------------------------------------------------------------- Orca's other two sets, whole, through stage 41_judge
def judge_or_answer(req: dict) -> str:
    "The consistent judge for judge requests; a fixed reference answer (and the model asked) for answer requests."
    if "Assistant 1" in _user(req): return consistent_judge(req)
    return f"REFERENCE ANSWER from {req['model']}"


def test_stage_41_judge_on_awesome164_and_wizardlm218(tmp_path):
    "Both whole sets: the reference model answers through the judge's endpoint, every question judged in both orders."
    pm = pytest.importorskip("papermill")
    sets = {"awesome164": judge.eval_questions("awesome164"), "wizardlm218": judge.eval_questions("wizardlm218")}
    for s, qs in sets.items():
        core.write_jsonl(tmp_path/f"{s}.jsonl", [{"question_id": q["question_id"], "text": f"{CANDIDATE} {q['question_id']}"} for q in qs])
    run_dir = tmp_path/"run"
    with FakeOpenAIServer(responder=judge_or_answer) as srv:
        pm.execute_notebook(str(ROOT/"nbs/pipeline/41_judge.ipynb"), str(tmp_path/"out.ipynb"), kernel_name="selfinstruct-nb",
                            cwd=str(tmp_path), progress_bar=False,
                            parameters=dict(run_dir=str(run_dir), judge_backend="openai", judge_model=f"fake-judge-{uuid.uuid4().hex[:8]}",
                                            judge_base_url=srv.url, judge_api_key_env="", candidate_answers=str(tmp_path/"{set}.jsonl"),
                                            limit=0, eval_sets=list(sets), reference_generator="fake-chatgpt", both_orders=True,
                                            judge_max_tokens=0, concurrency=16))
    m = json.loads((run_dir/"41_judge/metrics.json").read_text())
    assert m["eval_sets"] == list(sets) and "totals" not in m      # no Vicuna-80 at the top level when it is not judged
    for s, qs in sets.items():
        ids = [q["question_id"] for q in qs]
        scored = [q for q in ids if q % 4 != 0]
        v = m["sets"][s]
        assert (v["questions"], v["requests"], v["request_failed"], v["parsed"], v["parse_failed"]) == \
               (len(ids), 2 * len(ids), 0, 2 * len(scored), 2 * (len(ids) - len(scored)))
        assert v["totals"] == {"student": 2.0 * sum(cand_score(q) for q in scored), "fake-chatgpt": 2.0 * REF_SCORE * len(scored)}
        assert v["relative_score"] == pytest.approx(100 * sum(cand_score(q) for q in scored) / (REF_SCORE * len(scored)))
        assert v["reference_generated"]["ok"] == len(ids) and v["position"]["flips"] == 0
        refs = core.read_jsonl(run_dir/f"41_judge/{s}/reference_answers.jsonl")
        assert {r["text"] for r in refs} == {"REFERENCE ANSWER from fake-chatgpt"} and len(refs) == len(ids)
        reviews = core.read_jsonl(run_dir/f"41_judge/{s}/reviews.jsonl")
        assert Counter(r["order"] for r in reviews) == Counter({o: len(ids) for o in judge.ORDERS})
    cats = Counter(r["category"] for r in core.read_jsonl(run_dir/"41_judge/wizardlm218/reviews.jsonl"))
    assert cats == Counter({"generic": 2 * 171, "coding": 2 * 28, "math": 2 * 19})
    assert sets["awesome164"] and len(sets["awesome164"]) == 163     # the file's 163 prompts (164 lines with its header)


def test_stage_32_then_41_on_the_new_sets(tmp_path):
    "32_generate answers awesome164 / wizardlm218 through a server; 41_judge finds those answers without being told where."
    pm = pytest.importorskip("papermill")
    run_dir, n = tmp_path/"run", 3
    def student_or_judge(req):
        if "Assistant 1" in _user(req): return consistent_judge(req)
        qid = next(q["question_id"] for s in ("awesome164", "wizardlm218") for q in judge.eval_questions(s) if q["text"] in _user(req))
        return f"{CANDIDATE} {qid}" if req["model"] == "fake-student" else "REFERENCE"
    kw = dict(cwd=str(tmp_path), progress_bar=False, kernel_name="selfinstruct-nb")
    with FakeOpenAIServer(responder=student_or_judge) as srv:
        pm.execute_notebook(str(ROOT/"nbs/pipeline/32_generate.ipynb"), str(tmp_path/"g.ipynb"), **kw,
                            parameters=dict(run_dir=str(run_dir), backend="openai", base_url=srv.url, served_model="fake-student",
                                            template="chat", sets=["awesome164", "wizardlm218"], limit=n))
        m32 = json.loads((run_dir/"32_generate/metrics.json").read_text())
        assert (m32["awesome164_answers"], m32["wizardlm218_answers"], m32["answers"], m32["failed"]) == (n, n, 0, 0)
        assert judge.load_answers(run_dir/"32_generate/wizardlm218_answers.jsonl") == {q: f"{CANDIDATE} {q}" for q in range(1, n + 1)}
        pm.execute_notebook(str(ROOT/"nbs/pipeline/41_judge.ipynb"), str(tmp_path/"j.ipynb"), **kw,
                            parameters=dict(run_dir=str(run_dir), judge_backend="openai", judge_model="fake-judge", judge_base_url=srv.url,
                                            judge_api_key_env="", eval_sets=["awesome164", "wizardlm218"], limit=n,
                                            reference_generator="fake-chatgpt", generate_missing_answers=False))
    m = json.loads((run_dir/"41_judge/metrics.json").read_text())
    for s in ("awesome164", "wizardlm218"):
        assert m["sets"][s]["candidate_answers"].endswith(f"32_generate/{s}_answers.jsonl") and m["sets"][s]["generated_answers"] is None
        assert m["sets"][s]["totals"] == {"student": 2.0 * sum(cand_score(q) for q in range(1, n + 1)), "fake-chatgpt": 2.0 * REF_SCORE * n}

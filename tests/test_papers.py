"""The papers' facts, pinned to their sources (see `../shared/papers.md`), and the stages that use them run end to end:
Orca's system-message sets and multiple-choice rule, FLAN-5M / FLAN-1M, GPT-4-LLM's scoring prompt and Chinese data,
Self-Instruct's reference settings and keyword lists, and GPT-4-LLM's Unnatural Instructions evaluation set."""
from __future__ import annotations
import json, sys, uuid, zipfile
from collections import Counter
from pathlib import Path

import pytest

from selfinstruct_nb import core, data, distill, eval_rouge, filters, prompts
from selfinstruct_nb.llm import LLMResult

sys.path.insert(0, str(Path(__file__).parent))
from fake_openai_server import FakeOpenAIServer  # noqa: E402
from responders import DistillResponder  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
FLAN_FIXTURE = ROOT/"data/fixtures/flan_v2"
KERNEL = "selfinstruct-nb"


# ---------------------------------------------------------------- Orca (arXiv 2306.02707 §3.1.1, Table 3)
def test_orca_system_message_sets_are_the_papers():
    # papers.md: CoT 6, 11, 16; NiV2 1, 2, 5, 7, 9, 12, 13, 14, 15; T0 1, 2, 3, 5, 7; Flan2021 3, 4, 7, 8, 10
    assert {c: distill.COLLECTION_SYSTEM_MESSAGES[c] for c in ("cot", "niv2", "t0", "flan2021")} == {
        "cot": [6, 11, 16], "niv2": [1, 2, 5, 7, 9, 12, 13, 14, 15], "t0": [1, 2, 3, 5, 7], "flan2021": [3, 4, 7, 8, 10]}
    assert distill.MULTIPLE_CHOICE_ONLY == {8, 10}                     # "used for multiple-choice queries only"
    assert len(distill.ORCA_SYSTEM_MESSAGES) == 16 and distill.ORCA_SYSTEM_MESSAGES[1] == ""
    for i in (8, 10): assert "multiple choice question" in distill.ORCA_SYSTEM_MESSAGES[i]


def test_messages_8_and_10_only_for_multiple_choice_queries():
    plain = [{"id": f"p{i}", "instruction": "Is the sky blue? Answer in one sentence.", "collection": "flan2021"} for i in range(300)]
    options = [{**q, "id": f"o{i}", "instruction": q["instruction"] + "\nOPTIONS:\n- yes\n- no"} for i, q in enumerate(plain)]
    flagged = [{**q, "id": f"f{i}", "multiple_choice": True} for i, q in enumerate(plain)]
    assert {distill.explanation_messages(q)[0] for q in plain} == {3, 4, 7}
    assert {distill.explanation_messages(q)[0] for q in options} == {3, 4, 7, 8, 10}
    assert {distill.explanation_messages(q)[0] for q in flagged} == {3, 4, 7, 8, 10}   # the record's flag decides


@pytest.mark.parametrize("text,flag,expected", [
    ("Premise: A man sleeps.\nOPTIONS:\n- yes\n- it is not possible to tell\n- no", None, True),   # FLAN *_opt template
    ("Answer choices: (A) 4 (B) 5", None, True),
    ("Which is larger?\n(A) the sun (B) the moon", None, True),
    ("Pick the right word.\nA) cat\nB) dog", None, True),
    ("Choose your answer from:\n- red\n- blue", None, True),
    ("Does the premise entail it? Available choices: yes; no", None, True),
    ("Describe your options for saving money.", None, False),               # the word alone is not a header
    ("List the steps:\n1. wash\n2. dry", None, False),
    ("Translate to French: A. B. Smith met C. Jones.", None, False),          # initials are not options
    ("Who wrote Hamlet?", None, False),
    ("OPTIONS:\n- yes\n- no", False, False),                                 # an explicit flag beats the text
    ("Who wrote Hamlet?", True, True),
])
def test_multiple_choice_rule(text, flag, expected):
    q = {"instruction": text, **({} if flag is None else {"multiple_choice": flag})}
    assert distill.is_multiple_choice(q) is expected


def test_flan_loader_jsonl_parquet_and_template_flags(tmp_path):
    queries, read = distill.load_flan_queries(str(FLAN_FIXTURE))
    assert read == {"cot": 6, "dialog": 3, "flan2021": 24, "niv2": 10, "t0": 16}        # Dialog read, skipped
    assert all(q["collection"] in ("cot", "niv2", "flan2021", "t0") for q in queries)
    raw = [json.loads(l) for l in (FLAN_FIXTURE/"flan2021.jsonl").read_text().splitlines()]
    flan = [q for q in queries if q["collection"] == "flan2021"]
    assert [q["multiple_choice"] for q in flan] == [r["template_type"].endswith("_opt") for r in raw]
    import pandas as pd
    pd.DataFrame(raw).to_parquet(tmp_path/"flan2021.parquet")
    pq, pread = distill.load_flan_queries(str(tmp_path/"flan2021.parquet"))
    assert pread == {"flan2021": 24} and [q["instruction"] for q in pq] == [q["instruction"] for q in flan]
    with pytest.raises(core.RecordError, match=r"missing\.parquet: record: file not found"):
        distill.load_flan_queries(str(tmp_path/"missing.parquet"))


def test_flan5m_sizes_and_flan1m_is_a_random_subset_of_flan5m():
    assert distill.FLAN5M_SIZES == {"cot": 150_000, "niv2": 440_000, "flan2021": 2_500_000, "t0": 2_000_000}  # Table 3
    assert distill.FLAN1M_SIZE == 1_000_000
    assert not hasattr(distill, "ORCA_MIXTURES_K")                     # no per-collection FLAN-1M table any more
    for total in (7, 100, 1017, 5_090_000):
        sizes = distill.flan5m_sizes(total)
        assert sum(sizes.values()) == total
        assert all(abs(sizes[c] - total * n / 5_090_000) < 1 for c, n in distill.FLAN5M_SIZES.items())
    queries, _ = distill.load_flan_queries(str(FLAN_FIXTURE))
    pools = {}
    for q in queries: pools.setdefault(q["collection"], []).append(q)
    flan5m, short = distill.sample_mixture(pools, distill.flan5m_sizes(40), seed=3)
    assert short == {} and Counter(q["collection"] for q in flan5m) == distill.flan5m_sizes(40)
    # stratified within a collection: Flan2021's 20 are spread over its 4 tasks, 5 each
    assert sorted(Counter(q["task"] for q in flan5m if q["collection"] == "flan2021").values()) == [5, 5, 5, 5]
    ids5 = [q["id"] for q in flan5m]
    subsets = [distill.flan1m_subset(flan5m, 8, seed=s) for s in range(6)]
    for sub in subsets:
        assert len(sub) == 8 and {q["id"] for q in sub} <= set(ids5)
        assert [q["id"] for q in sub] == [i for i in ids5 if i in {q["id"] for q in sub}]   # FLAN-5M's order
    assert len({tuple(q["id"] for q in s) for s in subsets}) > 1        # random: seeds give different subsets
    assert len(distill.flan1m_subset(flan5m[:5], 8)) == 5               # never more than FLAN-5M has


# ---------------------------------------------------------------- GPT-4-LLM (arXiv 2304.03277; repository issue #8)
PUBLISHED_SCORING_PROMPT = (
    "### Instruction\n{instruction}\n### Response\n{response}\n### End of Response\n"
    "We would like to request your feedback on the performance of AI assistant in response to the user question "
    "displayed above. Please rate the helpfulness, relevance, accuracy, level of details of their responses. Each "
    "assistant receives an overall score on a scale of 1 to 10, where a higher score indicates better overall "
    "performance. Please first output a single line containing value indicating the scores. In the subsequent line, "
    "please provide a comprehensive explanation of your evaluation, avoiding any potential bias.")


def test_scoring_prompt_is_the_published_one_and_editable():
    assert distill.GPT4LLM_SCORING_PROMPT == PUBLISHED_SCORING_PROMPT
    answered = [("q", "Name a prime.", {"a": "7", "b": "9"})]
    reqs = distill.rating_requests(answered)
    assert reqs[0].messages[0]["content"] == PUBLISHED_SCORING_PROMPT.format(instruction="Name a prime.", response="7")
    custom = distill.rating_requests(answered, "Q: {instruction}\nA: {response}\nScore 1-10 on the first line.", chat=False)
    assert custom[1].prompt.startswith("Q: Name a prime.\nA: 9\n")
    res = [LLMResult(r.id, "ok", t, meta=r.meta) for r, t in zip(reqs, ["9\nCorrect.", "Score: 2\n9 is not prime."])]
    recs, counts = distill.scored_answers(answered, res)
    assert [a["score"] for a in recs[0]["answers"]] == [9.0, 2.0] and counts == {"rated": 2, "unparsed": 0, "failed": 0}


def test_translation_without_chinese_is_dropped_with_its_reason():
    pairs = [({"id": i}, LLMResult(str(i), "ok", t)) for i, t in enumerate(["三种颜色", "Three colors", "Name 3: 红, 蓝", "   "])]
    kept, dropped = distill.split_translations(pairs)
    assert [q["id"] for q, _ in kept] == [0, 2] and dropped == {"no_chinese": 2}


def test_stage_20_distill_drops_english_translations_and_sends_only_chat_requests(tmp_path):
    pm = pytest.importorskip("papermill")
    responder = DistillResponder(english_every=3)
    run_dir = tmp_path/"run"
    tag = uuid.uuid4().hex[:8]
    with FakeOpenAIServer(responder=responder) as srv:
        pm.execute_notebook(str(ROOT/"nbs/pipeline/20_distill.ipynb"), str(tmp_path/"out.ipynb"), kernel_name=KERNEL,
                            cwd=str(tmp_path), progress_bar=False, parameters=dict(
                                run_dir=str(run_dir), queries_source=f"flan:{FLAN_FIXTURE}", mixture="flan5m",
                                stage1_size=40, stage2_size=12, languages=["en", "zh"], score_answers=True,
                                assistant_backend="openai", assistant_model=f"fake-assistant-{tag}", assistant_base_url=srv.url,
                                teacher_backend="openai", teacher_model=f"fake-teacher-{tag}", teacher_base_url=srv.url,
                                assistant_chat=True, teacher_chat=True, api_key_env="", max_tokens=64,
                                cache_path=str(tmp_path/"cache.sqlite")))
        paths = dict(srv.paths)
    assert paths.get("/v1/completions", 0) == 0 and paths["/v1/chat/completions"] > 0
    m = json.loads((run_dir/"20_distill/metrics.json").read_text())
    out = run_dir/"20_distill"
    stage1, stage2 = core.read_jsonl(out/"stage1.jsonl"), core.read_jsonl(out/"stage2.jsonl")
    assert m["stage1_sizes"] == distill.flan5m_sizes(40) and len(stage1) == 40 and len(stage2) == 12
    assert {r["id"] for r in stage2} <= {r["id"] for r in stage1}                     # FLAN-1M within FLAN-5M
    for r in stage1:                                                                   # Orca's sets and the MC rule
        assert r["system_id"] in distill.COLLECTION_SYSTEM_MESSAGES[r["collection"]]
        if r["system_id"] in (8, 10): assert "OPTIONS:" in r["messages"][-2]["content"]
    english = sum(responder.in_english(r["messages"][-2]["content"]) for r in stage2)
    assert english > 0 and m["zh_dropped"] == {"no_chinese": english}
    zh = core.read_jsonl(out/"zh.jsonl")
    assert m["zh_records"] == len(zh) == 12 - english and all(distill.has_chinese(r["instruction"]) for r in zh)
    assert m["ratings"] == {"rated": 24, "unparsed": 0, "failed": 0} and m["chat"] == {"assistant": True, "teacher": True}


# ---------------------------------------------------------------- Self-Instruct (arXiv 2212.10560; yizhongw/self-instruct)
def test_reference_settings_and_the_differences_are_named():
    ref = prompts.REFERENCE_SETTINGS
    assert ref["bootstrap_instructions"] == dict(max_tokens=1024, temperature=0.7, top_p=0.5, frequency_penalty=0.0,
                                                 presence_penalty=2.0, stop=["\n\n", "\n16", "16.", "16 ."])
    assert ref["identify_clf_or_not"] == dict(max_tokens=3, temperature=0.0, top_p=0.0, frequency_penalty=0.0,
                                              presence_penalty=0.0, stop=["\n", "Task"])
    assert ref["generate_instances"]["max_tokens"] == {"classification": 300, "other": 350}
    assert ref["generate_instances"]["presence_penalty"] == 1.5
    assert ref["generate_instances"]["stop"] == ["Example {max+1}", "Task:"]
    assert prompts.instruction_gen_stop("number") == ref["bootstrap_instructions"]["stop"]
    named = " | ".join(d["what"] for d in prompts.PAPER_VS_CODE)
    for what in ("numbering", "instruction-generation stops", "classification-identification stop", "max_tokens",
                 "top_p", "ROUGE-L", "keywords"):
        assert what in named, what
    numbering = next(d for d in prompts.PAPER_VS_CODE if "numbering" in d["what"])
    assert numbering["default"].startswith("paper") and "Task 1:" in numbering["paper"]


def test_keyword_lists_reach_the_filters():
    assert filters.keyword_list("paper") == ("image", "images", "graph", "graphs", "picture", "pictures", "file", "files",
                                             "map", "maps", "draw", "plot", "go to")
    assert filters.keyword_list("alpaca") == filters.keyword_list("paper") + ("video", "audio", "music", "flowchart", "diagram")
    pool = filters.InstructionPool(["Name a color."], keywords=filters.keyword_list("alpaca"))
    assert pool.check("Compose music for a birthday party.")[0] == "keyword"
    assert filters.InstructionPool(["Name a color."]).check("Compose music for a birthday party.")[0] is None
    with pytest.raises(ValueError, match="keyword_list must be one of paper, alpaca"): filters.keyword_list("none")


# ---------------------------------------------------------------- Unnatural Instructions (GPT-4-LLM's 9K evaluation)
def _core_zip(path: Path, buckets: list[tuple[str, int]], per_task: int = 2) -> Path:
    "A zip in the release's layout whose instances, in order, have `n` gold outputs in each `(bucket, n)`."
    lengths = [w for b, n in buckets for w in [{"0-2": 1, "3-5": 4, "6-10": 8, ">10": 14}[b]] * n]
    lines = []
    for t in range(0, len(lengths), per_task):
        lines.append({"instruction": f"Answer question {t}.", "instances": [
            {"instruction_with_input": f"Answer question {t}. q{t + j}", "input": f"q{t + j}", "constraints": "None.",
             "output": " ".join(f"w{k}" for k in range(n))} for j, n in enumerate(lengths[t:t + per_task])]})
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("core_data.jsonl", "".join(json.dumps(d) + "\n" for d in lines))
    return path


def test_unnatural_loader_and_bucket_counts_against_the_released_files(tmp_path):
    released = eval_rouge.released_bucket_counts()                    # read from the 5 released result files
    assert released == {"0-2": 5089, "3-5": 868, "6-10": 936, ">10": 2107, "all": 9000}
    z = _core_zip(tmp_path/"core_data.zip", [(b, released[b]) for b in ("0-2", "3-5", "6-10", ">10")] + [("3-5", 40)])
    ds = data.load_unnatural_core(z)
    assert ds.num_rows == 9040 and set(ds.column_names) == {"task_index", "instance_index", "instruction", "input",
                                                             "instruction_with_input", "constraints", "output"}
    items = eval_rouge.unnatural_items(ds)                             # the first 9,000
    check = eval_rouge.check_bucket_counts(items)
    assert check["match"].all() and check.set_index("bucket")["n"].to_dict() == released
    off = eval_rouge.check_bucket_counts(eval_rouge.unnatural_items(ds, 8000))
    assert off["match"].tolist() == [True, True, True, False, False]       # 8,000: the >10 bucket is short
    bad = tmp_path/"two.zip"
    with zipfile.ZipFile(bad, "w") as zf: zf.writestr("a.jsonl", ""); zf.writestr("b.jsonl", "")
    with pytest.raises(data.DataError, match="expected one .jsonl file inside, found a.jsonl, b.jsonl"): data.load_unnatural_core(bad)


def test_stage_40_eval_rouge_scores_a_model_on_the_unnatural_set(tmp_path):
    pm = pytest.importorskip("papermill")
    z = _core_zip(tmp_path/"core_data.zip", [("0-2", 10), ("3-5", 6), ("6-10", 4), (">10", 4)])
    items = eval_rouge.unnatural_items(data.load_unnatural_core(z), 20)
    answers = tmp_path/"answers.jsonl"
    core.write_jsonl(answers, [{"id": it.id, "instruction": it.instruction, "input": it.input, "answer": it.gold, "model": "student"}
                               for it in items[:15]])
    run_dir = tmp_path/"run"
    pm.execute_notebook(str(ROOT/"nbs/pipeline/40_eval_rouge.ipynb"), str(tmp_path/"out.ipynb"), kernel_name=KERNEL,
                        cwd=str(tmp_path), progress_bar=False,
                        parameters=dict(run_dir=str(run_dir), limit=5, unnatural=True, unnatural_core=str(z),
                                        unnatural_size=20, unnatural_answers=str(answers), unnatural_gpt4="local"))
    u = json.loads((run_dir/"40_eval_rouge/metrics.json").read_text())["unnatural"]
    assert u["items"] == 20 and u["bucket_counts_match"] is False                  # 20 items are not GPT-4-LLM's 9,000
    assert {b: v["n"] for b, v in u["bucket_counts"].items()} == {"0-2": 10, "3-5": 6, "6-10": 4, ">10": 0, "all": 20}
    assert u["bucket_counts"]["0-2"]["released"] == 5089
    assert u["gpt4_join"] is None                                                  # not in the local mirror
    assert u["models"]["student"]["all"] == {"n": 15, "rougeL": 1.0, "answer_words": round(sum(len(it.gold.split()) for it in items[:15]) / 15, 2)}
    assert (run_dir/"figures/rouge_l_unnatural.png").exists()

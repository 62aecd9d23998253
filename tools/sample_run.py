#!/usr/bin/env python3
"""The committed excerpt of a real run: what the model wrote at every Self-Instruct step and what became of it,
made from a run folder into `data/samples/<profile>/` (well under 1 MB), plus the run's executed stage notebooks,
cleaned, into `examples/<profile>/`. The notebooks read the excerpt with `selfinstruct_nb.excerpt.excerpt(name)`.

Files (`data/samples/README.md` describes every field; the schema is kept stable):
  run.json                  the run: folder, profile, command, commit, stages (status, seconds, metrics), teacher
  bootstrap_requests.jsonl  every bootstrap request: its prompt's 8 in-context instructions (seed or machine, rebuilt
                            from the run's seed and journal and checked against the journal's prompt hash), the raw
                            response, and each parsed candidate's fate (kept, or the filter's reason)
  bootstrap_candidates.jsonl  every candidate, flat: fate, ROUGE-L with the most similar pool instruction and which
  pool_growth.jsonl         per step: candidates, kept, keep rate, machine pool size
  classify.jsonl            the model's raw Yes/No per machine instruction, the parsed label, and the nearest seed's
                            gold flag (the gold flag itself when the instruction is a seed's)
  classify_examples.jsonl   the few-shot examples of the classification prompt with their gold flags
  instances.jsonl           raw output-first / input-first generations, the instances parsed from them and each
                            instance's fate in 13_filter
  tasks.jsonl               the filtered tasks (13_filter/tasks.jsonl): instruction, is_classification, instances
  funnel.jsonl              13_filter's funnel tables (instructions, tasks, instances)
  analysis_stats.jsonl      15_analysis's Table 1 statistics (generated set beside the seeds)
  experiment_*.jsonl        when the run has 44_experiment: its comparison table and per-item answers of each model
                            (every `*.csv` / `*.jsonl` table the stage writes at its top level, as records)

The excerpt is regenerated from a real run, never edited by hand; a second run of the tool on the same run folder
gives the same bytes.

usage: python tools/sample_run.py outputs/demo-YYYYMMDD-HHMMSS [--out data/samples] [--examples examples]
"""
from __future__ import annotations
import argparse, csv, io, json, math, re, sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SAMPLES, EXAMPLES = ROOT/"data"/"samples", ROOT/"examples"
MAX_BYTES = 900_000          # the excerpt folder's size limit (the issue asks for well under 1 MB)
ORDER = ("run.json", "bootstrap_requests.jsonl", "bootstrap_candidates.jsonl", "pool_growth.jsonl", "classify.jsonl",
         "classify_examples.jsonl", "instances.jsonl", "tasks.jsonl", "funnel.jsonl", "analysis_stats.jsonl")

class RunError(Exception): "A run folder the excerpt cannot be made from (one line: what and where)."

# every file of the excerpt: what it holds and its fields (data/samples/README.md is written from this)
SCHEMA: dict[str, tuple[str, list[tuple[str, str]]]] = {
    "summary.md": ("the run's numbers as Markdown, computed from the other files; the README's demo section includes it "
                   "(`tools/readme.py` replaces `<!-- include: data/samples/demo/summary.md -->`)", []),
    "run.json": ("the run the excerpt was made from (one JSON object)", [
        ("run, run_dir", "the run folder's name and its project-relative path (`outputs/demo-<time>`)"),
        ("profile, status, command, resumed, created_at, updated_at", "from the run's `manifest.json`"),
        ("commit, dirty", "the commit the run was started from, and whether the checkout had changes"),
        ("platform", "python, machine, cpus, gpus"), ("teacher", "the generating model (backend, model)"),
        ("note", "what the person who made the excerpt recorded about the run (e.g. the machine's load), or null"),
        ("made_by", "the command that made the excerpt"),
        ("stages", "per stage: status, seconds, reused, git_commit, params, metrics (the stage's `metrics.json`)"),
        ("files", "every `.jsonl` file of the excerpt and its number of records"),
        ("left_out", "the run's experiment tables too large for the excerpt (file, bytes)")]),
    "bootstrap_requests.jsonl": ("one record per bootstrap request, in request order (10_bootstrap)", [
        ("n, id, step", "the request's number, its id, its step (`n // requests_per_round`)"),
        ("in_context", "the prompt's 8 instructions in prompt order (`Task 1:` .. `Task 8:`): `instruction`, `source` "
                       "(`seed` or `machine`), `task_id` (`seed_task_N` or `machine_task_N`); rebuilt from the run's seed "
                       "and journal as the stage built them"),
        ("prompt_verified", "the rebuilt prompt's sha256 equals the one the run journaled for this request"),
        ("status, finish_reason, error", "`ok` or `failed`; `stop` or `length`"),
        ("response", "the model's raw text after the prompt's last `Task 9:`"),
        ("prompt_tokens, completion_tokens", "token counts of the request"),
        ("candidates", "the instructions parsed from the response, in order, each with `instruction, kept, reason, "
                       "rouge_max, most_similar, most_similar_source, task_id` (as in `bootstrap_candidates.jsonl`)"),
        ("no_candidates", "why the response gave no candidate (`no_items`, `request_failed`), else null")]),
    "bootstrap_candidates.jsonl": ("every parsed candidate instruction, flat, in request order (10_bootstrap)", [
        ("n, step", "the request it came from"), ("instruction", "the candidate, on one line"),
        ("kept, reason", "kept in the pool, or the filter that dropped it (`rouge_similar`, `duplicate`, `keyword`, "
                         "`too_short`, `too_long`, `truncated`, `pool_full`, ...)"),
        ("rouge_max, most_similar", "its highest ROUGE-L with the pool (seeds and kept machine instructions) and that "
                                    "instruction (null for drops decided before the ROUGE-L check)"),
        ("most_similar_source", "`seed` or `machine`"), ("task_id", "`machine_task_N` when kept")]),
    "pool_growth.jsonl": ("per bootstrap step (10_bootstrap)", [
        ("step, candidates, kept, keep_rate, pool", "candidates parsed, kept, their ratio, machine pool size after the step")]),
    "classify.jsonl": ("one record per machine instruction (11_classify)", [
        ("task_id, instruction", "the machine instruction"),
        ("raw", "the model's raw answer to the few-shot `Is it classification?` prompt"),
        ("is_classification, status", "the parsed label (`unparsed` / `failed` answers count as not classification)"),
        ("seed_gold", "the seed file's gold flag when the instruction is a seed instruction, else null"),
        ("nearest_seed, nearest_seed_id, nearest_seed_rouge, nearest_seed_is_classification",
         "the most similar seed instruction by ROUGE-L and its gold flag")]),
    "classify_examples.jsonl": ("the classification prompt's few-shot examples, in prompt order (11_classify)", [
        ("instruction, is_classification, seed_id", "the example, its gold label, its seed task")]),
    "instances.jsonl": ("one record per instance generation (12_instances, fates from 13_filter)", [
        ("task_id, instruction, is_classification", "the task"),
        ("template", "`output_first` (classification: label, then an input) or `input_first`"),
        ("status, finish_reason, error", "`ok`, `no_instances` (nothing parsed) or `failed`"),
        ("raw", "the model's raw generation after the prompt's `Task: <instruction>`"),
        ("parsed", "the instances parsed from it: `input, output, fate` (`kept` or the 13_filter reason)"),
        ("task_fate", "`kept`, or why the task was dropped")]),
    "tasks.jsonl": ("the filtered tasks, 13_filter's output", [("id, instruction, is_classification, instances", "as in `core.Task`")]),
    "funnel.jsonl": ("13_filter's funnel tables", [
        ("level", "`instructions`, `tasks` or `instances`"),
        ("step, description, count, remaining, percent", "each filter in the order it runs, what it removed, what is left "
                                                          "(and as a percentage of the candidates)")]),
    "analysis_stats.jsonl": ("15_analysis's statistics table (Self-Instruct's Table 1 for the generated set and the seeds)", [
        ("statistic", "the row"), ("generated, seed", "its value for each set")]),
    "experiment_*.jsonl": ("when the run has 44_experiment: each table the stage writes at its top level (`<name>.csv` or "
                           "`<name>.jsonl`) as `experiment_<name>.jsonl`, e.g. the comparison table and the per-item answers "
                           "of each model", [("(the stage's columns)", "see `nbs/pipeline/44_experiment.ipynb`")]),
}

# ---------------------------------------------------------------- small helpers
def read_jsonl(p: Path) -> list[dict]:
    return [json.loads(l) for l in p.read_text(encoding="utf-8").splitlines() if l.strip()]

def read_csv(p: Path) -> list[dict]:
    "Rows of a CSV, numbers as numbers, empty cells as None."
    def val(v):
        if v == "": return None
        for f in (int, float):
            try:
                x = f(v)
                return None if isinstance(x, float) and math.isnan(x) else x
            except ValueError: pass
        return v
    return [{k: val(v) for k, v in r.items()} for r in csv.DictReader(io.StringIO(p.read_text(encoding="utf-8")))]

def dumps(rec) -> str: return json.dumps(rec, ensure_ascii=False, sort_keys=False)

def _r(x, nd=4): return None if x is None else round(float(x), nd)

def need(p: Path, what: str) -> Path:
    if not p.is_file(): raise RunError(f"{p}: missing ({what})")
    return p

# ---------------------------------------------------------------- the parts
def run_info(run: Path, man: dict, cmd: str, note: str|None = None) -> dict:
    "run.json: which run, how it was made, each stage's status, seconds and metrics."
    stages = {}
    for name, s in man.get("stages", {}).items():
        m = s.get("metrics")
        if m is None and (run/name/"metrics.json").is_file(): m = json.loads((run/name/"metrics.json").read_text(encoding="utf-8"))
        stages[name] = {"status": s.get("status"), "seconds": s.get("seconds"), "reused": s.get("reused"),
                        "git_commit": s.get("git_commit"), "params": s.get("params"), "metrics": m}
    git = man.get("git", {})
    boot = stages.get("10_bootstrap", {}).get("metrics") or {}
    return {"run": run.name, "run_dir": man.get("run_dir"), "profile": man.get("profile"), "status": man.get("status"),
            "created_at": man.get("created_at"), "updated_at": man.get("updated_at"), "command": man.get("command"),
            "resumed": man.get("resumed"), "commit": git.get("commit"), "dirty": git.get("dirty"),
            "platform": {k: man.get("platform", {}).get(k) for k in ("python", "machine", "cpus", "gpus")},
            "teacher": boot.get("teacher"), "note": note, "made_by": cmd, "stages": stages}

def bootstrap_parts(run: Path) -> tuple[list, list, list]:
    "bootstrap_requests, bootstrap_candidates, pool_growth: from the journal, with each prompt's in-context instructions rebuilt."
    from selfinstruct_nb.bootstrap import context_prefix, pool_growth, sample_prompt_instructions
    from selfinstruct_nb.core import rng
    from selfinstruct_nb.data import seed_tasks
    from selfinstruct_nb.llm import LLMRequest, prompt_hash
    from selfinstruct_nb.prompts import instruction_gen_prompt, one_line, request_fields
    d = run/"10_bootstrap"
    cfg = json.loads(need(d/"config.json", "the bootstrap's settings").read_text(encoding="utf-8"))
    units = read_jsonl(need(d/"rounds.jsonl", "the bootstrap's journal"))
    journal = {}
    if (d/"llm_journal.jsonl").is_file():
        for line in read_jsonl(d/"llm_journal.jsonl"): journal[line["id"]] = line   # the last line of an id wins
    seeds = seed_tasks()
    seed_instr = [one_line(t.instruction) for t in seeds]
    seed_id = {one_line(t.instruction): t.id for t in seeds}
    schedule, window, rps = cfg.get("schedule", "step"), cfg.get("window", 0), cfg["requests_per_round"]
    # the machine pool in commit order, and its size after each committed request (as `bootstrap` rebuilds it)
    machine, sizes = [], [0]
    for u in units:
        machine += u["kept"]; sizes += [None] * (len(u["responses"]) - 1) + [len(machine)]
    instr = [t["instruction"] for t in machine]
    machine_id = {t["instruction"]: t["id"] for t in machine}
    requests, flat, n, unverified = [], [], 0, 0
    for u in units:
        by_req = {}
        for c in u["candidates"]: by_req.setdefault(c["request_id"], []).append(c)
        for resp in u["responses"]:
            step, j = divmod(n, rps)
            r = rng(cfg["seed"], "bootstrap", step, j)
            shown = instr[:sizes[context_prefix(n, schedule, window, rps)]]
            picked = sample_prompt_instructions(seed_instr, shown, r, cfg["n_total"], cfg["n_machine"])
            req = LLMRequest(id=resp["id"], **request_fields(instruction_gen_prompt(picked, style=cfg["style"]), cfg["chat"]),
                             params={**cfg["params"], "seed": r.randrange(2**31)})
            want = (journal.get(resp["id"]) or {}).get("generation") or {}
            verified = bool(want.get("prompt_hash")) and want["prompt_hash"] == prompt_hash(req)
            unverified += not verified
            shown_set = set(shown)
            ctx = [{"instruction": x, "source": "machine" if x in shown_set else "seed",
                    "task_id": machine_id.get(x) if x in shown_set else seed_id.get(x)} for x in picked]
            cands, none_reason = [], None
            for c in by_req.get(resp["id"], []):
                if c["instruction"] is None: none_reason = c["reason"]; continue
                sim = c.get("most_similar")
                cand = {"instruction": c["instruction"], "kept": c["kept"], "reason": c["reason"], "rouge_max": _r(c.get("rouge_max")),
                        "most_similar": sim,
                        "most_similar_source": None if sim is None else "seed" if sim in seed_id else "machine" if sim in machine_id else "other",
                        "task_id": machine_id.get(c["instruction"]) if c["kept"] else None}
                cands.append(cand)
                flat.append({"n": n, "step": step, **cand})
            usage = (journal.get(resp["id"]) or {}).get("usage") or {}
            requests.append({"n": n, "id": resp["id"], "step": step, "in_context": ctx, "prompt_verified": verified,
                             "status": resp["status"], "finish_reason": resp.get("finish_reason"), "response": resp.get("text"),
                             "error": resp.get("error"), "prompt_tokens": usage.get("prompt_tokens"),
                             "completion_tokens": usage.get("completion_tokens"), "candidates": cands,
                             "no_candidates": none_reason})
            n += 1
    if journal and unverified:
        print(f"sample_run: warning: {unverified} of {n} bootstrap prompts could not be checked against the journal's prompt hash",
              file=sys.stderr)
    growth = [{**g, "keep_rate": _r(g["keep_rate"])} for g in pool_growth(d/"candidates.jsonl")]
    return requests, flat, growth

def classify_parts(run: Path, seed: int) -> tuple[list, list]:
    "classify (raw answers, labels, nearest seed and its gold flag) and classify_examples (the prompt's few-shot examples)."
    from selfinstruct_nb.data import seed_tasks
    from selfinstruct_nb.prompts import PAPER_CLF_EXAMPLES, clf_examples_from_seeds, one_line
    from selfinstruct_nb.rouge import RougeL
    recs = read_jsonl(need(run/"11_classify"/"is_classification.jsonl", "the classification answers"))
    seeds = seed_tasks()
    seed_instr = [one_line(t.instruction) for t in seeds]
    gold = {one_line(t.instruction): t.is_classification for t in seeds}
    ids = {t["instruction"]: t["id"] for t in read_jsonl(need(run/"10_bootstrap"/"machine_instructions.jsonl", "the machine pool"))}
    best = RougeL().max_scores([r["instruction"] for r in recs], seed_instr, return_index=True)
    out = []
    for r, (score, k) in zip(recs, best):
        near = seeds[k] if k >= 0 else None
        out.append({"task_id": ids.get(r["instruction"]), "instruction": r["instruction"], "raw": r.get("raw"),
                    "is_classification": r["is_classification"], "status": r["status"],
                    "seed_gold": gold.get(one_line(r["instruction"])),
                    "nearest_seed": one_line(near.instruction) if near else None, "nearest_seed_id": near.id if near else None,
                    "nearest_seed_rouge": _r(score), "nearest_seed_is_classification": near.is_classification if near else None})
    stage = json.loads((run/"11_classify"/"metrics.json").read_text(encoding="utf-8")) if (run/"11_classify"/"metrics.json").is_file() else {}
    examples = PAPER_CLF_EXAMPLES if stage.get("examples") == "paper" else clf_examples_from_seeds(seeds, seed=seed)
    seed_id = {one_line(t.instruction): t.id for t in seeds}
    return out, [{"instruction": x, "is_classification": bool(y), "seed_id": seed_id.get(one_line(x))} for x, y in examples]

def instance_parts(run: Path) -> list:
    "instances: each generation's raw text, the instances parsed from it, and each one's fate in 13_filter."
    gens = read_jsonl(need(run/"12_instances"/"generations.jsonl", "the instance generations"))
    parsed = {t["id"]: t for t in read_jsonl(need(run/"12_instances"/"tasks.jsonl", "the parsed instances"))}
    fdir = run/"13_filter"
    kept = {t["id"]: t for t in read_jsonl(fdir/"tasks.jsonl")} if (fdir/"tasks.jsonl").is_file() else None
    dropped = read_jsonl(fdir/"dropped.jsonl") if (fdir/"dropped.jsonl").is_file() else []
    inst_drops, task_drops = {}, {}
    for d in dropped:
        if d.get("level") == "instance": inst_drops.setdefault(str(d["task_id"]), []).append(d)
        elif d.get("level") == "task": task_drops[str(d["task_id"])] = d["reason"]
    out = []
    for g in gens:
        tid = str(g["task_id"])
        insts = parsed.get(tid, {}).get("instances", [])
        kept_insts = [(x["input"], x["output"]) for x in (kept or {}).get(tid, {}).get("instances", [])]
        drops = [(d.get("input"), d.get("output"), d["reason"]) for d in inst_drops.get(tid, [])]
        rows = []
        for x in insts:
            key, fate = (x["input"], x["output"]), None
            if kept is not None:
                if key in kept_insts: kept_insts.remove(key); fate = "kept"
                else:
                    hit = next((d for d in drops if (d[0], d[1]) == key), None)
                    if hit: drops.remove(hit); fate = hit[2]
            rows.append({"input": x["input"], "output": x["output"], "fate": fate})
        task_fate = None if kept is None else "kept" if tid in kept else task_drops.get(tid) or \
            ("instances_dropped" if insts else {"failed": "generation_failed", "no_instances": "unparsed_instances"}.get(g["status"], g["status"]))
        out.append({"task_id": tid, "instruction": g.get("instruction"), "is_classification": g.get("is_classification"),
                    "template": g.get("template"), "status": g["status"], "finish_reason": g.get("finish_reason"),
                    "raw": g.get("raw"), "error": g.get("error"), "parsed": rows, "task_fate": task_fate})
    return out

MAX_TABLE_BYTES = 200_000    # an experiment table larger than this is left out of the excerpt (and named in run.json)

def experiment_parts(run: Path, skipped: list) -> dict[str, list]:
    "experiment_<name>: every top-level table of 44_experiment (CSV or JSONL) as records; none when the stage has not run."
    d = run/"44_experiment"
    if not d.is_dir(): return {}
    out = {}
    for p in sorted(d.iterdir()):
        if not p.is_file() or p.name.startswith(("requests", "llm_journal")) or p.suffix not in (".csv", ".jsonl"): continue
        if p.stat().st_size > MAX_TABLE_BYTES: skipped.append({"file": f"44_experiment/{p.name}", "bytes": p.stat().st_size}); continue
        name = "experiment_" + re.sub(r"\W+", "_", p.stem)
        out[name] = read_csv(p) if p.suffix == ".csv" else read_jsonl(p)
    return out

# ---------------------------------------------------------------- the executed stage notebooks
_PAPERMILL_KEYS = ("papermill", "execution")

def clean_notebook(nb: dict, root: str) -> dict:
    "An executed stage notebook without papermill's timings, progress bars, execution counts, the checkout's absolute path, or a repeated figure."
    sys.path.insert(0, str(ROOT/"tools"))
    from run_nbs import is_progress_output
    nb = json.loads(json.dumps(nb))
    for k in _PAPERMILL_KEYS: nb.get("metadata", {}).pop(k, None)
    nb.get("metadata", {}).pop("widgets", None)
    prefix = root.rstrip("/") + "/"
    def rel(x):
        if isinstance(x, str): return x.replace(prefix, "")
        if isinstance(x, list): return [rel(y) for y in x]
        if isinstance(x, dict): return {k: rel(v) for k, v in x.items()}
        return x
    for c in nb["cells"]:
        for k in _PAPERMILL_KEYS: c.get("metadata", {}).pop(k, None)
        if c["cell_type"] != "code": continue
        c["execution_count"] = None
        outs, images = [], set()
        for o in c.get("outputs", []):
            if is_progress_output(o): continue
            img = (o.get("data") or {}).get("image/png")
            if img is not None:   # a figure shown twice in one cell (44_experiment before its plt.close) is shown once
                if (key := "".join(img) if isinstance(img, list) else img) in images: continue
                images.add(key)
            if "execution_count" in o: o["execution_count"] = None
            outs.append(rel(o))
        c["outputs"] = outs
    return nb

def copy_notebooks(run: Path, man: dict, dest: Path) -> list[str]:
    "The run's executed stage notebooks (stages with status ok), cleaned, into `dest`; returns their names."
    src = run/"notebooks"
    here, rel = str(run.resolve()), (man.get("run_dir") or "").strip("/")
    root = here[:-len(rel) - 1] if rel and here.endswith("/" + rel) else str(run.resolve().parents[1])  # the run's checkout
    roots = {root}  # and where it ran, if the run folder was moved since: any absolute path that ends in the run's own
    for p in src.glob("*.ipynb"):
        roots |= set(re.findall(r"((?:/[\w.\-]+)+)/" + re.escape(rel), p.read_text(encoding="utf-8"))) if rel else set()
    dest.mkdir(parents=True, exist_ok=True)
    for old in dest.glob("*.ipynb"): old.unlink()
    names = []
    for name, s in sorted(man.get("stages", {}).items()):
        p = src/f"{name}.ipynb"
        if s.get("status") != "ok" or not p.is_file(): continue
        nb = json.loads(p.read_text(encoding="utf-8"))
        for r in sorted(roots, key=len, reverse=True): nb = clean_notebook(nb, r)
        (dest/p.name).write_text(json.dumps(nb, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
        names.append(p.name)
    return names

# ---------------------------------------------------------------- main
def make_excerpt(run: Path, out: Path, cmd: str, note: str|None = None) -> dict[str, int]:
    "Write every excerpt file of `run` into `out` (replacing its files); returns {file: records}."
    man_path = run/"manifest.json"
    if not man_path.is_file(): raise RunError(f"{run}: no manifest.json (not a run folder)")
    man = json.loads(man_path.read_text(encoding="utf-8"))
    seed = (man.get("stages", {}).get("11_classify", {}).get("params") or {}).get("seed", 0)
    parts: dict[str, object] = {}
    parts["bootstrap_requests"], parts["bootstrap_candidates"], parts["pool_growth"] = bootstrap_parts(run)
    done = {k for k, v in man.get("stages", {}).items() if v.get("status") == "ok"}   # a stage still running is left out
    if "11_classify" in done: parts["classify"], parts["classify_examples"] = classify_parts(run, seed)
    if "12_instances" in done: parts["instances"] = instance_parts(run)
    if "13_filter" in done:
        parts["tasks"] = [{"id": t["id"], "instruction": t["instruction"], "is_classification": t.get("is_classification"),
                           "instances": [{"input": x.get("input", ""), "output": x.get("output", "")} for x in t.get("instances", [])]}
                          for t in read_jsonl(run/"13_filter"/"tasks.jsonl")]
    if "13_filter" in done: parts["funnel"] = read_csv(run/"13_filter"/"funnel.csv")
    if "15_analysis" in done:
        parts["analysis_stats"] = [{"statistic": r.pop(next(iter(r))), **r} for r in read_csv(run/"15_analysis"/"stats.csv")]
    skipped: list[dict] = []
    if "44_experiment" in done: parts.update(experiment_parts(run, skipped))
    out.mkdir(parents=True, exist_ok=True)
    for old in list(out.glob("*.jsonl")) + list(out.glob("*.json")): old.unlink()
    counts = {}
    info = run_info(run, man, cmd, note)
    info["files"] = {f"{k}.jsonl": len(v) for k, v in parts.items()}
    info["left_out"] = skipped   # tables too large for the excerpt
    (out/"run.json").write_text(json.dumps(info, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    for k, recs in parts.items():
        (out/f"{k}.jsonl").write_text("".join(dumps(r) + "\n" for r in recs), encoding="utf-8")
        counts[f"{k}.jsonl"] = len(recs)
    return counts

def _md_table(rows: list[dict], cols: list[tuple[str, str, str]]) -> list[str]:
    "A Markdown table of `rows`: columns (header, key, format)."
    out = ["| " + " | ".join(h for h, _, _ in cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        out.append("| " + " | ".join(("" if r.get(k) is None else format(r[k], f) if f else str(r[k])) for _, k, f in cols) + " |")
    return out

def summary(out: Path) -> str:
    "summary.md: the run's numbers for the README's demo section, computed from the excerpt's files in `out`."
    info = json.loads((out/"run.json").read_text(encoding="utf-8"))
    st, m = info["stages"], {k: v.get("metrics") or {} for k, v in info["stages"].items()}
    secs = {k: v["seconds"] for k, v in st.items() if v.get("seconds") is not None}
    lines = [f"The committed run is `{info['run_dir']}` (excerpt: [data/samples/demo/](data/samples/README.md); executed stage "
             f"notebooks: [examples/demo/](examples/demo)). Stage time: "
             + " · ".join(f"`{k}` {v:.0f} s" for k, v in secs.items()) + f", {sum(secs.values()) / 60:.1f} min in all"
             + (f"; {info['note']}" if info.get("note") else "") + ".", ""]
    reqs = read_jsonl(out/"bootstrap_requests.jsonl") if (out/"bootstrap_requests.jsonl").exists() else []
    if b := m.get("10_bootstrap"):
        with_machine = sum(any(c.get("source") == "machine" for c in r.get("in_context", [])) for r in reqs)
        drops = ", ".join(f"{n} {k.replace('_', ' ')}" for k, n in b["dropped_by_reason"].items())
        lines.append(f"- **Bootstrap** ({b.get('schedule', '?')} schedule): {b['requests']} requests ({with_machine} of them with machine "
                     f"instructions among their 8 in-context tasks) gave {b['candidates']} candidate instructions; "
                     f"**{b['kept']} kept** ({b['keep_rate']:.0%}); dropped: {drops}.")
    if c := m.get("11_classify"):
        from selfinstruct_nb.data import seed_tasks
        seeds = seed_tasks(); n_clf = sum(bool(t.is_classification) for t in seeds)
        lines.append(f"- **Classification**: the model called {c['classification']} of {c['instructions']} instructions classification "
                     f"tasks ({c['classification'] / c['instructions']:.0%}; the seeds' own flags: {n_clf} of {len(seeds)}, "
                     f"{n_clf / len(seeds):.0%}).")
    if i := m.get("12_instances"):
        f = m.get("13_filter", {})
        lines.append(f"- **Instances**: {i['with_instances']} of {i['tasks']} tasks got parseable instances ({i['instances']} in all); "
                     + (f"after the filters **{f['kept_tasks']} tasks with {f['kept_instances']} instances** remain "
                        f"({f['kept_classification_tasks']} classification)." if f else ""))
    if (out/"analysis_stats.jsonl").exists():
        stats = read_jsonl(out/"analysis_stats.jsonl")
        for r in stats: r["statistic"] = r["statistic"].replace("  - ", "- ")
        lines += ["", "The generated set after the filters beside the seeds (the paper's Table 1 statistics):", ""]
        lines += _md_table(stats, [("statistic", "statistic", ""), ("generated", "generated", ""), ("seed", "seed", "")])
    logs = read_jsonl(out/"experiment_train_log.jsonl") if (out/"experiment_train_log.jsonl").exists() else []
    if logs:
        lines += ["", "The two fine-tunes (loss per token; held-out: a seeded tenth of each set's tasks, never trained on):", ""]
        lines += _md_table(logs, [("fine-tune", "fine_tune", ""), ("train records", "train_records", ""), ("epochs", "epochs", ".2f"),
                                  ("steps", "steps", ""), ("tokens", "trained_tokens", ""),
                                  ("rows cut before the answer", "rows_without_answer", ""), ("lr", "lr", ".0e"),
                                  ("loss start", "loss_start", ".3f"), ("loss end", "loss_end", ".3f"),
                                  ("held-out, base", "heldout_loss_base", ".3f"), ("held-out, tuned", "heldout_loss", ".3f")])
    models = read_jsonl(out/"experiment_models.jsonl") if (out/"experiment_models.jsonl").exists() else []
    if models:
        lines += ["", "The three models on the 252 user-oriented instructions (log-likelihood per gold token on every item; "
                  "ROUGE-L of a greedy answer on a seeded sample):", ""]
        lines += _md_table(models, [("model", "model", ""), ("log-lik./token", "loglik_per_token", ".3f"), ("items", "loglik_items", ""),
                                    ("ROUGE-L", "rougeL", ".3f"), ("items", "rouge_items", ""), ("answer words", "answer_words", ".1f"),
                                    ("answers cut at their limit", "cut_at_limit", ""), ("gold longer than the cap", "gold_over_cap", "")])
    pairs = read_jsonl(out/"experiment_pairs.jsonl") if (out/"experiment_pairs.jsonl").exists() else []
    if pairs:
        for p_ in pairs: p_["pair"], p_["interval"] = f"{p_['a']} - {p_['b']}", f"[{p_['lo']:.3f}, {p_['hi']:.3f}]"
        lines += ["", "Paired differences over items, with 95% bootstrap intervals:", ""]
        lines += _md_table(pairs, [("pair", "pair", ""), ("measure", "measure", ""), ("items", "items", ""), ("difference", "diff", ".3f"),
                                   ("95% interval", "interval", ""), ("0 outside", "excludes_zero", "")])
        outside = [f"{p_['pair']} on {p_['measure']} ({p_['diff']:+.3f})" for p_ in pairs if p_["excludes_zero"]]
        lines += ["", "Differences whose 95% interval excludes 0: " + ("; ".join(outside) if outside else "none") + "; the "
                  "others cannot be told from noise with these items."]
    if logs and models:
        words = {r["model"]: r["answer_words"] for r in models}
        from selfinstruct_nb.experiment import heldout_verdicts
        lines += ["", "Held-out loss per fine-tune: " + " ".join(heldout_verdicts(logs))
                  + " Mean answer length in words: " + ", ".join(f"{m} {w:.1f}" for m, w in words.items()) + "."]
    return "\n".join(lines) + "\n"

def readme(info: dict, sizes: dict[str, int], examples: list[str]) -> str:
    "data/samples/README.md: where the excerpt comes from, how it was made, how to load it, and every file's fields."
    st = info["stages"]
    secs = " · ".join(f"`{k}` {v['seconds']:.0f} s" for k, v in st.items() if v.get("seconds") is not None)
    t = info.get("teacher") or {}
    lines = ["# data/samples", "",
             "Excerpts of real runs, committed so that the notebooks can show what the model really wrote. Each excerpt is made "
             "from a run folder by `tools/sample_run.py` (which also commits the run's executed stage notebooks under "
             "`examples/<profile>/`) and regenerated from a new real run whenever the demo changes; it is never edited by hand.",
             "", f"## `{info['profile']}/`: one `{info['profile']}` run", "",
             f"- **Run**: `{info['run_dir']}`, status {info['status']}, started {info['created_at']}; command "
             f"`{' '.join(info.get('command') or [])}`; commit `{(info.get('commit') or '?')[:12]}`"
             f"{' (with uncommitted changes)' if info.get('dirty') else ''}; {info['platform'].get('cpus')} CPUs.",
             f"- **Model**: `{t.get('model', '?')}` ({t.get('backend', '?')}); model-generated text falls under its model's terms.",
             f"- **Stage time**: {secs}." + (f" {info['note']}" if info.get("note") else ""),
             *([f"- **Resumed**: the stages ran at different commits: " + "; ".join(
                 f"`{k}` at `{(v.get('git_commit') or '?')[:12]}`" for k, v in st.items()) + "."]
               if len({v.get("git_commit") for v in st.values() if v.get("git_commit")}) > 1 else []),
             f"- **Made by**: `{info['made_by']}`" + (f", with the executed notebooks {', '.join(f'`{x}`' for x in examples)} in "
                                                     f"`examples/{info['profile']}/`" if examples else "") + ".",
             f"- **Size**: {sum(sizes.values()) / 1000:.0f} kB in {len(sizes)} files.", "",
             "**Regenerate** from a new real run with the same command on its folder, then re-execute the notebooks that quote "
             "the excerpt (`python tools/run_nbs.py nbs/000_tour.ipynb nbs/08_excerpt.ipynb` and the core notebooks 11-17, 44) "
             "and check them all (`python tools/run_nbs.py --check`, which also checks that `examples/<profile>/` and "
             "`run.json` name the same run).", "",
             "**Load it** with `selfinstruct_nb.excerpt` (`nbs/08_excerpt.ipynb`): `excerpt(\"bootstrap_requests\")` gives the "
             "records of `bootstrap_requests.jsonl`, `excerpt(\"run\")` the dict of `run.json`.", "",
             "| file | records | kB | what |", "|---|---|---|---|"]
    for name, n in sizes.items():
        key = name if name in SCHEMA else "experiment_*.jsonl" if name.startswith("experiment_") else None
        recs = "" if name == "run.json" else info["files"].get(name, "")
        lines.append(f"| `{name}` | {recs} | {n / 1000:.0f} | {SCHEMA[key][0] if key else ''} |")
    lines += ["", "### Fields", ""]
    for name, (what, fields) in SCHEMA.items():
        lines += [f"**`{name}`**: {what}.", ""] + [f"- `{f}`: {d}" for f, d in fields] + [""]
    return "\n".join(lines)

def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run_dir", help="a run folder (outputs/<profile>-<time>)")
    ap.add_argument("--out", default=str(SAMPLES), help="parent folder of the excerpt (default data/samples): writes <out>/<profile>/")
    ap.add_argument("--examples", default=str(EXAMPLES), help="parent folder of the executed notebooks (default examples): writes <examples>/<profile>/")
    ap.add_argument("--figures", default=str(ROOT/"figures"), help="parent folder of the pipeline figure (default figures): writes <figures>/<profile>/pipeline.{png,pdf}")
    ap.add_argument("--no-notebooks", action="store_true", help="write the excerpt only")
    ap.add_argument("--note", default=None, help="a sentence about the run for run.json and the README (e.g. the machine's load)")
    ap.add_argument("--max-bytes", type=int, default=MAX_BYTES, help=f"fail if the excerpt is larger (default {MAX_BYTES})")
    a = ap.parse_args(argv)
    run = Path(a.run_dir)
    try:
        if not (run/"manifest.json").is_file(): raise RunError(f"{a.run_dir}: no manifest.json (not a run folder)")
        man = json.loads((run/"manifest.json").read_text(encoding="utf-8"))
        profile = man.get("profile") or "run"
        rel_run = man.get("run_dir") or run.as_posix()
        cmd = f"python tools/sample_run.py {rel_run}"
        out = Path(a.out)/profile
        counts = make_excerpt(run, out, cmd, a.note)
        (out/"summary.md").write_text(summary(out), encoding="utf-8")
    except RunError as e:
        print(f"sample_run: {e}", file=sys.stderr); return 2
    sizes = {p.name: p.stat().st_size for p in sorted(out.iterdir(), key=lambda p: (ORDER.index(p.name) if p.name in ORDER else 99, p.name))
             if p.is_file()}
    size = sum(sizes.values())
    print(f"{out}: {len(counts) + 1} files, {size / 1000:.0f} kB: " + ", ".join(f"{k} {v}" for k, v in counts.items()))
    names = []
    if not a.no_notebooks:
        names = copy_notebooks(run, man, Path(a.examples)/profile)
        print(f"{Path(a.examples)/profile}: {len(names)} executed stage notebooks ({', '.join(names)})")
    import matplotlib; matplotlib.use("Agg")
    from selfinstruct_nb.analysis import save_figure
    from selfinstruct_nb.excerpt import plot_pipeline
    figs = save_figure(plot_pipeline(profile, samples=a.out), Path(a.figures)/profile, "pipeline")
    print(f"{figs[0].parent}: {', '.join(p.name for p in figs)} (the pipeline with the run's counts)")
    info = json.loads((out/"run.json").read_text(encoding="utf-8"))
    (Path(a.out)/"README.md").write_text(readme(info, sizes, names) + "\n", encoding="utf-8")
    if size > a.max_bytes:
        print(f"sample_run: {out}: {size} bytes, over the limit of {a.max_bytes}", file=sys.stderr); return 1
    return 0

if __name__ == "__main__": sys.exit(main())

#!/usr/bin/env python3
"""A small committed sample of a run's generated tasks for the docs: `data/samples/<profile>_tasks.jsonl` and a
`data/samples/README.md` entry saying where it came from (profile, command, commit, teacher, counts).

The sample is taken from `<run>/13_filter/tasks.jsonl` (the filtered tasks with their instances) when the run got that
far, else from `<run>/10_bootstrap/machine_instructions.jsonl` (instructions only); `n` tasks drawn with a fixed seed,
kept in the run's order, with only the fields a reader needs (id, instruction, is_classification, instances).

usage: python tools/sample_run.py outputs/demo-YYYYMMDD-HHMMSS [-n 20] [--seed 0]
"""
import argparse, json, random, sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = ROOT/"data"/"samples"

def read_jsonl(p: Path) -> list[dict]:
    return [json.loads(l) for l in p.read_text(encoding="utf-8").splitlines() if l.strip()]

def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run_dir", help="a run folder (outputs/<profile>-<time>)")
    ap.add_argument("-n", type=int, default=20, help="tasks in the sample (default 20)")
    ap.add_argument("--seed", type=int, default=0, help="seed of the draw (default 0)")
    ap.add_argument("--out", default=str(SAMPLES), help="folder of the samples (default data/samples)")
    a = ap.parse_args(argv)
    run = Path(a.run_dir).resolve()
    man_path = run/"manifest.json"
    if not man_path.is_file(): print(f"sample_run: {a.run_dir}: no manifest.json (not a run folder)", file=sys.stderr); return 2
    man = json.loads(man_path.read_text(encoding="utf-8"))
    src = next((p for p in (run/"13_filter"/"tasks.jsonl", run/"10_bootstrap"/"machine_instructions.jsonl") if p.is_file()), None)
    if src is None: print(f"sample_run: {a.run_dir}: neither 13_filter/tasks.jsonl nor 10_bootstrap/machine_instructions.jsonl", file=sys.stderr); return 2
    tasks = [t for t in read_jsonl(src) if t.get("source", "machine") == "machine"]
    if not tasks: print(f"sample_run: {src}: no machine-generated tasks", file=sys.stderr); return 2
    keep = sorted(random.Random(a.seed).sample(range(len(tasks)), min(a.n, len(tasks))))
    rows = [{"id": tasks[i]["id"], "instruction": tasks[i]["instruction"], "is_classification": tasks[i].get("is_classification"),
             "instances": [{"input": x.get("input", ""), "output": x.get("output", "")} for x in tasks[i].get("instances", [])]}
            for i in keep]
    profile = man.get("profile", "run")
    samples = Path(a.out).resolve()
    out = samples/f"{profile}_tasks.jsonl"
    samples.mkdir(parents=True, exist_ok=True)
    out.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    boot = run/"10_bootstrap"/"metrics.json"
    teacher = json.loads(boot.read_text()).get("teacher", {}) if boot.is_file() else {}
    git = man.get("git", {})
    stage = src.parent.name
    note = (f"## `{out.name}`\n\n{len(rows)} of the {len(tasks)} machine-generated tasks in `{stage}/{src.name}` of a "
            f"`{profile}` run (drawn with seed {a.seed}, in the run's order). Teacher: `{teacher.get('model', '?')}` "
            f"({teacher.get('backend', '?')}; model-generated text falls under its model's terms). Run status when sampled: "
            f"{man.get('status', '?')}; commit `{(git.get('commit') or '?')[:12]}`"
            f"{' (with uncommitted changes)' if git.get('dirty') else ''}. Command: `{' '.join(man.get('command', []))}`.\n"
            f"Made by `python tools/sample_run.py {Path(man.get('run_dir', a.run_dir)).as_posix()} -n {a.n} --seed {a.seed}`.\n")
    readme = samples/"README.md"
    head = "# data/samples\n\nSmall samples of runs' generated data, committed for the docs. Each file is described below.\n\n"
    text = readme.read_text(encoding="utf-8") if readme.is_file() else head
    start = text.find(f"## `{out.name}`")
    if start >= 0:  # replace this file's entry
        end = text.find("\n## ", start + 1)
        text = text[:start] + note + (text[end + 1:] if end >= 0 else "")
    else: text = text.rstrip("\n") + "\n\n" + note
    readme.write_text(text, encoding="utf-8")
    print(f"{out}: {len(rows)} tasks from {stage}/{src.name}; {readme.name} updated")
    return 0

if __name__ == "__main__": sys.exit(main())

#!/usr/bin/env python3
"""README.md from nbs/index.ipynb (nbdev-readme needs quarto; this needs nothing): its markdown cells in order, its
code cells (other than `#| hide` ones) as Python blocks; a line `<!-- include: PATH -->` is replaced by that file
(the demo's numbers, computed by tools/sample_run.py). Also checks the status column of the stage table against the
notebooks in nbs/pipeline/ ("written" when the notebook exists, "planned" when it does not).

usage: python tools/readme.py           write README.md (exit 1 if the stage table is out of date)
       python tools/readme.py --check   write nothing; exit 1 if README.md or the stage table is out of date
"""
import json, re, sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
INDEX, README, PIPELINE = ROOT/"nbs"/"index.ipynb", ROOT/"README.md", ROOT/"nbs"/"pipeline"
HEADER = "<!-- Generated from nbs/index.ipynb by tools/readme.py: edit the notebook, then run the tool. -->\n\n"

INCLUDE = re.compile(r"^<!-- include: (\S+) -->$", re.M)

def include(src: str) -> str:
    "A markdown cell with each `<!-- include: PATH -->` line replaced by that file (project-relative): numbers a tool computed."
    def one(m):
        p = ROOT/m[1]
        if not p.is_file(): raise SystemExit(f"{INDEX.relative_to(ROOT)}: include: {m[1]} not found")
        return p.read_text(encoding="utf-8").strip()
    return INCLUDE.sub(one, src)

def render(nb: dict) -> str:
    "The README text of a notebook."
    parts = []
    for c in nb["cells"]:
        src = "".join(c["source"]) if isinstance(c["source"], list) else c["source"]
        if c["cell_type"] == "markdown": parts.append(include(src.strip()))
        elif c["cell_type"] == "code" and src.strip() and not src.lstrip().startswith("#| hide"):
            parts.append(f"```python\n{src.strip()}\n```")
    return HEADER + "\n\n".join(p for p in parts if p) + "\n"

def stage_table_errors(text: str) -> list[str]:
    "Rows of the stage table whose status disagrees with nbs/pipeline/, and stage notebooks missing from it."
    errors, listed = [], set()
    for line in text.splitlines():
        m = re.match(r"\|\s*`(\d+_\w+)`\s*\|.*\|\s*(\w+)\s*\|\s*$", line)
        if not m: continue
        stage, status = m[1], m[2]
        listed.add(stage)
        want = "written" if (PIPELINE/f"{stage}.ipynb").exists() else "planned"
        if status != want: errors.append(f"{INDEX.relative_to(ROOT)}: stage table: {stage} says '{status}', should be '{want}'")
    for nb in sorted(PIPELINE.glob("[0-9]*_*.ipynb")):
        if nb.stem not in listed: errors.append(f"{INDEX.relative_to(ROOT)}: stage table: {nb.stem} is missing")
    return errors

def main(argv) -> int:
    text = render(json.loads(INDEX.read_text(encoding="utf-8")))
    errors = stage_table_errors(text)
    if "--check" in argv:
        if not README.exists() or README.read_text(encoding="utf-8") != text:
            errors.append("README.md differs from nbs/index.ipynb: run python tools/readme.py")
    else: README.write_text(text, encoding="utf-8")
    for e in errors: print(e, file=sys.stderr)
    return 1 if errors else 0

if __name__ == "__main__": sys.exit(main(sys.argv[1:]))

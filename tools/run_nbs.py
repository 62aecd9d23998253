#!/usr/bin/env python3
"""Execute the library notebooks and commit their outputs; check that every cell that displays something has its output.

Execution (the default) runs every cell of each notebook top to bottom, slow cells included (`#| eval: false` ones
excepted, as nbdev does), in the notebook's folder on a fresh kernel of this interpreter, as a reader in Jupyter would:
no IN_TEST, MPLBACKEND unset (figures drawn inline), PYTHONHASHSEED=0, TQDM_DISABLE=1 (bars off where a caller leaves
tqdm's default). It writes the outputs back without progress bars or widget state (their elapsed times are not a
result) and cleans the notebook with nbdev's cleaner, which keeps outputs (`clear_all = false` in pyproject.toml) and
drops memory addresses from reprs. A notebook whose cell fails is left as it was; the tool names the cell and error.

The check (`--check`) only reads the notebooks (well under a second). A code cell *displays something* when, outside
function and class bodies, it ends in an expression (not followed by `;`) other than a test call (`test_eq`,
`test_fail`, `expect_fail`, ...) or a method that returns None (`.append`, `.tight_layout`, ...), or it calls
`print`/`display`, or it draws (calls `plot_*`, `plt.*`, `.plot(`, `.bar(`...). Each such cell must carry its committed
output (a drawing cell: an image). Every output must also be clean: no error, no stderr (warnings, log lines), no
progress bar, no absolute path, no memory address, no loopback port (a test server's, new on every run), no U+FFFD
replacement character or control character (random bytes decoded as text), no image twice in one cell. It prints the counts per notebook and
in total, then one line per problem; exit 1 if there is any. It also checks the committed executed stage notebooks of
a real run (`examples/<profile>/`, made with the excerpt by `tools/sample_run.py`) the same way, and that they and
the excerpt `data/samples/<profile>/run.json` name the same run and the same finished stages.

usage: python tools/run_nbs.py [NB ...] [--workers N] [--timeout S]   execute NBs (default: nbs/[0-9]*.ipynb), write back
       python tools/run_nbs.py --check [NB ...]                        count and check the committed outputs (default: the
                                                                       library notebooks and examples/<profile>/*.ipynb)
Run inside the project's venv with SELFINSTRUCT_DATA set to the data mirror (as for tools/test); about 7 minutes for
all notebooks on a busy 2-core machine.
"""
from __future__ import annotations
import argparse, ast, json, os, re, shutil, subprocess, sys, tempfile, time, unicodedata
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NBS = ROOT/"nbs"

EXAMPLES, SAMPLES = ROOT/"examples", ROOT/"data"/"samples"

def library_notebooks() -> list[Path]:
    "The library notebooks: `nbs/NN_name.ipynb` (not `index.ipynb`, not `nbs/pipeline/`)."
    return sorted(NBS.glob("[0-9]*.ipynb"))

def example_notebooks() -> list[Path]:
    "A real run's executed stage notebooks, committed by `tools/sample_run.py`: `examples/<profile>/NN_stage.ipynb`."
    return sorted(EXAMPLES.glob("*/[0-9]*.ipynb"))

def _rel(p: Path) -> str:
    try: return str(Path(p).resolve().relative_to(ROOT))
    except ValueError: return str(p)

# ---------------------------------------------------------------- which cells display something (static, no kernel)
TEST_CALLS = {"test_eq", "test_ne", "test_fail", "test_close", "test_is", "test_warns", "test_stdout", "test_eq_type",
              "test_shuffled", "test_fig_exists", "test_sig", "test", "expect_fail", "assert_equal"}
NONE_METHODS = {"append", "extend", "insert", "update", "clear", "sort", "reverse", "mkdir", "unlink", "close", "stop",
                "shutdown", "join", "seed", "manual_seed", "set_num_threads", "rmtree", "remove", "touch", "chdir",
                "setLevel", "use", "tight_layout", "savefig"}
DRAW_ATTRS = {"plot", "hist", "bar", "barh", "scatter", "imshow", "pie", "subplots", "figure", "show"}

def _source(cell) -> str:
    s = cell["source"]
    return "".join(s) if isinstance(s, list) else s

def _code_lines(src: str) -> str:
    "The cell's Python: directive lines (`#| ...`) and shell/magic lines dropped (`!cmd` kept as a print)."
    out = []
    for line in src.splitlines():
        t = line.lstrip()
        if t.startswith("#|"): continue
        if t.startswith("!"): out.append(line[:len(line) - len(t)] + "print()"); continue
        if t.startswith("%"): out.append(line[:len(line) - len(t)] + "pass"); continue
        out.append(line)
    return "\n".join(out)

def _top_level_calls(tree: ast.Module):
    "Calls made when the cell runs: everything outside function, class and lambda bodies."
    todo = list(tree.body)
    while todo:
        n = todo.pop()
        if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Lambda)):
            if not isinstance(n, ast.Lambda): todo.extend(n.decorator_list)
            continue
        if isinstance(n, ast.Call): yield n
        todo.extend(ast.iter_child_nodes(n))

def _call_name(call: ast.Call) -> tuple[str, str]:
    "(`name`, `attr`): `f(...)` -> (f, ''), `a.b.f(...)` -> (a, f)."
    f = call.func
    if isinstance(f, ast.Name): return f.id, ""
    if isinstance(f, ast.Attribute):
        base = f.value
        while isinstance(base, ast.Attribute): base = base.value
        return (base.id if isinstance(base, ast.Name) else ""), f.attr
    return "", ""

def cell_kind(src: str) -> str|None:
    "'draws', 'shows' (ends in a displayed expression or prints) or None (defines or asserts only)."
    code = _code_lines(src)
    if not code.strip(): return None
    try: tree = ast.parse(code)
    except SyntaxError: return "shows"
    calls = list(_top_level_calls(tree))
    for c in calls:
        name, attr = _call_name(c)
        if (not attr and name.startswith("plot_")) or attr.startswith("plot_") or (name == "plt" and attr in DRAW_ATTRS) \
           or (attr in DRAW_ATTRS - {"figure", "show"} and name not in {"plt"}): return "draws"
    if any(_call_name(c) in {("print", ""), ("display", "")} for c in calls): return "shows"
    last = tree.body[-1] if tree.body else None
    if isinstance(last, ast.Expr) and not code.rstrip().endswith(";"):
        v = last.value
        if isinstance(v, ast.Call):
            name, attr = _call_name(v)
            if (not attr and name in TEST_CALLS) or attr in NONE_METHODS: return None
        if isinstance(v, ast.Constant) and v.value is None: return None
        return "shows"
    return None

# ---------------------------------------------------------------- what a committed output must not contain
# an absolute path: a slash-rooted path of two or more parts (not a URL), or a home-relative one
_ABS_PATH = re.compile(r"(?<![\w:/.])(?:/(?:home|work|tmp|root|Users|usr|opt|var|private|mnt|srv|data)/[\w.-]+|~/[\w.-]+)")
_ADDRESS = re.compile(r"\bat 0x[0-9a-fA-F]{4,}|\b0x[0-9a-fA-F]{8,}\b")
_WARNING = re.compile(r"\b\w*Warning\b|\bwarnings\.warn\b|\bWARNING\b")
_BAR = re.compile(r"\d+%\|.*\||it/s\]|s/it\]")
# a loopback address with a port: a test server's port, new on every execution
_LOOPBACK = re.compile(r"(?<![\w.])(?:127\.\d+\.\d+\.\d+|localhost|0\.0\.0\.0|\[::1\]):\d{2,5}\b")

def _control_chars(t: str) -> list[str]:
    "Control characters other than newline, tab and carriage return (random bytes decoded, terminal escapes)."
    return sorted({ch for ch in t if unicodedata.category(ch) == "Cc" and ch not in "\n\t\r"})

def _text(o: dict) -> str:
    if o.get("output_type") == "stream": t = o.get("text", "")
    else: t = o.get("data", {}).get("text/plain", "") if o.get("output_type") != "error" else "\n".join(o.get("traceback", []))
    return "".join(t) if isinstance(t, list) else t

# a tqdm line ends in its time bracket: "[00:01<00:02, 3.50it/s, ok=9]", "[00:00<?, ?it/s]", "12it [00:00, 80.1it/s]"
_BAR_LINE = re.compile(r"\[(?:\d+:)?\d{2}:\d{2}(?:<[^,\]]*)?,[^\]]*\]\s*$")

def is_progress_output(o) -> bool:
    "A progress bar's output: a stream of tqdm lines only, a widget view (tqdm.notebook) or an HTML <progress> table."
    data = o.get("data", {})
    if "application/vnd.jupyter.widget-view+json" in data: return True
    if "<progress" in "".join(data.get("text/html", "")): return True  # transformers' notebook training table
    if o.get("output_type") != "stream" or o.get("name") != "stderr": return False
    parts = [x for x in re.split(r"[\r\n]", "".join(o.get("text", ""))) if x.strip()]
    return all(_BAR_LINE.search(x) for x in parts)

def output_problems(outputs: list[dict]) -> list[str]:
    "What is wrong with one cell's outputs (empty list: clean)."
    bad, images = [], []
    for o in outputs:
        if o.get("output_type") == "error": bad.append(f"error output {o.get('ename')}"); continue
        if is_progress_output(o) or (o.get("name") == "stderr" and _BAR.search(_text(o))): bad.append("progress bar"); continue
        if o.get("output_type") == "stream" and o.get("name") == "stderr":  # a warning or a library's log line
            bad.append(f"stderr output ({' '.join(_text(o).split())[:60]})")
        texts = [_text(o)] + [("".join(v) if isinstance(v, list) else v) for k, v in o.get("data", {}).items()
                              if k in ("text/html", "text/markdown", "text/latex")]
        for t in texts:
            if m := _WARNING.search(t): bad.append(f"warning ({m[0]})")
            if m := _ABS_PATH.search(t): bad.append(f"absolute path ({m[0]})")
            if m := _ADDRESS.search(t): bad.append(f"memory address ({m[0]})")
            if m := _LOOPBACK.search(t): bad.append(f"loopback port ({m[0]})")
            if "\ufffd" in t: bad.append("replacement character (U+FFFD: bytes that are not text)")
            if cc := _control_chars(t): bad.append(f"control characters ({', '.join(f'U+{ord(c):04X}' for c in cc)})")
        for k in ("image/png", "image/svg+xml", "image/jpeg"):
            if k in o.get("data", {}):
                img = o["data"][k]; img = "".join(img) if isinstance(img, list) else img
                if img in images: bad.append("the same image twice")
                images.append(img)
    return sorted(set(bad), key=bad.index)

def has_image(outputs: list[dict]) -> bool:
    return any(k.startswith("image/") for o in outputs for k in o.get("data", {}))

def injected_run_dir(nb: dict) -> str|None:
    "The `run_dir` papermill injected into an executed stage notebook (None if it has none)."
    for c in nb.get("cells", []):
        if "injected-parameters" in c.get("metadata", {}).get("tags", []):
            m = re.search(r"^run_dir\s*=\s*['\"]([^'\"]+)['\"]", _source(c), re.M)
            if m: return m.group(1)
    return None

def run_problems(folder: Path) -> list[str]:
    "An `examples/<profile>/` folder against its excerpt `data/samples/<profile>/run.json`: the same run, every ok stage."
    info_path = SAMPLES/folder.name/"run.json"
    if not info_path.is_file(): return [f"{_rel(folder)}: no excerpt {_rel(info_path)} names the run of these notebooks"]
    info, bad = json.loads(info_path.read_text(encoding="utf-8")), []
    nbs = sorted(folder.glob("[0-9]*.ipynb"))
    for p in nbs:
        rd = injected_run_dir(json.loads(p.read_text(encoding="utf-8")))
        if rd != info.get("run_dir"): bad.append(f"{_rel(p)}: executed in run {rd!r}, the excerpt {_rel(info_path)} is of {info.get('run_dir')!r}")
    want = {f"{k}.ipynb" for k, v in info.get("stages", {}).items() if v.get("status") == "ok"}
    have = {p.name for p in nbs}
    if want != have: bad.append(f"{_rel(folder)}: stage notebooks {sorted(have)}, the excerpt's run has ok stages {sorted(want)}")
    return bad

def check(paths: list[Path]) -> int:
    "Print per notebook and in total: cells that display something, and how many carry their output; exit status."
    n_need = n_have = n_fig = n_fig_ok = n_code = 0
    problems = []
    for p in paths:
        nb = json.loads(p.read_text(encoding="utf-8"))
        need = have = 0
        if "widgets" in nb.get("metadata", {}): problems.append(f"{_rel(p)}: widget state in the notebook's metadata (progress bars)")
        for i, c in enumerate(nb["cells"]):
            if c["cell_type"] != "code": continue
            n_code += 1
            kind, outs = cell_kind(_source(c)), c.get("outputs", [])
            where = f"{_rel(p)}: cell {i}"
            for b in output_problems(outs): problems.append(f"{where}: {b}")
            if kind is None: continue
            need += 1
            ok = bool(outs) and (kind != "draws" or has_image(outs))
            have += ok
            if kind == "draws": n_fig += 1; n_fig_ok += has_image(outs)
            if not ok:
                first = next((l for l in _code_lines(_source(c)).splitlines() if l.strip()), "")[:70]
                problems.append(f"{where}: {'draws but has no image' if kind == 'draws' else 'displays something but has no output'}: {first}")
        print(f"  {_rel(p):<32} {have:>3} / {need:<3} cells with their output")
        n_need += need; n_have += have
    for folder in sorted({p.resolve().parent for p in paths if p.resolve().parent.parent == EXAMPLES}):
        problems += run_problems(folder)
    print(f"notebooks: {len(paths)}, code cells: {n_code}; cells that display something: {n_need}, "
          f"with their committed output: {n_have}; figure cells: {n_fig}, with their figure: {n_fig_ok}")
    for pr in problems: print(pr, file=sys.stderr)
    if problems: print(f"run_nbs --check: {len(problems)} problem(s); re-execute with: python tools/run_nbs.py NB ...", file=sys.stderr)
    else: print("run_nbs --check: OK (every displaying cell has its output; all outputs clean)")
    return 1 if problems else 0

# ---------------------------------------------------------------- execution
def kernel_env() -> dict:
    "The kernel's environment: this one, as a reader's Jupyter would have it, minus test flags and non-inline backends."
    env = dict(os.environ)
    for k in ("IN_TEST", "MPLBACKEND", "NBDEV_TEST_FLAGS"): env.pop(k, None)
    env.update(PYTHONHASHSEED="0", TQDM_DISABLE="1", TOKENIZERS_PARALLELISM="false")
    return env

def execute(path: Path, timeout: int = 1800, kernel: str = "python3") -> tuple[str, float, str|None]:
    "Execute one notebook in its folder and write it back cleaned; (path, seconds, error or None)."
    import nbformat
    from jupyter_client import KernelManager
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError
    path = Path(path).resolve()
    t0 = time.time()
    nb = nbformat.read(path, as_version=4)
    skipped = []
    for c in nb.cells:  # `#| eval: false` cells are not run by nbdev either: keep them, unrun
        if c.cell_type == "code" and re.search(r"^#\|\s*eval:\s*false", c.source, re.M):
            c.metadata.setdefault("tags", []).append("skip-execution"); skipped.append(c)
    # IPC sockets beside the connection file: a local kernel needs no TCP port (and so gives no encryption warning)
    sockets = tempfile.mkdtemp(prefix="run_nbs-")  # an absolute place: the kernel runs in the notebook's folder
    km = KernelManager(kernel_name=kernel, transport="ipc", ip=os.path.join(sockets, "kernel"))
    client = NotebookClient(nb, km=km, timeout=timeout, kernel_name=kernel, record_timing=False, allow_errors=False, store_widget_state=False,
                            resources={"metadata": {"path": str(path.parent)}}, skip_cells_with_tag="skip-execution")
    try: client.execute(env=kernel_env())  # keyword arguments go to the kernel manager's start_kernel
    except CellExecutionError as e:
        at = next((i for i, c in enumerate(nb.cells) if any(o.get("output_type") == "error" for o in c.get("outputs", []))), None)
        return _rel(path), time.time() - t0, f"cell {at}: {e.ename}: {' '.join(str(e.evalue).split())[:300]}"
    except Exception as e:  # noqa: BLE001 -- a dead kernel or a timeout: name it, leave the notebook as it was
        return _rel(path), time.time() - t0, f"{type(e).__name__}: {' '.join(str(e).split())[:300]}"
    finally:  # a kernel manager passed in is ours to shut down, not nbclient's
        if km.has_kernel: km.shutdown_kernel()
        shutil.rmtree(sockets, ignore_errors=True)
    nb.metadata.pop("widgets", None)  # the state of the progress-bar widgets dropped below
    for c in nb.cells:  # progress bars say how long a run took, not what it gave: the committed notebook drops them
        if c.cell_type == "code": c.outputs = [o for o in c.get("outputs", []) if not is_progress_output(o)]
    for c in skipped:
        c.metadata["tags"].remove("skip-execution")
        if not c.metadata["tags"]: del c.metadata["tags"]
    nbformat.write(nb, path)
    r = subprocess.run([sys.executable, "-c", "import sys; from nbdev.clean import nbdev_clean; nbdev_clean(fname=sys.argv[1])", str(path)],
                       cwd=ROOT, capture_output=True, text=True)
    if r.returncode: return _rel(path), time.time() - t0, f"nbdev-clean failed: {r.stderr.strip().splitlines()[-1:]}"
    return _rel(path), time.time() - t0, None

def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("notebooks", nargs="*", help="notebooks to execute or check (default: nbs/[0-9]*.ipynb)")
    ap.add_argument("--check", action="store_true", help="execute nothing: count the cells that display something and check their committed outputs")
    ap.add_argument("--workers", type=int, default=1, help="notebooks executed at once (default 1)")
    ap.add_argument("--timeout", type=int, default=1800, help="seconds one cell may run (default 1800)")
    a = ap.parse_args(argv)
    paths = [Path(p) for p in a.notebooks] or (library_notebooks() + example_notebooks() if a.check else library_notebooks())
    missing = [str(p) for p in paths if not p.is_file()]
    if missing: print(f"run_nbs: no such notebook: {', '.join(missing)}", file=sys.stderr); return 2
    if a.check: return check(paths)
    if not os.environ.get("SELFINSTRUCT_DATA"):
        print("run_nbs: SELFINSTRUCT_DATA is not set; data is read from data/raw/ or downloaded", file=sys.stderr)
    failed = 0
    if a.workers <= 1: results = (execute(p, a.timeout) for p in paths)
    else: results = ProcessPoolExecutor(a.workers).map(execute, paths, [a.timeout] * len(paths))
    for name, secs, err in results:
        print(f"{name}: {'ok' if err is None else 'FAILED: ' + err} ({secs:.0f} s)", flush=True)
        failed += err is not None
    if failed: print(f"run_nbs: {failed} notebook(s) failed and were left as they were", file=sys.stderr)
    return 1 if failed else 0

if __name__ == "__main__": sys.exit(main())

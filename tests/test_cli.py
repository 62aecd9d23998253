"""The package's shape: no import cycle between its modules (every import statement counts, also those inside
functions), backends and project-named models registered by the modules that define them, and one command line
above the runner and the sweep whose subcommands share their common flags."""
import ast, os, subprocess, sys
from pathlib import Path

import selfinstruct_nb
from selfinstruct_nb.sweep import _toy_project

PKG = Path(selfinstruct_nb.__file__).parent
SCRIPT = Path(sys.executable).parent/"selfinstruct-nb"


def import_graph(pkg: Path = PKG) -> dict[str, set[str]]:
    "module -> the package modules it imports, from every import statement in its source."
    mods = {p.stem for p in pkg.glob("*.py")}
    graph = {}
    for p in pkg.glob("*.py"):
        edges = set()
        for n in ast.walk(ast.parse(p.read_text(encoding="utf-8"))):
            if isinstance(n, ast.ImportFrom):
                base = (f"{pkg.name}.{n.module}" if n.module else pkg.name) if n.level == 1 else (n.module or "")
                if base == pkg.name: edges |= {a.name for a in n.names if a.name in mods}
                elif base.startswith(pkg.name + "."): edges.add(base.split(".")[1])
            elif isinstance(n, ast.Import):
                edges |= {a.name.split(".")[1] for a in n.names if a.name.startswith(pkg.name + ".")}
        graph[p.stem] = edges - {p.stem}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str]|None:
    "One cycle of `graph` as a path [a, b, ..., a], or None."
    state, stack = {}, []
    def visit(m):
        state[m] = "open"; stack.append(m)
        for n in sorted(graph.get(m, ())):
            if state.get(n) == "open": return stack[stack.index(n):] + [n]
            if n not in state and (c := visit(n)): return c
        state[m] = "done"; stack.pop()
    for m in sorted(graph):
        if m not in state and (c := visit(m)): return c
    return None


def test_find_cycle_finds_one():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set(), "c": {"a", "b"}}) is None


def test_import_graph_has_no_cycle():
    g = import_graph()
    assert {"llm", "gemma", "tinymodel", "runner", "sweep", "cli"} <= set(g)
    assert find_cycle(g) is None, " -> ".join(find_cycle(g))
    # the interface knows no concrete backend; the command sits above the runner and the sweep
    assert "gemma" not in g["llm"] and "gemma" not in g["tinymodel"] and "cli" not in g["runner"] | g["sweep"]
    assert {"runner", "sweep"} <= g["cli"]


def test_registries_load_by_name():
    "A fresh interpreter: asking llm for `llamacpp` or tinymodel for `gemma-3-270m` imports the module that registers it."
    code = ("import sys; from selfinstruct_nb import llm, tinymodel\n"
            "assert 'selfinstruct_nb.gemma' not in sys.modules\n"
            "try: llm.make_backend('llamacpp', '/no/such/model.gguf')\n"
            "except Exception as e: print(type(e).__name__)\n"
            "print(sorted(llm.BACKENDS), sorted(tinymodel.NAMED_MODELS))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    err, kinds = r.stdout.strip().splitlines()
    assert err in ("ModelFileError", "ModelLoadError"), r.stdout   # a missing file (or no llama-cpp-python): the backend's own error
    assert kinds == "['llamacpp', 'openai', 'transformers'] ['gemma-3-270m']"


def test_sweep_takes_the_flags_run_takes(tmp_path):
    toy = _toy_project(tmp_path/"proj")
    env = {**os.environ, "SELFINSTRUCT_ROOT": str(toy)}
    common = ["--no-progress", "--only", "10_make", "--dry-run", "--kernel", "selfinstruct-nb"]
    for args in (["run", "toy", *common], ["sweep", "toy", "-p", "10_make.n=[1,2]", *common]):
        r = subprocess.run([str(SCRIPT), *args], cwd=toy, env=env, capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, (args, r.stdout + r.stderr)
    assert not (toy/"outputs").exists()

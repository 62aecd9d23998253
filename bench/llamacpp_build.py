"""What a llama.cpp build and its weight layout cost in tokens/s, on this machine, in one run.

Configurations: each llama-cpp-python build (the environment's own, and others given as folders holding a built
`llama_cpp` package, e.g. `pip install --no-deps --target DIR llama_cpp_python-....whl`), each with llama.cpp's
extra buffer types on (its default: weights repacked for the CPU's kernels, and AMX where compiled in and the CPU
has it) and off (`use_extra_bufts = False`, plain weights). Every configuration runs in its own child process, on
the workloads of `bench/demo_generation.py` (the demo's bootstrap and instance prompts through `LLMClient`, no
cache), interleaved over `--rounds` so that a change of load hits every configuration alike. Each child also asks
one greedy prompt twice (the second call reuses the whole prompt's KV cache, as `tests/test_gemma.py` does) and
reports whether both answers agree. Prints each build's CPU features, the median tokens/s per configuration and
workload, and the ratios to the first configuration.

    python bench/llamacpp_build.py [--build NAME=DIR ...] [--rounds 3] [--requests 3] [--max-tokens 48]
"""
from __future__ import annotations
import argparse, json, os, statistics, subprocess, sys, time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FEATURES = ("AVX2", "AVX512", "AVX512_VNNI", "AVX512_BF16", "AMX_INT8", "REPACK")


def child(a) -> None:
    "One configuration: load, run the workloads, print one JSON line."
    sys.path[:0] = [str(ROOT), str(ROOT/"bench")]
    os.environ.setdefault("SELFINSTRUCT_DATA", str((ROOT.parent/"shared"/"data").resolve()))
    import llama_cpp, llama_cpp.llama_cpp as lc
    if not a.extra_bufts:   # llama-cpp-python has no argument for it: its model defaults, with the field switched off
        default = lc.llama_model_default_params
        def no_extra():
            p = default(); p.use_extra_bufts = False; return p
        lc.llama_model_default_params = no_extra
    from demo_generation import timed, workloads
    from selfinstruct_nb.gemma import GEMMA, build_features
    from selfinstruct_nb.llm import LLMClient, LLMRequest, make_backend
    t0 = time.perf_counter()
    backend = make_backend("llamacpp", GEMMA, n_ctx=4096)
    out = {"load_s": time.perf_counter() - t0, "llama_cpp": str(Path(llama_cpp.__file__).parent),
           "features": build_features(llama_cpp.llama_print_system_info().decode())}
    for w, reqs in workloads(a.requests, a.max_tokens).items(): out[w] = timed(backend, reqs)["tok_s"]
    greedy = [LLMClient(backend, cache=None).run([LLMRequest("x", prompt="Here is a list of twenty animals:\n1.",
                                                             params={"max_tokens": 24, "temperature": 0})], progress=False)[0].text
              for _ in range(2)]
    out["greedy_twice_same"] = greedy[0] == greedy[1]
    print(json.dumps(out), flush=True)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--build", action="append", default=[], metavar="NAME=DIR",
                    help="another build: a folder holding its llama_cpp package (repeatable); the environment's is `env`")
    ap.add_argument("--rounds", type=int, default=3, help="runs of every configuration, interleaved")
    ap.add_argument("--requests", type=int, default=3, help="requests per workload")
    ap.add_argument("--max-tokens", type=int, default=48, help="max_tokens of every request")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--extra-bufts", type=int, default=1, help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.child: return child(a)
    builds = {"env": ""}
    for b in a.build:
        name, _, d = b.partition("=")
        if not (Path(d)/"llama_cpp").is_dir(): raise SystemExit(f"--build {b}: {d}/llama_cpp not found")
        builds[name] = str(Path(d).resolve())
    configs = [(b, x) for b in builds for x in (1, 0)]
    load0 = os.getloadavg()
    print(f"{len(configs)} configurations x {a.rounds} rounds, {a.requests} requests per workload, max_tokens "
          f"{a.max_tokens}, {os.cpu_count()} CPUs, load average before {load0[0]:.2f}", flush=True)
    runs: dict = {c: [] for c in configs}
    for r in range(a.rounds):
        for b, x in configs:
            env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [builds[b], str(ROOT), os.environ.get("PYTHONPATH")]))}
            p = subprocess.run([sys.executable, __file__, "--child", "--extra-bufts", str(x), "--requests", str(a.requests),
                                "--max-tokens", str(a.max_tokens)], env=env, capture_output=True, text=True, timeout=1800)
            if p.returncode != 0: raise SystemExit(f"{b} extra_bufts={x}: exit {p.returncode}: {p.stderr.strip()[-1000:]}")
            runs[b, x].append(json.loads(p.stdout.strip().splitlines()[-1]))
            d = runs[b, x][-1]
            print(f"  round {r + 1}: {b:10} extra_bufts={x}  bootstrap {d['bootstrap']:6.1f} tok/s  instances "
                  f"{d['instances']:6.1f} tok/s  load {os.getloadavg()[0]:.2f}", flush=True)
    print("\nbuilds (llama_print_system_info):")
    for b in builds:
        d = runs[b, 1][0]
        print(f"  {b:10} {d['llama_cpp']}: " + ", ".join(f"{k} {d['features'].get(k, '-')}" for k in FEATURES))
    ref = configs[0]
    med = {c: {w: statistics.median(d[w] for d in runs[c]) for w in ("bootstrap", "instances")} for c in configs}
    print(f"\n{'build':10} {'extra_bufts':>11} {'bootstrap tok/s':>16} {'instances tok/s':>16} {'vs ' + ref[0] + ' on':>10} "
          f"{'':>6} {'greedy twice same':>18}")
    for c in configs:
        ratio = [med[c][w] / med[ref][w] for w in ("bootstrap", "instances")]
        same = sum(d["greedy_twice_same"] for d in runs[c])
        print(f"{c[0]:10} {'on' if c[1] else 'off':>11} {med[c]['bootstrap']:16.1f} {med[c]['instances']:16.1f} "
              f"{ratio[0]:9.2f}x {ratio[1]:5.2f}x {same:>10} of {len(runs[c])}")
    print(f"\n(median of {a.rounds} rounds; ratios: bootstrap, instances; load average after {os.getloadavg()[0]:.2f})")


if __name__ == "__main__":
    main()

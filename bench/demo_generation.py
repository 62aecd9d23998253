"""The demo's generation per backend, in one run: Gemma 3 270M answering the demo's own requests (Self-Instruct
instruction-generation prompts and instance-generation prompts, with the paper's sampling settings) through the
`llamacpp` backend (in-process llama.cpp, 1 thread and all threads) and the `transformers` backend (fp32, batched).
Prints requests/s and generated tokens/s of each, and each one's ratio to the first (no cache, no journal).

    python bench/demo_generation.py [--requests 8] [--max-tokens 64] [--backends llamacpp:1,llamacpp,transformers]

Needs the `demo` and `llamacpp` extras. Report `uptime` beside the numbers: on a shared machine they move with load.
"""
from __future__ import annotations
import argparse, os, sys, time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from selfinstruct_nb.bootstrap import first_prompt  # noqa: E402
from selfinstruct_nb.data import seed_tasks  # noqa: E402
from selfinstruct_nb.instances import instance_requests  # noqa: E402
from selfinstruct_nb.llm import LLMClient, LLMRequest, make_backend  # noqa: E402
from selfinstruct_nb.prompts import instruction_gen_stop  # noqa: E402


def demo_requests(n: int, max_tokens: int) -> list[LLMRequest]:
    "n instruction-generation requests (paper settings) and n instance requests (greedy), as the demo sends them."
    seeds = seed_tasks()
    boot = [LLMRequest(f"boot-{i}", prompt=first_prompt(seeds, seed=i),
                       params={"temperature": 0.7, "top_p": 0.5, "presence_penalty": 2.0, "max_tokens": max_tokens,
                               "stop": instruction_gen_stop("task"), "seed": i}) for i in range(n)]
    inst = instance_requests(seeds[:n], params={"max_tokens": max_tokens})
    return boot + inst


def make(spec: str):
    "`llamacpp:1` -> the llamacpp backend with 1 thread; `llamacpp`, `transformers` -> defaults."
    kind, _, threads = spec.partition(":")
    kw = {"n_threads": int(threads)} if threads else {}
    return make_backend(kind, "gemma-3-270m", **kw)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=8, help="requests of each kind (instruction and instance generation)")
    ap.add_argument("--max-tokens", type=int, default=64, help="new tokens per request at most")
    ap.add_argument("--backends", default="llamacpp:1,llamacpp,transformers", help="comma-separated backend specs")
    a = ap.parse_args(argv)
    reqs = demo_requests(a.requests, a.max_tokens)
    print(f"{len(reqs)} requests ({a.requests} instruction generation + {a.requests} instance generation), "
          f"max_tokens {a.max_tokens}; load average {os.getloadavg()[0]:.2f}")
    rows = []
    for spec in a.backends.split(","):
        backend = make(spec)
        client = LLMClient(backend, cache=None, concurrency=1)
        t0 = time.perf_counter()
        res = client.run(reqs, desc=spec, progress=False)
        dt = time.perf_counter() - t0
        ok = sum(r.ok for r in res)
        toks = client.stats["completion_tokens"]
        rows.append((spec, ok, toks, dt))
        del client, backend
    base = rows[0]
    print(f"{'backend':<16} {'ok':>4} {'tokens':>7} {'seconds':>8} {'req/s':>7} {'tok/s':>7} {'tok/s ratio':>11}")
    for spec, ok, toks, dt in rows:
        print(f"{spec:<16} {ok:>4} {toks:>7} {dt:>8.1f} {ok / dt:>7.2f} {toks / dt:>7.1f} {(toks / dt) / (base[2] / base[3]):>11.2f}")
    print(f"load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()

"""Generation speed of the `demo` profile's model (Gemma 3 270M) per backend, in one run: tokens/s and requests/s.

Two workloads shaped like the demo's: `bootstrap` (Self-Instruct's instruction-generation prompt, 8 in-context tasks,
the paper's sampling settings: T 0.7, top_p 0.5, presence penalty 2) and `instances` (the released code's
instance-generation prompts: ~1,650 tokens of shared few-shot text, then one task; greedy, presence penalty 1.5).
Backends: `llamacpp` (the GGUF in-process), the same with its prompt-prefix reuse switched off (each call starts
from an empty KV cache), and `transformers` (the converted fp32 folder, left-padded batches). Every request goes
through `LLMClient` without a cache, so every token is generated. Prints one table and the ratios to `transformers`.

    python bench/demo_generation.py [--requests 4] [--max-tokens 64] [--batch-size 4] [--backends llamacpp,transformers]
"""
from __future__ import annotations
import argparse, os, sys, time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("SELFINSTRUCT_DATA", str((ROOT.parent/"shared"/"data").resolve()))
from selfinstruct_nb.bootstrap import sample_prompt_instructions  # noqa: E402
from selfinstruct_nb.core import rng  # noqa: E402
from selfinstruct_nb.data import seed_tasks  # noqa: E402
from selfinstruct_nb.gemma import GEMMA  # noqa: E402
from selfinstruct_nb.llm import LLMClient, LLMRequest, make_backend  # noqa: E402
from selfinstruct_nb.prompts import (INSTRUCTION_GEN_PARAMS, instance_params, instance_prompt,  # noqa: E402
                                     instruction_gen_prompt, instruction_gen_stop)


def workloads(n: int, max_tokens: int) -> dict[str, list[LLMRequest]]:
    seeds = seed_tasks()
    instr = [t.instruction for t in seeds]
    boot = [LLMRequest(f"boot-{i}", prompt=instruction_gen_prompt(sample_prompt_instructions(instr, [], rng(0, "bench", i))),
                       params={**INSTRUCTION_GEN_PARAMS, "stop": instruction_gen_stop("task", last=16),
                               "max_tokens": max_tokens, "seed": i}) for i in range(n)]
    tasks = seeds[:n]   # a mix of classification (output-first) and other (input-first) tasks, as in the demo
    inst = [LLMRequest(f"inst-{i}", prompt=instance_prompt(t.instruction, bool(t.is_classification)),
                       params={**instance_params(bool(t.is_classification)), "max_tokens": max_tokens})
            for i, t in enumerate(tasks)]
    return {"bootstrap": boot, "instances": inst}


def timed(backend, reqs) -> dict:
    client = LLMClient(backend, cache=None)
    t0 = time.perf_counter(); res = client.run(reqs, progress=False); dt = time.perf_counter() - t0
    bad = [r.error for r in res if not r.ok]
    if bad: raise SystemExit(f"{backend!r}: {len(bad)} requests failed, first: {bad[0]}")
    st = client.last_stats
    return dict(n=len(reqs), s=dt, req_s=len(reqs) / dt, gen_tok=st["completion_tokens"], tok_s=st["completion_tokens"] / dt,
                prompt_tok=st["prompt_tokens"])


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=4, help="requests per workload")
    ap.add_argument("--max-tokens", type=int, default=64, help="max_tokens of every request")
    ap.add_argument("--batch-size", type=int, default=4, help="transformers: requests per generate call")
    ap.add_argument("--threads", type=int, default=0, help="llamacpp threads (0: the backend's default)")
    ap.add_argument("--backends", default="llamacpp,llamacpp-noreuse,transformers")
    a = ap.parse_args(argv)
    wl = workloads(a.requests, a.max_tokens)
    load0 = os.getloadavg()
    print(f"{GEMMA}: {a.requests} requests per workload, max_tokens {a.max_tokens}, {os.cpu_count()} CPUs, "
          f"load average before {load0[0]:.2f}", flush=True)
    rows, llama = {}, None
    for name in a.backends.split(","):
        t0 = time.perf_counter()
        if name.startswith("llamacpp"):
            if llama is None: llama = make_backend("llamacpp", GEMMA, n_ctx=4096, **({"n_threads": a.threads} if a.threads else {}))
            backend = llama
        elif name == "transformers": backend = make_backend("transformers", GEMMA, batch_size=a.batch_size, device="cpu")
        else: raise SystemExit(f"unknown backend {name!r}")
        load_s = time.perf_counter() - t0
        if name.startswith("llamacpp"): backend.reuse_prefix = name == "llamacpp"   # noreuse: every call from an empty KV cache
        reused0 = getattr(backend, "reused_prompt_tokens", 0)
        for w, reqs in wl.items():
            rows[name, w] = timed(backend, reqs)
            print(f"  {name:18} {w:10} {rows[name, w]['s']:7.1f} s", flush=True)
        rows[name, "load"] = load_s
        rows[name, "reused"] = getattr(backend, "reused_prompt_tokens", 0) - reused0
    print(f"\n{'backend':18} {'workload':10} {'requests':>8} {'seconds':>8} {'req/s':>7} {'gen tok':>8} {'tok/s':>7} "
          f"{'prompt tok':>10} {'vs transformers':>15}")
    for (name, w), r in rows.items():
        if w in ("load", "reused"): continue
        ref = rows.get(("transformers", w))
        ratio = f"{r['tok_s'] / ref['tok_s']:.1f}x tok/s" if ref and name != "transformers" else ""
        print(f"{name:18} {w:10} {r['n']:8} {r['s']:8.1f} {r['req_s']:7.2f} {r['gen_tok']:8} {r['tok_s']:7.1f} "
              f"{r['prompt_tok']:10} {ratio:>15}")
    for name in dict.fromkeys(n for n, _ in rows):
        print(f"{name}: model load {rows[name, 'load']:.1f} s" + (f", prompt tokens served from the KV cache {rows[name, 'reused']}"
                                                                   if name.startswith("llamacpp") else ""))
    print(f"load average after {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()

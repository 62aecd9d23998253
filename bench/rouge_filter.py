"""Benchmark: Self-Instruct's incremental ROUGE-L filter, reference (rouge-score) vs the project's (selfinstruct_nb).

In one run:
1. 2,000 candidates (real instructions and questions from SELFINSTRUCT_DATA plus perturbed near-duplicates) are
   filtered from the 175 seeds by the reference algorithm (for each candidate, rouge-score against the whole pool,
   keep if max < 0.7, add to the pool) and by `filters.InstructionPool.filter`; the keep/drop decisions and the best
   scores must be identical (asserted), and the speed ratio is printed.
2. The project's filter grows a pool to 52K instructions from synthetic candidates (real instruction openings
   recombined with real sentences, plus perturbed copies), timed: about 78K candidates. The same candidates are
   then filtered again with the exact prefilter (`exact_best=False`: a token inverted index scores only the pairs
   that can reach 0.7); the decisions must be identical (asserted), and both times are printed.
3. The prefiltered filter takes `--n` (default 1,000,000) candidates spliced reproducibly from word n-grams of real
   instructions (seed tasks, user-oriented instructions, Vicuna, MT-bench, AGIEval questions, BBH inputs), timed.

    SELFINSTRUCT_DATA=../shared/data python bench/rouge_filter.py [--n-ref 2000] [--pool 52000] [--n 1000000] [--ref-workers 2]
"""
from __future__ import annotations
import argparse, json, os, re, sys, time
from functools import partial
from multiprocessing import Pool

from rouge_score import rouge_scorer
from selfinstruct_nb import core, data
from selfinstruct_nb.filters import InstructionPool


def _words(s: str) -> list[str]: return re.sub(r"\s+", " ", s).strip().split(" ")

def real_instructions() -> list[str]:
    "Instruction-like texts from the released data (no seeds): user-oriented, Vicuna, MT-bench, AGIEval, BBH."
    out = [t.instruction for t in data.user_oriented_tasks()]
    out += list(data.load_vicuna_questions()["text"])
    out += [turn for q in data.load_mt_bench_questions()["turns"] for turn in q]
    for task in data.AGIEVAL_EN_TASKS:
        out += [q for q in data.load_agieval(task)["question"] if q and len(q.split()) < 60]
    for task in data.BBH_TASKS:
        out += [x.split("\n")[0] for x in data.load_bbh(task)["input"]][:40]
    seen, uniq = set(), []
    for s in out:
        s = re.sub(r"\s+", " ", s).strip()
        if s and s not in seen: seen.add(s); uniq.append(s)
    return uniq

def sentence_bank() -> list[list[str]]:
    "Word lists of real sentences (AGIEval passages/questions/options, BBH inputs, model predictions), 6+ words."
    texts = []
    for task in data.AGIEVAL_EN_TASKS:
        ds = data.load_agieval(task)
        texts += [p or "" for p in ds["passage"]] + [q or "" for q in ds["question"]]
        texts += [o for opts in ds["options"] if opts for o in opts]
    for task in data.BBH_TASKS: texts += list(data.load_bbh(task)["input"])
    for m in data.PREDICTION_MODELS: texts += list(data.load_predictions(m)["response"])
    bank, seen = [], set()
    for t in texts:
        for s in re.split(r"(?<=[.!?])\s+|\n+", t):
            w = _words(s)
            if len(w) >= 6 and s not in seen: seen.add(s); bank.append(w)
    return bank

def perturb(words: list[str], rnd, vocab: list[str]) -> list[str]:
    "A near-duplicate: drop, swap or replace one or two words."
    w = list(words)
    for _ in range(rnd.choice((1, 1, 2))):
        if len(w) < 3: break
        op, i = rnd.random(), rnd.randrange(len(w) - 1)
        if op < 0.4: del w[i]
        elif op < 0.7: w[i], w[i + 1] = w[i + 1], w[i]
        else: w[i] = rnd.choice(vocab)
    return w

def make_candidates(n: int, seeds: list[str], real: list[str], seed: int = 0) -> list[str]:
    "n candidates: ~55% real instructions, ~45% perturbed copies of seeds or earlier candidates (near-duplicates)."
    rnd = core.rng(seed, "bench-candidates")
    vocab = [w for s in real for w in _words(s)]
    reals = rnd.sample(real, min(len(real), int(n * 0.55)))
    out = []
    while len(out) < n:
        if reals and rnd.random() < 0.55: out.append(reals.pop())
        else:
            src = rnd.choice(seeds if not out or rnd.random() < 0.5 else out)
            out.append(" ".join(perturb(_words(src), rnd, vocab)))
    return out

def synthetic_candidates(n: int, openings: list[str], bank: list[list[str]], seed: int = 0) -> list[str]:
    "n synthetic instructions: a real instruction's opening (2-5 words) + a window of a real sentence; 10% perturbed repeats."
    rnd = core.rng(seed, "bench-synthetic")
    heads = [_words(o) for o in openings]
    vocab = [w for s in bank[:2000] for w in s]
    out = []
    while len(out) < n:
        if out and rnd.random() < 0.10:
            out.append(" ".join(perturb(_words(rnd.choice(out)), rnd, vocab))); continue
        h = rnd.choice(heads); s = rnd.choice(bank)
        k = rnd.randint(2, min(5, len(h))); L = rnd.randint(5, min(25, len(s))); i = rnd.randint(0, len(s) - L)
        out.append(" ".join(h[:k] + s[i:i + L]))
    return out

def spliced_candidates(n: int, texts: list[str], bank: list[list[str]], seed: int = 0, p_repeat: float = 0.08) -> list[str]:
    "n instructions spliced from word n-grams: a real instruction's opening (2-5 words) + 1-3 n-grams (2-8 words) of real text."
    rnd = core.rng(seed, "bench-spliced")
    heads = [w for w in (_words(t) for t in texts) if len(w) >= 4]
    words = heads + [w for w in bank if len(w) >= 4]
    vocab = [x for w in words[:3000] for x in w]
    out = []
    while len(out) < n:
        if out and rnd.random() < p_repeat:                  # a near-duplicate of an earlier candidate
            out.append(" ".join(perturb(_words(out[rnd.randrange(len(out))]), rnd, vocab))); continue
        h = rnd.choice(heads); parts = h[:rnd.randint(2, min(5, len(h)))]
        for _ in range(rnd.randint(1, 3)):
            w = rnd.choice(words); L = rnd.randint(2, min(8, len(w))); i = rnd.randint(0, len(w) - L)
            parts += w[i:i + L]
        out.append(" ".join(parts))
    return out

# --- the reference: Self-Instruct's loop with rouge-score ------------------------------------------------------
_scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
def _ref_score(cand: str, other: str) -> float: return _scorer.score(cand, other)["rougeL"].fmeasure

def reference_filter(seeds: list[str], candidates: list[str], threshold: float = 0.7, workers: int = 2):
    "bootstrap_instructions.py's algorithm: rouge-score of each candidate against the whole pool; keep if max < threshold."
    pool, out = list(seeds), []
    with Pool(workers) as p:
        for c in candidates:
            scores = p.map(partial(_ref_score, c), pool, chunksize=max(1, len(pool) // (4 * workers)))
            best = max(scores)
            keep = best < threshold
            out.append((keep, best))
            if keep: pool.append(c)
    return out, len(pool)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n-ref", type=int, default=2000, help="candidates compared with the reference")
    ap.add_argument("--pool", type=int, default=52000, help="pool size grown by the project's filter (0: skip)")
    ap.add_argument("--n", type=int, default=1_000_000, help="candidates for the prefiltered filter (0: skip)")
    ap.add_argument("--ref-workers", type=int, default=2, help="processes for the reference rouge-score loop")
    ap.add_argument("--workers", type=int, default=-1, help="threads for the project's filter (-1: all cores)")
    ap.add_argument("--json", default="", help="also write the numbers to this JSON file")
    a = ap.parse_args(argv)
    res = {"cpu_count": os.cpu_count()}

    seeds = [t.instruction for t in data.seed_tasks()]
    real = real_instructions()
    cands = make_candidates(a.n_ref, seeds, real)
    print(f"{len(seeds)} seeds, {len(real)} real instructions, {len(cands)} candidates; {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}", flush=True)

    t0 = time.perf_counter(); ref, ref_pool = reference_filter(seeds, cands, workers=a.ref_workers); t_ref = time.perf_counter() - t0
    t0, c0 = time.perf_counter(), time.process_time()
    pool = InstructionPool(seeds, static_rules=False, workers=a.workers)
    recs = pool.filter(cands)
    t_ours, cpu_ours = time.perf_counter() - t0, time.process_time() - c0
    assert [r["kept"] for r in recs] == [k for k, _ in ref], "keep/drop decisions differ from the reference"
    assert [r["rouge_max"] for r in recs] == [b for _, b in ref], "best ROUGE-L differs from rouge-score"
    assert len(pool) == ref_pool
    n_kept = sum(r["kept"] for r in recs)
    pairs = sum(len(seeds) + sum(k for k, _ in ref[:i]) for i in range(len(ref)))
    print(f"identical decisions and scores on {len(cands)} candidates: kept {n_kept}, dropped {len(cands) - n_kept}; "
          f"{pairs:,} pairs scored")
    print(f"reference (rouge-score, {a.ref_workers} processes): {t_ref:.1f} s ({t_ref / pairs * 1e6:.1f} us/pair)")
    print(f"project  (selfinstruct_nb.filters):          {t_ours:.3f} s ({t_ours / pairs * 1e9:.0f} ns/pair; {cpu_ours:.3f} s CPU)")
    print(f"speed ratio: {t_ref / t_ours:.0f}x", flush=True)
    # how much a length bound (LCS <= min(m, n), so F <= 2 min(m, n) / (m + n)) could skip on these candidates
    rl, pool_texts, need_dec, need_max = pool.rouge, list(seeds), 0, 0
    lens = [len(rl.encode(t)) for t in pool_texts]
    for c, (keep, best) in zip(cands, ref):
        m_ = len(rl.encode(c))
        ub = [2 * min(m_, n_) / (m_ + n_) if m_ + n_ else 0.0 for n_ in lens]
        need_dec += sum(u >= 0.7 for u in ub); need_max += sum(u >= min(best, 0.7) for u in ub)
        if keep: lens.append(m_)
    print(f"length bound: {need_dec / pairs:.1%} of the pairs can reach 0.7 (all a keep/drop decision needs); "
          f"{need_max / pairs:.1%} are needed for the exact best score as well")
    res.update(n_candidates=len(cands), kept=n_kept, pairs=pairs, ref_s=t_ref, ours_s=t_ours, ratio=t_ref / t_ours,
               ref_workers=a.ref_workers, length_bound_decision_frac=need_dec / pairs, length_bound_exact_frac=need_max / pairs)

    if a.pool:
        bank = sentence_bank()
        openings = seeds + real
        target = a.pool
        pool52 = InstructionPool(seeds, static_rules=False, workers=a.workers)
        n_seen, t_filter, cpu_filter, pairs52, chunk, k, all52 = 0, 0.0, 0.0, 0, 4096, 0, []
        while len(pool52) - len(seeds) < target:
            batch = synthetic_candidates(chunk, openings, bank, seed=k); k += 1
            need = target - (len(pool52) - len(seeds))
            t0 = time.perf_counter()
            recs52 = []
            c0 = time.process_time()
            for s in range(0, len(batch), 512):                 # stop as soon as the pool is full
                size = len(pool52)
                r = pool52.filter(batch[s:s + 512]); recs52 += r
                for rec in r: pairs52 += size; size += rec["kept"]   # each candidate meets the pool as it stood
                if len(pool52) - len(seeds) >= target: break
            t_filter += time.perf_counter() - t0; cpu_filter += time.process_time() - c0
            n_seen += len(recs52); all52 += recs52
            print(f"  {n_seen:,} candidates -> pool {len(pool52):,} ({t_filter:.1f} s)", flush=True)
        n_machine = len(pool52) - len(seeds)
        cands52 = [r["instruction"] for r in all52]
        print(f"52K pool: {n_seen:,} candidates filtered, {n_machine:,} kept (+{len(seeds)} seeds) in {t_filter:.1f} s wall "
              f"({t_filter / 60:.2f} min; {cpu_filter:.1f} s CPU over all threads), {pairs52:,} pairs, "
              f"{t_filter / max(pairs52, 1) * 1e9:.1f} ns/pair wall")
        t0 = time.perf_counter(); probe = synthetic_candidates(50, openings, bank, seed=10_000)
        for c in probe: pool52.check(c)
        t_check = (time.perf_counter() - t0) / len(probe)
        print(f"single check() against the {len(pool52):,}-pool: {t_check * 1e3:.1f} ms per candidate")
        res.update(pool_candidates=n_seen, pool_kept=n_machine, pool_s=t_filter, pool_cpu_s=cpu_filter, pool_pairs=pairs52, check_ms=t_check * 1e3)

        # the same candidates through the exact prefilter: identical decisions
        t0, c0 = time.perf_counter(), time.process_time()
        fast = InstructionPool(seeds, static_rules=False, workers=a.workers, exact_best=False)
        recs_fast = fast.filter(cands52)
        t_fast, cpu_fast = time.perf_counter() - t0, time.process_time() - c0
        assert [(r["kept"], r["reason"]) for r in recs_fast] == [(r["kept"], r["reason"]) for r in all52], \
            "prefiltered decisions differ from the exact filter's"
        assert [(r["rouge_max"], r["most_similar"]) for r in recs_fast if not r["kept"]] == \
               [(r["rouge_max"], r["most_similar"]) for r in all52 if not r["kept"]], "scores of dropped candidates differ"
        assert fast.instructions == pool52.instructions
        scored = fast.pool._prefix.looked_up
        print(f"identical decisions on the {len(cands52):,}-candidate set: kept {n_machine:,}; exact filter {t_filter:.1f} s, "
              f"prefiltered {t_fast:.1f} s ({cpu_fast:.1f} s CPU), {scored:,} of {pairs52:,} pairs scored "
              f"({scored / max(pairs52, 1):.3%}); speed ratio {t_filter / t_fast:.1f}x", flush=True)
        res.update(prefilter_candidates=len(cands52), prefilter_s=t_fast, prefilter_cpu_s=cpu_fast, prefilter_scored=scored)

    if a.n:
        texts = seeds + real
        bank = sentence_bank() if not a.pool else bank
        t0 = time.perf_counter(); big = spliced_candidates(a.n, texts, bank); t_gen = time.perf_counter() - t0
        print(f"{len(big):,} candidates spliced from word n-grams of {len(texts):,} real instructions and {len(bank):,} "
              f"sentences in {t_gen:.1f} s; "
              f"e.g. {big[0]!r} / {big[1]!r}", flush=True)
        t0, c0 = time.perf_counter(), time.process_time()
        pm = InstructionPool(seeds, static_rules=False, workers=a.workers, exact_best=False)
        step, pairs_all, kept_all = max(1, len(big) // 10), 0, 0
        for s in range(0, len(big), step):
            size = len(pm)
            for r in pm.filter(big[s:s + step]): pairs_all += size; size += r["kept"]; kept_all += r["kept"]
            print(f"  {min(s + step, len(big)):,} candidates -> pool {len(pm):,} ({time.perf_counter() - t0:.1f} s, "
                  f"load {os.getloadavg()[0]:.1f})", flush=True)
        t_big, cpu_big = time.perf_counter() - t0, time.process_time() - c0
        scored = pm.pool._prefix.looked_up
        print(f"{len(big):,} candidates: kept {kept_all:,} (pool {len(pm):,}) in {t_big:.1f} s wall ({t_big / 60:.2f} min; "
              f"{cpu_big:.1f} s CPU); {scored:,} of {pairs_all:,} pairs scored ({scored / max(pairs_all, 1):.4%})")
        res.update(million_candidates=len(big), million_kept=kept_all, million_s=t_big, million_cpu_s=cpu_big,
                   million_pairs=pairs_all, million_scored=scored)
    if a.json: core.write_json(a.json, res)
    return res


if __name__ == "__main__":
    main()

"""`selfinstruct_nb.rouge` gives exactly (bit for bit) the ROUGE-L F-measure of `rouge-score`.

Over more than 10,000 pairs of real texts from SELFINSTRUCT_DATA (seed and user-oriented instructions, model
predictions vs targets, BBH and AGIEval questions, Vicuna questions), with and without the stemmer, plus edge cases.
"""
import itertools, os, random

import numpy as np
import pytest
from rouge_score import rouge_scorer

from selfinstruct_nb import data, rouge
from selfinstruct_nb.rouge import RougeL, RougePool, RougeTokenizer, chinese_tokenizer, ChineseTokenizer, _length_range



def _ref(use_stemmer, tokenizer=None):
    sc = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=use_stemmer, tokenizer=tokenizer)
    return lambda t, p: sc.score(t, p)["rougeL"].fmeasure


@pytest.fixture(scope="module")
def real_pairs():
    "Pairs (target, prediction) of real texts: > 10,000 in all, short and long."
    rnd = random.Random(0)
    seeds = [t.instruction for t in data.seed_tasks()]
    user = [t.instruction for t in data.user_oriented_tasks()]
    pairs = list(itertools.combinations(seeds, 2))[::2]                      # 7,612 instruction pairs
    pairs += [(u, s) for u in user[:60] for s in rnd.sample(seeds, 30)]      # 1,800
    for m in data.PREDICTION_MODELS:                                          # predictions vs targets: 2,016
        ds = data.load_predictions(m)
        pairs += [(t, r[:1500]) for t, r in zip(ds["target"], ds["response"])]
    bbh = [x for task in data.BBH_TASKS[:8] for x in data.load_bbh(task)["input"][:25]]
    pairs += [(a[:800], b[:800]) for a, b in zip(bbh, bbh[1:])]               # 199
    agi = [q for q in data.load_agieval("lsat-lr")["question"]][:200]
    pairs += list(zip(agi, agi[1:]))                                          # 199
    vic = list(data.load_vicuna_questions()["text"])
    pairs += [(a, b) for a in vic[:20] for b in vic[20:40]]                   # 400
    seed_outputs = [t.instances[0].output for t in data.seed_tasks()]
    pairs += list(zip(seed_outputs, seed_outputs[1:] + seed_outputs[:1]))     # 175: long, multi-line outputs
    assert len(pairs) >= 10_000
    return pairs


@pytest.mark.parametrize("use_stemmer", [False, True])
def test_tokenizer_matches(real_pairs, use_stemmer):
    ref = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=use_stemmer)._tokenizer
    ours = RougeTokenizer(use_stemmer)
    texts = {t for pair in real_pairs[::7] for t in pair}
    for t in texts: assert ours.tokenize(t) == ref.tokenize(t), t[:80]


@pytest.mark.parametrize("use_stemmer", [False, True])
def test_real_pairs_bit_identical(real_pairs, use_stemmer):
    ref = _ref(use_stemmer)
    want = np.array([ref(t, p) for t, p in real_pairs])
    rl = RougeL(use_stemmer=use_stemmer)
    got = rl.scores([t for t, _ in real_pairs], [p for _, p in real_pairs])
    bad = np.flatnonzero(got != want)
    assert len(bad) == 0, f"{len(bad)} pairs differ, first: {real_pairs[bad[0]]!r}: {got[bad[0]]!r} != {want[bad[0]]!r}"
    assert [rl.score(t, p) for t, p in real_pairs[:500]] == want[:500].tolist()
    assert (want > 0).sum() > 5000 and len(set(want.tolist())) > 500   # not a trivial set of zeros


@pytest.mark.parametrize("use_stemmer", [False, True])
def test_matrix_and_max_scores(use_stemmer):
    ref = _ref(use_stemmer)
    seeds = [t.instruction for t in data.seed_tasks()]
    user = [t.instruction for t in data.user_oriented_tasks()][:40]
    rl = RougeL(use_stemmer=use_stemmer)
    want = np.array([[ref(u, s) for s in seeds] for u in user])
    assert (rl.score_matrix(user, seeds) == want).all()
    got = rl.max_scores(user, seeds, return_index=True)
    assert [s for s, _ in got] == want.max(axis=1).tolist()
    assert [i for _, i in got] == want.argmax(axis=1).tolist()          # first index reaching the max


def test_chunked_threads_same_result(monkeypatch):
    "Many small column chunks in threads (ties across chunks included) give the single-chunk result."
    seeds = [t.instruction for t in data.seed_tasks()]
    cands = [t.instruction for t in data.user_oriented_tasks()][:60] + seeds[:5]
    refs = seeds + seeds                                                 # every best is tied with a later copy
    one = RougeL(workers=1).max_scores(cands, refs, return_index=True)
    monkeypatch.setattr(rouge, "_COL_CHUNK", 13); monkeypatch.setattr(rouge, "_MIN_CHUNK", 13)
    many = RougeL(workers=2).max_scores(cands, refs, return_index=True)
    assert many == one
    for hint in (0.0, 0.2, 0.5, 0.7, 0.9, 1.0):                          # length bounds never change the result
        assert RougeL(workers=2).max_scores(cands, refs, return_index=True, prune_at=hint, block=7) == one
    assert all(i < len(seeds) for _, i in many)                          # the first copy wins ties


EDGE = [
    ("", ""), ("", "a b c"), ("a b c", ""), ("!!! ... ???", "!!!"), ("¿¡«»—–…", "a"),
    ("Café naïve façade", "cafe naive facade"), ("K\u212a İstanbul ǅ ß ﬁ", "kk istanbul dz ss fi"),
    ("写一首关于秋天的诗。", "写一首关于秋天的诗。"), ("emoji 🚀 rocket 🚀", "rocket emoji"),
    ("a a a a a a b", "a b a b a b a"), ("the the the", "the"), ("x" * 500, "x" * 499),
    ("running runs ran runner", "run run run run"), ("generously generous generation", "generate generous"),
    ("1,000.50 dollars 2nd", "1 000 50 dollar 2nd"), ("tab\tnew\nline\r\nend", "tab new line end"),
    (" ".join(f"w{i % 97}" for i in range(1200)), " ".join(f"w{i % 89}" for i in range(1000))),   # very long
    ("A" * 10, "a" * 10), ("ab12 cd34", "AB12-CD34"),
]


@pytest.mark.parametrize("use_stemmer", [False, True])
def test_edge_cases(use_stemmer):
    ref, rl = _ref(use_stemmer), RougeL(use_stemmer=use_stemmer)
    for t, p in EDGE:
        assert rl.score(t, p) == ref(t, p), (t[:40], p[:40])
        assert rl.score(p, t) == ref(p, t), (p[:40], t[:40])
    short = [e for e in EDGE if len(e[0]) + len(e[1]) < 2000]
    assert (rl.score_matrix([t for t, _ in short], [p for _, p in short])
            == np.array([[ref(t, p) for _, p in short] for t, _ in short])).all()


def test_chinese_pitfall_and_tokenizers():
    zh = ["写一首关于秋天的诗。", "写一首关于春天的诗。", "把这句话翻译成英文。"]
    assert _ref(False)(zh[0], zh[0]) == 0                                # rouge-score: identical Chinese scores 0
    assert RougeL().score(zh[0], zh[0]) == 0                            # and so do we with its tokenizer
    for tok in (chinese_tokenizer, ChineseTokenizer("jieba")):
        ref, rl = _ref(False, tok), RougeL(tokenizer=tok)
        for a, b in itertools.product(zh, zh): assert rl.score(a, b) == ref(a, b)
        assert rl.score(zh[0], zh[0]) == 1.0 and 0 < rl.score(zh[0], zh[1]) < 1


def test_incremental_pool_matches_reference_loop():
    "RougePool.filter_incremental (blocks) gives the one-by-one rouge-score loop's decisions and maxima."
    rnd = random.Random(1)
    seeds = [t.instruction for t in data.seed_tasks()][:60]
    cands = [t.instruction for t in data.user_oriented_tasks()][:80]
    for s in seeds[:40] + cands[:40]:                                   # near-duplicates
        w = s.split(); del w[rnd.randrange(len(w))]; cands.append(" ".join(w))
    rnd.shuffle(cands)
    ref = _ref(False)
    pool, want = list(seeds), []
    for c in cands:
        b = max(ref(c, p) for p in pool); want.append((b < 0.7, b))
        if b < 0.7: pool.append(c)
    got = RougePool(seeds).filter_incremental(cands, lambda k, s: s < 0.7, block=16)
    assert [(k, b) for k, b, _ in got] == want
    assert RougePool(seeds, prune_at=0.7).filter_incremental(cands, lambda k, s: s < 0.7, block=16) == got
    assert 10 < sum(not k for k, _ in want) < len(want) - 10


def test_length_range_is_the_bound():
    "_length_range gives exactly the lengths whose bound 2 min(m, n)/(m+n) reaches b (with a rounding margin)."
    for m in range(1, 60):
        for b in (0.0, 0.1, 0.35, 0.5, 0.7, 0.7 + 1e-12, 0.95, 1.0):
            lo, hi = _length_range(np.array([m]), np.array([b]))
            ok = [n for n in range(1, 400) if 2 * min(m, n) / (m + n) >= b - 1e-12]
            assert (lo[0], min(hi[0], 399)) == (ok[0], ok[-1]), (m, b)


def test_max_scores_pruned_on_real_data():
    "Pruned and unpruned best matches agree on real instructions (hints from 0 to 1)."
    seeds = [t.instruction for t in data.seed_tasks()]
    user = [t.instruction for t in data.user_oriented_tasks()]
    rl = RougeL()
    full = rl.max_scores(user, seeds, return_index=True)
    for hint in (0.3, 0.5, 0.7): assert rl.max_scores(user, seeds, return_index=True, prune_at=hint) == full


# ------------------------------------------------- the exact prefilter (token prefix index) for big pools
def _random_texts(n, seed, vocab, lo=1, hi=16):
    g = np.random.default_rng(seed)
    return [" ".join(f"w{x}" for x in g.integers(0, vocab, g.integers(lo, hi))) for _ in range(n)]


@pytest.mark.parametrize("t", [0.3, 0.5, 0.7, 0.9, 1.0])
def test_prefix_index_finds_every_pair_that_can_reach_t(t):
    "Every (query, pool text) pair whose exact ROUGE-L reaches t is among the pairs the index returns, across rebuilds."
    rl = RougeL()
    for vocab in (6, 40):                       # many repeated tokens; a wider vocabulary
        pool, qs = _random_texts(700, 1, vocab), _random_texts(150, 2, vocab)
        ix = rouge._PrefixIndex(t)
        for s in pool: ix.add(rl.encode(s))
        assert 0 < ix._built < ix.n             # a base part and a delta part
        rows, ids = ix.pairs([rl.encode(q) for q in qs])
        found = set(zip(rows.tolist(), ids.tolist()))
        full = rl.score_matrix(qs, pool)
        must = set(zip(*[a.tolist() for a in np.nonzero(full >= t)]))
        assert must and must <= found, sorted(must - found)[:5]
        assert len(found) < full.size


@pytest.mark.parametrize("inclusive", [True, False])
def test_prefiltered_filter_same_decisions_on_real_data(inclusive):
    "InstructionPool(exact_best=False).filter: the same decisions as the full search, the same scores for dropped ones."
    from selfinstruct_nb.filters import InstructionPool
    rnd = random.Random(3)
    seeds = [t.instruction for t in data.seed_tasks()]
    cands = [t.instruction for t in data.user_oriented_tasks()] + list(data.load_vicuna_questions()["text"])
    for s in rnd.sample(seeds, 80) + rnd.sample(cands, 120):   # near-duplicates: a word dropped, swapped or repeated
        w = s.split(); i = rnd.randrange(len(w) - 1); op = rnd.random()
        if op < 0.4: del w[i]
        elif op < 0.7: w[i], w[i + 1] = w[i + 1], w[i]
        else: w.insert(i, w[i])
        cands.append(" ".join(w))
    rnd.shuffle(cands)
    cands += [t.instruction for t in data.seed_tasks()][:20]   # exact repeats of the pool
    full = InstructionPool(seeds, static_rules=False, inclusive=inclusive).filter(cands, block=64)
    fast_pool = InstructionPool(seeds, static_rules=False, inclusive=inclusive, exact_best=False)
    fast = fast_pool.filter(cands, block=64)
    assert [(r["kept"], r["reason"]) for r in fast] == [(r["kept"], r["reason"]) for r in full]
    assert [(r["rouge_max"], r["most_similar"]) for r in fast if not r["kept"]] == \
           [(r["rouge_max"], r["most_similar"]) for r in full if not r["kept"]]
    assert all(f["rouge_max"] <= e["rouge_max"] < 0.7 for f, e in zip(fast, full) if e["kept"])   # a lower bound
    assert 50 < sum(not r["kept"] for r in full) < len(full) - 50
    assert fast_pool.pool._prefix.looked_up < 0.2 * len(cands) * len(fast_pool)   # most pairs were never scored

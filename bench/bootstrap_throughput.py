"""Throughput of the bootstrap (`bootstrap.bootstrap`) in its two schedules, as a ratio of the ideal, in one run.

One process runs the project's test server (`tests/fake_openai_server.py`, Self-Instruct's responder from
`tests/responders.py`) with a latency distribution that has a tail (by default a median of 200 ms, 10% of answers
at 2 s) and 10% injected faults (429, 500, dropped connections; retried with the client's backoff), and grows a pool
with the same number of requests in each schedule at concurrency 32:

- `step`: the paper's loop, `requests_per_round = concurrency` requests per step, each step waiting for its slowest;
- `window`: `concurrency` requests in flight at all times, answers committed in request order; once with
  `--window` (default 256) and once with the stage's default window, 64 (`nbs/pipeline/10_bootstrap.ipynb`).

For each it prints requests/s and two ratios. `ratio` is to the ideal `concurrency / mean latency`, where the mean
latency is that of the run's own requests as the client saw them (send to result: the tail, the faults, the
retries and their backoff included), so it measures what the schedule wastes and nothing else. `nominal ratio` is
to `concurrency / the server's mean latency of one attempt` (`latency * (1 - tail_rate) + tail_latency *
tail_rate`), which also charges the retries and their backoff to the run. The lines
`windowed ratio to ideal: X` (the `--window` run, the first ideal) and `... to nominal ideal: X` follow, then a
rerun of the window schedule from the warm cache into a new folder: the HTTP requests it sent (goal 0) and whether
it built the identical pool.

Last, a hung replica (issue 17): the window schedule once against the server alone, once against a black hole (a
loopback server that accepts connections and never answers) listed first beside it. It prints both times, the
ratio (goal <= 1.3), the requests hedged away from the black hole and whether the pool is identical.
`--black-hole-only` runs just this section.

    SELFINSTRUCT_DATA=../shared/data python bench/bootstrap_throughput.py [--concurrency 32] [--requests 960] [--window 256]
"""
from __future__ import annotations
import argparse, os, statistics, sys, tempfile, time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT)); sys.path.insert(0, str(ROOT/"tests"))
from fake_openai_server import BlackHoleServer, FakeOpenAIServer  # noqa: E402
from responders import SelfInstructResponder  # noqa: E402
from selfinstruct_nb import data  # noqa: E402
from selfinstruct_nb.bootstrap import bootstrap  # noqa: E402
from selfinstruct_nb.core import read_jsonl  # noqa: E402
from selfinstruct_nb.llm import LLMClient, make_backend  # noqa: E402


class RecordingClient(LLMClient):
    "An `LLMClient` that keeps its sessions, to read their per-request latencies afterwards."
    def session(self, *a, **kw):
        s = super().session(*a, **kw)
        self.sessions = getattr(self, "sessions", []) + [s]
        return s


def faulty_server(latency=0.2, tail_rate=0.1, tail_latency=2.0, faults=0.1, **kw) -> FakeOpenAIServer:
    "The bench's server: Self-Instruct's responder, a long tail, `faults` of attempts answered 429, 500 (2/5 each) or dropped (1/5)."
    f = faults / 5
    return FakeOpenAIServer(responder=SelfInstructResponder(), latency=latency, tail_rate=tail_rate, tail_latency=tail_latency,
                            rate_429=2 * f, rate_500=2 * f, rate_drop=f, seed=0, **kw)


def run(url, seeds, out, cache, schedule, a, window=None) -> dict:
    client = RecordingClient(make_backend("openai", "teacher", base_url=url, api_key_env=""), cache=cache,
                             concurrency=a.concurrency)
    rounds = a.requests // a.concurrency
    t0 = time.perf_counter()
    s = bootstrap(client, seeds, out, num_instructions=10**7, seed=0, requests_per_round=a.concurrency,
                  max_rounds=rounds, schedule=schedule, window=window or a.window, progress=False)
    dt = time.perf_counter() - t0
    lat = [x for sess in client.sessions for x in sess.latencies]
    n = s["requests"] + s["requests_past_stop"]
    mean = statistics.fmean(lat) if lat else float("nan")
    pool = [t["instruction"] for t in read_jsonl(Path(out)/"machine_instructions.jsonl")]
    return dict(requests=n, seconds=dt, rps=n / dt, mean_latency=mean, ideal=a.concurrency / mean if lat else float("nan"),
                sent=len(lat), stats=client.stats, pool=pool, summary=s)


def black_hole(url, seeds, tmp, a) -> None:
    "The window schedule on the server alone, then with a black-hole replica beside it: times, ratio, identical pool."
    alone = run(url, seeds, tmp/"bh-alone", None, "window", a, 64)
    with BlackHoleServer() as hole:
        both = run(f"{hole.url},{url}", seeds, tmp/"bh-both", None, "window", a, 64)
        ep = both["stats"]["endpoints"][hole.url]
        print(f"black-hole replica beside the server (window 64, no cache): alone {alone['seconds']:.2f} s, with the black "
              f"hole {both['seconds']:.2f} s, ratio {both['seconds'] / alone['seconds']:.2f} (goal <= 1.3); {hole.connections} "
              f"calls sent to it, {both['stats']['retries_by_reason'].get('stalled', 0)} hedged, taken out {ep['stalled']}x; "
              f"identical pool: {both['pool'] == alone['pool']} ({len(alone['pool'])} instructions)", flush=True)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--requests", type=int, default=960, help="requests per schedule (a multiple of concurrency)")
    ap.add_argument("--window", type=int, default=256, help="window schedule: how far behind the pool a prompt may look")
    ap.add_argument("--latency", type=float, default=0.2, help="the usual answer's latency, seconds (the median)")
    ap.add_argument("--tail-rate", type=float, default=0.1)
    ap.add_argument("--tail-latency", type=float, default=2.0)
    ap.add_argument("--faults", type=float, default=0.1, help="share of attempts answered 429, 500 or dropped")
    ap.add_argument("--black-hole-only", action="store_true", help="run only the black-hole replica section")
    a = ap.parse_args(argv)
    seeds = data.seed_tasks()
    tmp = Path(tempfile.mkdtemp(prefix="bench-bootstrap-"))
    load0 = os.getloadavg()[0]
    with faulty_server(a.latency, a.tail_rate, a.tail_latency, a.faults) as srv:
        nominal = a.latency * (1 - a.tail_rate) + a.tail_latency * a.tail_rate
        print(f"server: {a.latency * 1000:.0f} ms answers, {a.tail_rate:.0%} at {a.tail_latency:.1f} s (mean of one attempt "
              f"{nominal:.3f} s), {a.faults:.0%} faults "
              f"(429, 500, dropped); concurrency {a.concurrency}, {a.requests} requests per schedule, window {a.window}; "
              f"{os.cpu_count()} CPUs, load average before {load0:.2f}", flush=True)
        nominal_ideal = a.concurrency / nominal
        if a.black_hole_only:
            black_hole(srv.url, seeds, tmp, a)
            print(f"load average after {os.getloadavg()[0]:.2f}")
            return
        print(f"{'schedule':>14} {'requests':>8} {'seconds':>8} {'req/s':>7} {'mean latency':>12} {'ideal req/s':>11} {'ratio':>6} "
              f"{'nominal ideal':>13} {'nominal ratio':>13}")
        res = {}
        for name, schedule, window in (("step", "step", None), ("window", "window", a.window), ("window64", "window", 64)):
            r = res[name] = run(srv.url, seeds, tmp/name, tmp/f"{name}.sqlite", schedule, a, window)
            label = f"window {window}" if window else schedule
            print(f"{label:>14} {r['requests']:>8} {r['seconds']:>8.2f} {r['rps']:>7.1f} {r['mean_latency']:>11.3f}s "
                  f"{r['ideal']:>11.1f} {r['rps'] / r['ideal']:>6.2f} {nominal_ideal:>13.1f} {r['rps'] / nominal_ideal:>13.2f}",
                  flush=True)
        w = res["window"]
        print(f"retries by reason (window {a.window} run): {w['stats']['retries_by_reason']}; failed requests: {w['stats']['failed']}")
        print(f"windowed ratio to nominal ideal: {w['rps'] / nominal_ideal:.2f} (window {a.window}; ideal = concurrency / "
              f"the server's mean latency of one attempt, {nominal:.3f} s); window 64: {res['window64']['rps'] / nominal_ideal:.2f}")
        print(f"windowed ratio to ideal: {w['rps'] / w['ideal']:.2f} (window {a.window}; ideal = concurrency / the mean latency "
              f"the client saw, retries included; window 64: {res['window64']['rps'] / res['window64']['ideal']:.2f})")
        print(f"window over step: {w['rps'] / res['step']['rps']:.2f}x requests/s")
        before = srv.requests
        again = run(srv.url, seeds, tmp/"window-rerun", tmp/"window.sqlite", "window", a)
        print(f"rerun from the cache: {srv.requests - before} HTTP requests, {again['seconds']:.2f} s, "
              f"identical pool: {again['pool'] == w['pool']} ({len(w['pool'])} instructions)")
        black_hole(srv.url, seeds, tmp, a)
    print(f"load average after {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()

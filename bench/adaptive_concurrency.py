"""`concurrency="auto"` against a server that saturates without saying so, beside fixed settings, in one run.

1. **A server of fixed capacity** (`tests/fake_openai_server.py --capacity N`, its own process): it works on N
   requests at a time, each for `--latency` s times a factor uniform in [0.5, 1.5], and queues the rest, as a
   llama.cpp server with N slots or an Ollama with N parallel requests does. Its best throughput is N / latency;
   past N requests in flight only the latency grows. No 429 is ever sent. The client runs for `--seconds` with
   as many requests pending as it may send, once with `concurrency="auto"` (not told N; ceiling `--ceiling`), and
   with fixed settings: too low (N/4), right (N: the user who guessed it), too high (4N). For each it prints the
   throughput's ratio to the server's best (goal for auto: >= 0.9; the slow start is included) and the median
   latency of its HTTP attempts relative to the unloaded latency (measured first, one request at a time; goal for
   auto: within 1.5x).
2. **The faulty, long-tailed server of `bench/bootstrap_throughput.py`** (its `faulty_server`: 200 ms answers,
   10% at 2 s, 10% of attempts answered 429 or 500 or dropped; unlimited capacity): the windowed bootstrap, 960
   requests, at fixed concurrency 32 (that bench's setting) and with `auto` at most 32 and at most 64. The server
   has no knee, so auto should climb to its ceiling and not mistake the random 429s and the tail for overload: the
   ratio is to the fixed-32 run's requests/s.

    SELFINSTRUCT_DATA=../shared/data python bench/adaptive_concurrency.py [--capacity 8] [--latency 0.25] [--seconds 20]
"""
from __future__ import annotations
import argparse, os, statistics, subprocess, sys, tempfile, time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT)); sys.path.insert(0, str(ROOT/"tests")); sys.path.insert(0, str(ROOT/"bench"))
from bootstrap_throughput import faulty_server  # noqa: E402
from selfinstruct_nb import data  # noqa: E402
from selfinstruct_nb.bootstrap import bootstrap  # noqa: E402
from selfinstruct_nb.llm import LLMClient, LLMRequest, make_backend  # noqa: E402


def start_server(*args):
    proc = subprocess.Popen([sys.executable, str(ROOT/"tests"/"fake_openai_server.py"), "--port", "0", *map(str, args)],
                            stdout=subprocess.PIPE, text=True)
    line = proc.stdout.readline().strip()
    if not line.startswith("READY "): proc.kill(); raise SystemExit(f"server did not start: {line!r}")
    return proc, line.split()[1]


def drive(url, concurrency, seconds, tag, ceiling=64) -> dict:
    "Keep as many requests pending as the client may send for `seconds`; answers per second and attempt latencies."
    client = LLMClient(make_backend("openai", "fake", base_url=url, api_key_env=""), cache=None,
                       concurrency=concurrency, max_concurrency=ceiling)
    n = ok = 0
    t0 = time.perf_counter()
    with client.session(progress=False) as s:
        while time.perf_counter() - t0 < seconds:
            while s.pending < client.concurrency:
                s.submit(LLMRequest(f"{tag}-{n}", prompt=f"[{tag}] request {n}", params={"max_tokens": 16})); n += 1
            res = s.next(timeout=0.5)
            ok += res is not None and res.ok
        dt = time.perf_counter() - t0
        ep = client.backend.endpoints[0]
        lat, limiter = list(ep.latencies), ep.limiter
    return {"ok": ok, "seconds": dt, "rps": ok / dt, "median_latency": statistics.median(lat),
            "limit": limiter.summary() if limiter else None}


def capacity_part(a):
    proc, url = start_server("--latency", a.latency, "--jitter", 0.5, "--capacity", a.capacity)
    try:
        best = a.capacity / a.latency
        one = drive(url, 1, min(5.0, a.seconds / 4), "unloaded")
        unloaded = one["median_latency"]
        print(f"server: capacity {a.capacity} requests at a time, {a.latency * 1000:.0f} ms each (x uniform 0.5-1.5), "
              f"the rest queued; best throughput {best:.1f} req/s; unloaded median latency as measured "
              f"{unloaded * 1000:.0f} ms; {a.seconds:.0f} s per setting")
        print(f"{'concurrency':>20} {'answers':>7} {'req/s':>7} {'throughput ratio':>16} {'median latency':>14} "
              f"{'latency ratio':>13}  limit (auto)")
        out = {}
        n = a.capacity
        for label, conc in ((f"auto (at most {a.ceiling})", "auto"), (f"{max(1, n // 4)} (too low)", max(1, n // 4)),
                            (f"{n} (told N)", n), (f"{4 * n} (too high)", 4 * n)):
            r = out[label] = drive(url, conc, a.seconds, f"c{conc}", a.ceiling)
            lim = r["limit"]
            note = f"now {lim['limit']}, range {lim['min']}-{lim['max']}, {lim['windows']} windows, changes {lim['changes']}" \
                if lim else ""
            print(f"{label:>20} {r['ok']:>7} {r['rps']:>7.1f} {r['rps'] / best:>16.2f} {r['median_latency'] * 1000:>12.0f}ms "
                  f"{r['median_latency'] / unloaded:>13.2f}  {note}", flush=True)
        auto = out[f"auto (at most {a.ceiling})"]
        told = out[f"{n} (told N)"]
        print(f"auto: throughput ratio {auto['rps'] / best:.2f} (goal >= 0.9), median latency ratio "
              f"{auto['median_latency'] / unloaded:.2f} (goal <= 1.5); against the client told N: "
              f"{auto['rps'] / told['rps']:.2f}x the throughput")
    finally:
        proc.terminate(); proc.wait(10)


def faulty_part(a):
    seeds = data.seed_tasks()
    tmp = Path(tempfile.mkdtemp(prefix="bench-adaptive-"))
    print(f"faulty long-tailed server of bench/bootstrap_throughput.py (200 ms, 10% at 2 s, 10% faults, no capacity "
          f"limit): windowed bootstrap, {a.requests} requests")
    print(f"{'concurrency':>20} {'seconds':>8} {'req/s':>7} {'ratio to fixed 32':>17}  limit (auto)")
    with faulty_server() as srv:
        ref = None
        for label, conc, ceiling in (("32", 32, 32), ("auto (at most 32)", "auto", 32), ("auto (at most 64)", "auto", 64)):
            client = LLMClient(make_backend("openai", "teacher", base_url=srv.url, api_key_env=""), cache=None,
                               concurrency=conc, max_concurrency=ceiling)
            t0 = time.perf_counter()
            s = bootstrap(client, seeds, tmp/label.replace(" ", "_"), num_instructions=10**7, seed=0, requests_per_round=32,
                          max_rounds=a.requests // 32, schedule="window", window=256, progress=False)
            dt = time.perf_counter() - t0
            rps = (s["requests"] + s["requests_past_stop"]) / dt
            ref = ref or rps
            lim = client.backend.endpoints[0].limiter
            note = f"now {lim.limit}, range {lim.summary()['min']}-{lim.summary()['max']}, changes {lim.summary()['changes']}" \
                if lim else ""
            print(f"{label:>20} {dt:>8.2f} {rps:>7.1f} {rps / ref:>17.2f}  {note}", flush=True)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--capacity", type=int, default=8, help="requests the server works on at once")
    ap.add_argument("--latency", type=float, default=0.25, help="seconds of work per request (mean)")
    ap.add_argument("--seconds", type=float, default=20.0, help="seconds per setting against the capacity server")
    ap.add_argument("--ceiling", type=int, default=64, help="max_concurrency of the auto client")
    ap.add_argument("--requests", type=int, default=960, help="bootstrap requests per setting against the faulty server")
    ap.add_argument("--skip-faulty", action="store_true")
    a = ap.parse_args(argv)
    print(f"{os.cpu_count()} CPUs, load average before {os.getloadavg()[0]:.2f}")
    capacity_part(a)
    if not a.skip_faulty: faulty_part(a)
    print(f"load average after {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()

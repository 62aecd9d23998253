"""Wall time of a 4-point sweep with `--workers 2` against `--workers 1`, when the points wait on an I/O-bound teacher.

The teacher is the project's test server (`tests/fake_openai_server.py` with `tests/responders.py`'s Self-Instruct
responder), started in this process, answering every request after a fixed `--latency`. Each point is a
`10_bootstrap` run of the `smoke` profile (openai backend) that sends `--rounds` steps of 4 requests, so it spends
about rounds x latency seconds waiting, plus its kernel's start-up (CPU). The points differ by seed, so no point is
served from another's cache, and each worker setting starts from an empty cache. Prints both wall times and their
ratio (goal: <= 0.6), with the load average before and after.

    python bench/sweep_workers.py [--latency 2.0] [--rounds 6]
"""
from __future__ import annotations
import argparse, json, os, sys, tempfile, time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT)); sys.path.insert(0, str(ROOT/"tests"))
from selfinstruct_nb.sweep import run_sweep  # noqa: E402
from fake_openai_server import FakeOpenAIServer  # noqa: E402
from responders import SelfInstructResponder  # noqa: E402


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--latency", type=float, default=2.0, help="server latency per request, seconds")
    ap.add_argument("--rounds", type=int, default=6, help="bootstrap steps per point (4 requests each)")
    a = ap.parse_args(argv)
    load0 = os.getloadavg()
    tmp = Path(tempfile.mkdtemp(prefix="bench-sweep-"))
    times, requests = {}, {}
    with FakeOpenAIServer(responder=SelfInstructResponder(), latency=a.latency) as srv:
        print(f"server latency {a.latency:.1f} s, {a.rounds} steps x 4 requests per point, 4 points, "
              f"{os.cpu_count()} CPUs, load average before {load0[0]:.2f}", flush=True)
        for workers in (1, 2):
            params = ["seed=[0,1,2,3]", "teacher_backend=openai", "teacher_model=teacher", f"teacher_base_url={srv.url}", 'teacher_api_key_env=""',
                      f"cache={tmp}/llm-w{workers}.sqlite", "num_instructions=100000", f"max_rounds={a.rounds}",
                      "requests_per_round=4", "concurrency=4"]
            n0, t0 = srv.requests, time.perf_counter()
            out = run_sweep("smoke", params, ["10_bootstrap"], workers=workers, outputs_dir=tmp/f"w{workers}",
                            metrics=["10_bootstrap.requests"], log=lambda s: None)
            times[workers], requests[workers] = time.perf_counter() - t0, srv.requests - n0
            man = json.loads((Path(out)/"sweep.json").read_text())
            bad = [p["name"] for p in man["points"] if p["status"] != "ok"]
            if bad: raise SystemExit(f"workers {workers}: points failed: {bad}; see {out}")
            per_point = [p["seconds"] for p in man["points"]]
            print(f"workers {workers}: {times[workers]:6.1f} s wall, {requests[workers]} requests, "
                  f"points {', '.join(f'{s:.1f}' for s in per_point)} s", flush=True)
    load1 = os.getloadavg()
    print(f"load average after {load1[0]:.2f}")
    print(f"ratio workers 2 / workers 1: {times[2] / times[1]:.2f} (goal <= 0.6)")


if __name__ == "__main__":
    main()

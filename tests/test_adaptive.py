"""`llm.AdaptiveLimit` (concurrency="auto"): the controller driven by made-up latencies and failures (deterministic, no
clock, no threads), the modelled fixed-capacity server, and one loose run against loopback servers that saturate."""
from collections import deque

import pytest

from fake_openai_server import FakeOpenAIServer
from selfinstruct_nb.llm import (AdaptiveLimit, LLMClient, LLMRequest, OpenAIBackend, configure_concurrency, make_backend,
                                 simulate_limit)


class Loop:
    "A client keeping `lim.limit` requests in flight against a server whose answers take `latency` s each."
    def __init__(self, lim): self.lim, self.t, self.out = lim, 0.0, deque()

    def run(self, windows=1, latency=1.0, code=lambda i: None, demand=None):
        for _ in range(windows):
            n, i = self.lim.n_windows + 1, 0
            while self.lim.n_windows < n:
                while len(self.out) < min(self.lim.limit, demand or self.lim.limit):
                    self.lim.sent(self.t); self.out.append(self.t)
                s = self.out.popleft(); self.t = max(self.t, s + latency)
                self.lim.done(s, self.t, code(i)); i += 1
        return self.lim


def reasons(lim): return [why for _, _, why in lim.changes]


def test_slow_start_doubles_to_the_ceiling_while_latency_holds():
    lim = Loop(AdaptiveLimit(ceiling=50, initial=3)).run(6)
    assert [c[1] for c in lim.changes] == [6, 12, 24, 48, 50]
    assert set(reasons(lim)) == {"slow start"} and lim.slow_start


def test_latency_without_throughput_backs_off_and_ends_slow_start():
    loop = Loop(AdaptiveLimit())
    loop.run(3)                                  # 4 -> 8 -> 16 -> 32 at 1 s
    loop.run(1, latency=2.0)                     # twice the latency at twice the limit: the same throughput
    assert (loop.lim.limit, reasons(loop.lim)[-1], loop.lim.slow_start) == (22, "latency", False)
    loop.run(3)                                  # calm again: a probe of the base first (the slow start's base may have
                                                 # been loaded), then one step up, not a doubling
    assert [c[1:] for c in loop.lim.changes[-3:]] == [(11, "probe"), (22, "probe end"), (23, "increase")]


def test_latency_growth_below_the_tolerance_is_not_queueing():
    loop = Loop(AdaptiveLimit())
    loop.run(2)
    loop.run(1, latency=1.35)                    # +35% < tolerance 1.4
    assert reasons(loop.lim) == ["slow start"] * 3


def test_throughput_that_grows_with_latency_keeps_the_limit_growing():
    loop = Loop(AdaptiveLimit())
    loop.run(2)                                  # 4 -> 8 -> 16
    loop.run(1, latency=1.45)                    # 16 at 1.45 s = 11/s against 8/s at 8: +38% for +100% limit
    assert (loop.lim.limit, reasons(loop.lim)[-1]) == (17, "throughput grows with latency")


@pytest.mark.parametrize("code", ["http_429", "http_503", "timeout"])
def test_a_window_of_overload_backs_off(code):
    loop = Loop(AdaptiveLimit())
    loop.run(3)                                  # 32
    loop.run(1, code=lambda i: code if i % 4 == 0 else None)   # a quarter overloaded
    assert (loop.lim.limit, reasons(loop.lim)[-1]) == (22, "overload")


def test_stray_429s_and_other_failures_do_not_back_off():
    loop = Loop(AdaptiveLimit())
    loop.run(3)
    loop.run(1, code=lambda i: "http_429" if i in (3, 9) else None)      # 2 of 32: a hiccup, left to the retries
    loop.run(1, code=lambda i: "http_500" if i % 2 else None)            # the breaker's business, not the limit's
    loop.run(1, code=lambda i: "connection" if i % 3 else None)
    assert "overload" not in reasons(loop.lim) and "latency" not in reasons(loop.lim)


def test_a_run_that_does_not_fill_the_limit_holds_it():
    loop = Loop(AdaptiveLimit(initial=8))
    loop.run(5, demand=5)                        # the caller keeps 5 in flight: the server's knee is not in question
    assert loop.lim.limit == 8 and loop.lim.changes == []


def test_answers_to_requests_sent_under_an_older_limit_are_ignored():
    lim = AdaptiveLimit(initial=4)
    for _ in range(4): lim.sent(0.0)
    lim.done(0.0, 1.0); lim.done(0.0, 1.0); lim.sent(1.0); lim.sent(1.0)
    for _ in range(6): lim.done(0.0, 1.0); lim.sent(1.0)      # 8 answers: the first window closes, 4 -> 8
    assert lim.limit == 8 and lim.changes[-1][0] == 1.0
    for _ in range(20): lim.done(0.5, 30.0)      # sent before the change, at any latency: no window closes
    assert lim.n_windows == 1 and lim.limit == 8


def test_probe_window_halves_the_limit_then_restores_it():
    loop = Loop(AdaptiveLimit(probe_every=4, max_step=0.0))
    loop.run(3); loop.run(1, latency=2.0); loop.run(8)   # slow start to 32, a back-off to 22, then calm
    assert [(lim, why) for _, lim, why in loop.lim.changes][3:] == [
        (22, "latency"), (11, "probe"), (22, "probe end"), (23, "increase"), (24, "increase"), (25, "increase"),
        (12, "probe"), (25, "probe end"), (26, "increase")]


def test_base_latency_is_the_median_of_the_lowest_limits_pooled():
    loop = Loop(AdaptiveLimit(base_samples=16))
    loop.run(1, latency=1.0)                     # 8 answers at limit 4
    loop.run(1, latency=3.0)                     # 8 answers at limit 8: queueing (against the base 1.0), a back-off
    assert [c[1:] for c in loop.lim.changes] == [(8, "slow start"), (5, "latency")]
    assert loop.lim.base_latency() == 2.0        # now: the median of 8 x 1.0 and 8 x 3.0, the two lowest limits
    loop.run(1, latency=9.0)                     # at limit 5, the lowest limit now: its 32 answers are enough alone
    assert loop.lim.base_latency() == 9.0


@pytest.mark.parametrize("capacity", [4, 16, 48])
def test_modelled_fixed_capacity_server_reaches_its_knee(capacity):
    for seed in range(2):
        lim = AdaptiveLimit(ceiling=256)
        r = simulate_limit(lim, capacity, requests=250 * capacity, seed=seed)
        assert r["throughput"] >= 0.9 and r["median_latency"] <= 1.5, (capacity, seed, r, lim.summary())
        assert lim.summary()["max"] < 4 * capacity + 8


def test_fixed_settings_on_the_modelled_server_show_the_trade_off():
    low, high = simulate_limit(2, 8), simulate_limit(32, 8)
    assert low["throughput"] < 0.3 and low["median_latency"] < 1.1
    assert high["throughput"] > 0.95 and high["median_latency"] > 3.5


def test_bad_settings_are_one_line_errors():
    be = OpenAIBackend("m", base_url="http://127.0.0.1:9/v1", api_key_env="")
    for bad in ("fast", 0, -3, 2.5, True, None):
        with pytest.raises(ValueError, match=r"^concurrency: expected a positive integer or \"auto\""):
            configure_concurrency(be, bad)
    with pytest.raises(ValueError, match="^max_concurrency: expected a positive integer, got 'x'"):
        LLMClient(be, cache=None, concurrency="auto", max_concurrency="x")
    with pytest.raises(ValueError, match="floor <= ceiling"): AdaptiveLimit(ceiling=2, floor=3)


def test_endpoint_concurrency_caps_the_adaptive_limit():
    be = OpenAIBackend("m", base_url="http://127.0.0.1:9/v1", api_key_env="", endpoint_concurrency=2)
    c = LLMClient(be, cache=None, concurrency="auto", max_concurrency=16)
    assert c.concurrency == 16 and be.endpoints[0].limiter.limit == 4
    assert be._acquire() is be.endpoints[0] and be._acquire() is be.endpoints[0]
    assert be.endpoints[0].in_flight == 2        # a third would wait: the cap is 2 although the limit is 4


def test_auto_finds_each_replicas_capacity_loose():
    "Two loopback servers that queue past 2 and past 8 requests: each endpoint's limit settles near its own capacity."
    with FakeOpenAIServer(latency=0.05, jitter=0.5, capacity=2) as small, \
            FakeOpenAIServer(latency=0.05, jitter=0.5, capacity=8) as big:
        be = make_backend("openai", "fake", base_url=f"{small.url},{big.url}", api_key_env="")
        c = LLMClient(be, cache=None, concurrency="auto", max_concurrency=40)
        res = c.run([LLMRequest(f"r{i}", prompt=f"item {i}") for i in range(1500)], progress=False)
    assert all(r.ok for r in res)
    eps = c.stats["endpoints"]
    s, b = eps[small.url]["concurrency"], eps[big.url]["concurrency"]
    # loose, for a busy machine: neither limit runs to the ceiling, and the bigger server ends with the larger limit
    assert s["max"] < 40 and b["max"] < 40, (s, b)
    assert s["limit"] < b["limit"] and s["limit"] <= 12, (s, b)   # 7 seen at load 10 (capacity 2)
    assert eps[big.url]["ok"] > eps[small.url]["ok"]

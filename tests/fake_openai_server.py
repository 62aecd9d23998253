"""An OpenAI-compatible HTTP server on loopback, with deterministic fault injection, for tests and benchmarks.

In a test:

    with FakeOpenAIServer(latency=0.01, rate_429=0.05, seed=0) as srv:
        backend = make_backend("openai", "fake", base_url=srv.url, api_key_env="")
        ...
        srv.counters   # {"ok": 95, "429": 5, ...}: requests received, by outcome

As a process (benchmarks): `python tests/fake_openai_server.py --port 0 --latency 0.2` prints one line
`READY http://127.0.0.1:PORT/v1` once it listens; `GET /stats` returns the counters as JSON (not counted itself).

Faults are decided per (sha256 of the request body, attempt number) from `seed`: the n-th time the server sees the
same body, it rolls the same dice as in any other run, so a test sees the same faults whatever the thread timing.
"""
from __future__ import annotations
import argparse, hashlib, json, os, random, socket, sys, threading, time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable

OUTCOMES = ("429", "500", "timeout", "drop", "malformed")  # in the order their rates are stacked


def _messages_text(messages) -> str:
    return "\n".join(str(m.get("content", "")) for m in messages or [] if isinstance(m, dict))


def echo_responder(req: dict) -> str:
    "Default reply: deterministic in the prompt, temperature and seed; echoes the prompt's last words."
    prompt = req.get("prompt") if "prompt" in req else _messages_text(req.get("messages"))
    if isinstance(prompt, list): prompt = "\n".join(map(str, prompt))
    tag = hashlib.sha256(json.dumps([prompt, req.get("temperature"), req.get("seed")]).encode()).hexdigest()[:8]
    tail = " ".join(str(prompt).split()[-8:])
    return f"echo {tag}: {tail}"


class _Server(ThreadingHTTPServer):
    daemon_threads = True         # a held `timeout` connection never blocks shutdown
    block_on_close = False
    request_queue_size = 256      # the default 5 refuses connections when 32 clients connect at once
    def handle_error(self, request, client_address):
        if not isinstance(sys.exc_info()[1], (ConnectionError, TimeoutError)):  # clients that hang up are normal here
            super().handle_error(request, client_address)


def _cut(text: str, stop, max_tokens) -> tuple[str, str]:
    "Apply `stop` (first occurrence) and `max_tokens` (whitespace words) like a real server; return (text, finish_reason)."
    stops = [stop] if isinstance(stop, str) else list(stop or [])
    cuts = [i for i in (text.find(s) for s in stops if s) if i >= 0]
    if cuts: return text[:min(cuts)], "stop"
    if max_tokens is not None and len(text.split()) > int(max_tokens):
        return " ".join(text.split()[:int(max_tokens)]), "length"
    return text, "stop"


class FakeOpenAIServer:
    "OpenAI-compatible server (`/v1/completions`, `/v1/chat/completions`, `/v1/models`) with injected faults."
    def __init__(self,
                 latency: float = 0.0,          # seconds slept before every answer
                 rate_429: float = 0.0,         # fraction of attempts answered 429 (rate limited)
                 rate_500: float = 0.0,         # ... answered 500
                 rate_timeout: float = 0.0,     # ... held for `timeout_sleep` seconds, then dropped without an answer
                 rate_drop: float = 0.0,        # ... closed at once without an answer
                 rate_malformed: float = 0.0,   # ... answered 200 with a body that is not a valid completion
                 seed: int = 0,                 # seed of the fault dice
                 responder: Callable[[dict], str]|None = None,  # request JSON -> completion text
                 fault_plan: Callable[[dict, int], str|None]|None = None,  # (request JSON, attempt) -> "ok", an OUTCOME or
                                                                           # an HTTP status such as "404"; overrides the dice
                 timeout_sleep: float = 2.0,    # how long a `timeout` fault holds the connection
                 tail_rate: float = 0.0,        # fraction of attempts that take `tail_latency` instead of `latency`
                 tail_latency: float = 2.0,     # the slow tail's latency, seconds (decided per body and attempt)
                 retry_after: float|None = None,  # `Retry-After` seconds sent with 429s
                 api_key: str|None = None,      # if set, requests must carry `Authorization: Bearer <api_key>`, else 401
                 models: list[str]|None = None, # if set, other model names get 404
                 leak_auth: bool = False,       # echo the Authorization header in error bodies (tests that clients scrub it)
                 host: str = "127.0.0.1", port: int = 0):
        self.latency, self.seed, self.timeout_sleep, self.retry_after = latency, seed, timeout_sleep, retry_after
        self.tail_rate, self.tail_latency = tail_rate, tail_latency
        self.rates = dict(zip(OUTCOMES, (rate_429, rate_500, rate_timeout, rate_drop, rate_malformed)))
        if sum(self.rates.values()) > 1: raise ValueError(f"fault rates add up to more than 1: {self.rates}")
        self.responder, self.fault_plan = responder or echo_responder, fault_plan
        self.api_key, self.models, self.leak_auth = api_key, models, leak_auth
        self._lock = threading.Lock()
        self._attempts: Counter = Counter()   # body hash -> times seen
        self.counters: Counter = Counter()    # outcome -> requests
        self.paths: Counter = Counter()       # POST path -> requests (e.g. "/v1/completions"), whatever the outcome
        self.httpd = _Server((host, port), self._handler_class())
        self._thread: threading.Thread|None = None

    # -- lifecycle
    @property
    def port(self) -> int: return self.httpd.server_address[1]
    @property
    def url(self) -> str: return f"http://127.0.0.1:{self.port}/v1"
    @property
    def requests(self) -> int:
        "Completion requests received (all outcomes)."
        with self._lock: return sum(self.counters.values())
    def snapshot(self) -> dict:
        with self._lock: return dict(self.counters)
    def reset_counters(self):
        with self._lock: self.counters.clear(); self._attempts.clear()
    def start(self) -> "FakeOpenAIServer":
        self._thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start(); return self
    def stop(self):
        self.httpd.shutdown(); self.httpd.server_close()
        if self._thread: self._thread.join(5)
    def __enter__(self): return self.start()
    def __exit__(self, *a): self.stop()

    # -- decisions
    def decide(self, body: bytes, req: dict) -> str:
        "The outcome of this attempt: `ok` or one of OUTCOMES, from (body hash, attempt number, seed)."
        h = hashlib.sha256(body).hexdigest()
        with self._lock:
            attempt = self._attempts[h]; self._attempts[h] += 1
        if self.fault_plan is not None:
            return self.fault_plan(req, attempt) or "ok"
        r = random.Random(f"{self.seed}:{h}:{attempt}").random()
        acc = 0.0
        for outcome in OUTCOMES:
            acc += self.rates[outcome]
            if r < acc: return outcome
        return "ok"

    def delay(self, body: bytes) -> float:
        "Seconds to wait before answering this attempt: `latency`, or `tail_latency` for a `tail_rate` share (seeded dice)."
        if not self.tail_rate: return self.latency
        h = hashlib.sha256(body).hexdigest()
        with self._lock: attempt = self._attempts[h]
        slow = random.Random(f"{self.seed}:latency:{h}:{attempt}").random() < self.tail_rate
        return self.tail_latency if slow else self.latency

    def count(self, outcome: str):
        with self._lock: self.counters[outcome] += 1

    def completion_body(self, path: str, req: dict) -> dict:
        chat = path.endswith("/chat/completions")
        text, finish = _cut(self.responder(req), req.get("stop"), req.get("max_tokens"))
        prompt = _messages_text(req.get("messages")) if chat else req.get("prompt", "")
        if isinstance(prompt, list): prompt = "\n".join(map(str, prompt))
        usage = {"prompt_tokens": len(str(prompt).split()), "completion_tokens": len(text.split())}
        usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
        rid = hashlib.sha256(json.dumps(req, sort_keys=True).encode()).hexdigest()[:12]
        choice = ({"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": finish, "logprobs": None}
                  if chat else {"index": 0, "text": text, "finish_reason": finish, "logprobs": None})
        return {"id": f"cmpl-{rid}", "object": "chat.completion" if chat else "text_completion",
                "created": int(time.time()), "model": req.get("model"), "choices": [choice], "usage": usage}

    def _handler_class(self):
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"   # keep-alive, as real servers
            disable_nagle_algorithm = True  # TCP_NODELAY, as real servers: else each answer waits ~40 ms for a delayed ACK
            def log_message(self, *a): pass

            def _send(self, status: int, obj=None, raw: bytes|None = None, headers: dict|None = None):
                data = raw if raw is not None else json.dumps(obj).encode()
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    for k, v in (headers or {}).items(): self.send_header(k, v)
                    self.end_headers(); self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError): self.close_connection = True

            def _error(self, status: int, code: str, msg: str, headers=None):
                if server.leak_auth: msg += f" (auth header was: {self.headers.get('Authorization')})"
                self._send(status, {"error": {"message": msg, "type": code, "code": code, "param": None}}, headers=headers)

            def do_GET(self):
                if self.path.rstrip("/") == "/v1/models":
                    return self._send(200, {"object": "list", "data": [{"id": m, "object": "model", "owned_by": "fake"}
                                                                       for m in (server.models or ["fake"])]})
                if self.path.rstrip("/") == "/stats": return self._send(200, server.snapshot())
                self._error(404, "not_found", f"no route {self.path}")

            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                path = self.path.rstrip("/")
                with server._lock: server.paths[path] += 1
                if path not in ("/v1/completions", "/v1/chat/completions"):
                    server.count("404"); return self._error(404, "not_found", f"no route {self.path}")
                if server.api_key is not None and self.headers.get("Authorization") != f"Bearer {server.api_key}":
                    server.count("401"); return self._error(401, "invalid_api_key", "Incorrect API key provided.")
                try: req = json.loads(body)
                except json.JSONDecodeError:
                    server.count("400"); return self._error(400, "invalid_request_error", "body is not JSON")
                need = "messages" if path.endswith("chat/completions") else "prompt"
                if not isinstance(req, dict) or not req.get("model") or need not in req:
                    server.count("400"); return self._error(400, "invalid_request_error", f"missing model or {need}")
                if server.models is not None and req["model"] not in server.models:
                    server.count("404"); return self._error(404, "model_not_found", f"model {req['model']!r} does not exist")
                outcome = server.decide(body, req)
                if (pause := server.delay(body)): time.sleep(pause)
                server.count(outcome)
                if outcome == "429":
                    hdr = {"Retry-After": str(server.retry_after)} if server.retry_after is not None else None
                    return self._error(429, "rate_limit_exceeded", "Rate limit reached, slow down.", headers=hdr)
                if outcome == "500": return self._error(500, "server_error", "The server had an error.")
                if outcome.isdigit():  # any other status a fault_plan asks for (400, 401, 404, 503 ...)
                    return self._error(int(outcome), f"error_{outcome}", f"Injected HTTP {outcome}.")
                if outcome in ("timeout", "drop"):
                    if outcome == "timeout": time.sleep(server.timeout_sleep)
                    self.close_connection = True
                    try: self.connection.shutdown(socket.SHUT_RDWR)
                    except OSError: pass
                    return
                if outcome == "malformed":  # alternately: truncated JSON, or JSON without choices
                    full = server.completion_body(path, req)
                    bad = (json.dumps(full)[:25].encode() if int(hashlib.sha256(body).hexdigest(), 16) % 2
                           else json.dumps({k: v for k, v in full.items() if k != "choices"}).encode())
                    return self._send(200, raw=bad)
                self._send(200, server.completion_body(path, req))
        return Handler


def main(argv=None):
    p = argparse.ArgumentParser(description="Fake OpenAI-compatible server with fault injection.")
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--latency", type=float, default=0.0)
    for o in OUTCOMES: p.add_argument(f"--rate-{o}", type=float, default=0.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--timeout-sleep", type=float, default=2.0)
    p.add_argument("--tail-rate", type=float, default=0.0, help="share of answers that take --tail-latency")
    p.add_argument("--tail-latency", type=float, default=2.0)
    p.add_argument("--api-key-env", default="", help="name of an env var holding the key requests must carry")
    a = p.parse_args(argv)
    srv = FakeOpenAIServer(latency=a.latency, seed=a.seed, timeout_sleep=a.timeout_sleep, port=a.port,
                           tail_rate=a.tail_rate, tail_latency=a.tail_latency,
                           api_key=os.environ[a.api_key_env] if a.api_key_env else None,
                           **{f"rate_{o}": getattr(a, f"rate_{o}") for o in OUTCOMES})
    print(f"READY {srv.url}", flush=True)
    try: srv.httpd.serve_forever(poll_interval=0.05)
    except KeyboardInterrupt: pass
    finally: srv.httpd.server_close()


if __name__ == "__main__":
    sys.exit(main())

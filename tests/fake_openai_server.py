"""An OpenAI-compatible HTTP server on loopback, with deterministic fault injection, for tests and benchmarks.

In a test:

    with FakeOpenAIServer(latency=0.01, rate_429=0.05, seed=0) as srv:
        backend = make_backend("openai", "fake", base_url=srv.url, api_key_env="")
        ...
        srv.counters   # {"ok": 95, "429": 5, ...}: requests received, by outcome

As a process (benchmarks): `python tests/fake_openai_server.py --port 0 --latency 0.2` prints one line
`READY http://127.0.0.1:PORT/v1` once it listens; `GET /stats` returns the counters as JSON (not counted itself).

The Batch API is there too (`/v1/files`: upload, retrieve, content; `/v1/batches`: create, retrieve, list, cancel):
a batch's lines are answered in a background thread by the same completion/chat code, through a status timeline
(`validating` -> `in_progress` -> `finalizing` -> `completed`, or `expired` / `failed` / `cancelled`) that the
`batch_*` options control; `srv.batch_counters` counts file uploads, batch creations, polls and lines.

Faults are decided per (sha256 of the request body, attempt number) from `seed`: the n-th time the server sees the
same body, it rolls the same dice as in any other run, so a test sees the same faults whatever the thread timing.
"""
from __future__ import annotations
import argparse, contextlib, hashlib, json, os, random, socket, sys, threading, time
from email.parser import BytesParser
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
                 jitter: float = 0.0,           # each attempt's latency times a factor uniform in [1 - jitter, 1 + jitter]
                 capacity: int|None = None,     # answers being worked on at once; more wait in a queue (a self-hosted
                                                # server that saturates: throughput stops growing, latency grows)
                 retry_after: float|None = None,  # `Retry-After` seconds sent with 429s
                 api_key: str|None = None,      # if set, requests must carry `Authorization: Bearer <api_key>`, else 401
                 models: list[str]|None = None, # if set, other model names get 404
                 leak_auth: bool = False,       # echo the Authorization header in error bodies (tests that clients scrub it)
                 batch_validating: float = 0.05,  # Batch API: seconds a new batch stays `validating`
                 batch_in_progress: float = 0.1,  # ... at least this many seconds `in_progress` (its lines are answered then)
                 batch_hold: bool = False,        # ... and stays `in_progress` until `release_batches()` is called
                 batch_outcome: str = "completed",  # how batches end: "completed", "expired" (the lines after the first
                                                    # `batch_expire_after` go to the error file) or "failed" (at validation)
                 batch_expire_after: float = 0.5, # fraction of a batch's lines answered before it expires
                 batch_line_fault: Callable[[dict], str|None]|None = None,  # batch line body -> an HTTP status such as
                                                                           # "400" or "500" for that line, or None
                 batch_drop: Callable[[str, str], bool]|None = None,  # (method, path) of a /v1/files or /v1/batches
                                                   # call -> True: do the work, then close the connection unanswered
                 host: str = "127.0.0.1", port: int = 0):
        self.latency, self.seed, self.timeout_sleep, self.retry_after = latency, seed, timeout_sleep, retry_after
        self.tail_rate, self.tail_latency, self.jitter, self.capacity = tail_rate, tail_latency, jitter, capacity
        self._slots = threading.Semaphore(capacity) if capacity else contextlib.nullcontext()
        self.in_flight = self.peak_in_flight = 0   # requests inside the server (queued or worked on), and the most at once
        self.rates = dict(zip(OUTCOMES, (rate_429, rate_500, rate_timeout, rate_drop, rate_malformed)))
        if sum(self.rates.values()) > 1: raise ValueError(f"fault rates add up to more than 1: {self.rates}")
        self.responder, self.fault_plan = responder or echo_responder, fault_plan
        self.api_key, self.models, self.leak_auth = api_key, models, leak_auth
        self._lock = threading.Lock()
        if batch_outcome not in ("completed", "expired", "failed"):
            raise ValueError(f"batch_outcome must be 'completed', 'expired' or 'failed', got {batch_outcome!r}")
        self.batch_validating, self.batch_in_progress, self.batch_outcome = batch_validating, batch_in_progress, batch_outcome
        self.batch_expire_after, self.batch_line_fault, self.batch_drop = batch_expire_after, batch_line_fault, batch_drop
        self._batch_release = threading.Event()
        if not batch_hold: self._batch_release.set()
        self.files: dict[str, dict] = {}      # file id -> {"meta": FileObject dict, "data": bytes}
        self.batches: dict[str, dict] = {}    # batch id -> Batch dict (the API's fields)
        self.batch_counters: Counter = Counter()  # files_created, batches_created, batch_retrieves, batch_lines, ...
        self._attempts: Counter = Counter()   # body hash -> times seen
        self.counters: Counter = Counter()    # outcome -> requests
        self.paths: Counter = Counter()       # POST path -> requests (e.g. "/v1/completions"), whatever the outcome
        self.answers: list = []               # (time.monotonic() when written, usage) of every completion answered 200
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
        "Seconds to wait before answering this attempt: `latency`, or `tail_latency` for a `tail_rate` share, times the jitter (seeded dice)."
        if not self.tail_rate and not self.jitter: return self.latency
        h = hashlib.sha256(body).hexdigest()
        with self._lock: attempt = self._attempts[h]
        dice = random.Random(f"{self.seed}:latency:{h}:{attempt}")
        slow = dice.random() < self.tail_rate
        return (self.tail_latency if slow else self.latency) * dice.uniform(1 - self.jitter, 1 + self.jitter)

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

    # -- the Batch API
    def release_batches(self):
        "Let batches held `in_progress` (`batch_hold=True`) go on to finish."
        self._batch_release.set()

    def _bcount(self, key: str, n: int = 1):
        with self._lock: self.batch_counters[key] += n

    def _new_file(self, data: bytes, filename: str, purpose: str) -> dict:
        with self._lock:
            fid = f"file-{len(self.files) + 1:06d}"
            meta = {"id": fid, "object": "file", "bytes": len(data), "created_at": int(time.time()),
                    "filename": filename, "purpose": purpose, "status": "processed"}
            self.files[fid] = {"meta": meta, "data": data}
        return meta

    def _batch_set(self, b: dict, status: str, **fields):
        with self._lock:
            b["status"] = status; b[f"{status}_at"] = int(time.time()); b.update(fields)

    def _run_batch(self, b: dict, lines: list):
        "Background life of one batch: validate, answer its lines in order, write the output and error files."
        time.sleep(self.batch_validating)
        bad = next((i for i, ln in enumerate(lines) if not isinstance(ln, dict) or ln.get("url") != b["endpoint"]
                    or ln.get("method") != "POST" or not isinstance(ln.get("body"), dict) or not ln.get("custom_id")), None)
        if self.batch_outcome == "failed" or bad is not None:
            msg = (f"line {bad + 1}: not a POST to {b['endpoint']} with a custom_id and a body" if bad is not None
                   else "Injected validation failure.")
            return self._batch_set(b, "failed", errors={"object": "list", "data": [
                {"code": "invalid_request", "message": msg, "line": None if bad is None else bad + 1, "param": None}]})
        self._batch_set(b, "in_progress")
        t0 = time.monotonic()
        cut = int(len(lines) * self.batch_expire_after) if self.batch_outcome == "expired" else len(lines)
        out, err, done = [], [], 0
        for i, ln in enumerate(lines):
            if b.get("cancel") or i >= cut: break
            req, rid = ln["body"], f"req_{hashlib.sha256(json.dumps(ln, sort_keys=True).encode()).hexdigest()[:12]}"
            fault = self.batch_line_fault(req) if self.batch_line_fault else None
            if fault is None and self.models is not None and req.get("model") not in self.models: fault = "404"
            if fault is None:
                resp = {"status_code": 200, "request_id": rid, "body": self.completion_body(b["endpoint"], req)}
                out.append({"id": f"batch_req_{i}", "custom_id": ln["custom_id"], "response": resp, "error": None})
            else:
                body = {"error": {"message": f"Injected HTTP {fault}.", "type": f"error_{fault}", "code": None, "param": None}}
                err.append({"id": f"batch_req_{i}", "custom_id": ln["custom_id"],
                            "response": {"status_code": int(fault), "request_id": rid, "body": body}, "error": None})
            done += 1; self._bcount("batch_lines")
            with self._lock: b["request_counts"] = {"total": len(lines), "completed": len(out), "failed": len(err)}
        while not b.get("cancel") and (time.monotonic() - t0 < self.batch_in_progress or not self._batch_release.is_set()):
            time.sleep(0.01)
        final = "cancelled" if b.get("cancel") else "expired" if done < len(lines) else "completed"
        why = {"cancelled": ("batch_cancelled", "This request was cancelled before it was executed."),
               "expired": ("batch_expired", "This request could not be executed before the completion window expired.")}
        for i, ln in enumerate(lines[done:], done):
            code, msg = why[final]
            err.append({"id": f"batch_req_{i}", "custom_id": ln["custom_id"], "response": None,
                        "error": {"code": code, "message": msg}})
        if final == "completed": self._batch_set(b, "finalizing")
        rnd = random.Random(f"{self.seed}:{b['id']}")
        rnd.shuffle(out); rnd.shuffle(err)                                   # results come back in any order
        dump = lambda rows: "".join(json.dumps(r) + "\n" for r in rows).encode()
        files = {"output_file_id": self._new_file(dump(out), "batch_output.jsonl", "batch_output")["id"] if out else None,
                 "error_file_id": self._new_file(dump(err), "batch_errors.jsonl", "batch_output")["id"] if err else None}
        with self._lock: b["request_counts"] = {"total": len(lines), "completed": len(out), "failed": len(err)}
        self._batch_set(b, final, **files)

    def batch_api(self, method: str, path: str, body: bytes, content_type: str) -> tuple[int, object]:
        "(status, JSON object or raw bytes) for a /v1/files or /v1/batches request."
        parts = path.split("/")[2:]   # ["files", id, "content"] / ["batches", id, "cancel"]
        err = lambda st, msg: (st, {"error": {"message": msg, "type": "invalid_request_error", "code": None, "param": None}})
        if parts == ["files"] and method == "POST":
            msg = BytesParser().parsebytes(b"Content-Type: " + content_type.encode() + b"\r\n\r\n" + body)
            fields = {p.get_param("name", header="content-disposition"): p for p in (msg.get_payload() or [])} \
                if msg.is_multipart() else {}
            if "file" not in fields or "purpose" not in fields: return err(400, "multipart body needs 'file' and 'purpose'")
            purpose = fields["purpose"].get_payload(decode=True).decode()
            meta = self._new_file(fields["file"].get_payload(decode=True), fields["file"].get_filename() or "upload", purpose)
            self._bcount("files_created"); return 200, meta
        if parts[:1] == ["files"] and len(parts) in (2, 3) and method == "GET":
            f = self.files.get(parts[1])
            if f is None: return err(404, f"No such File object: {parts[1]}")
            if len(parts) == 3 and parts[2] == "content": self._bcount("file_downloads"); return 200, f["data"]
            return (200, f["meta"]) if len(parts) == 2 else err(404, f"no route {path}")
        if parts == ["batches"] and method == "POST":
            try: req = json.loads(body)
            except json.JSONDecodeError: return err(400, "body is not JSON")
            f = self.files.get(req.get("input_file_id"))
            if f is None: return err(400, f"No such File object: {req.get('input_file_id')}")
            if req.get("endpoint") not in ("/v1/chat/completions", "/v1/completions"): return err(400, "unsupported endpoint")
            try: lines = [json.loads(x) for x in f["data"].decode().splitlines() if x.strip()]
            except json.JSONDecodeError: lines = [None]
            with self._lock:
                bid = f"batch_{len(self.batches) + 1:06d}"
                b = {"id": bid, "object": "batch", "endpoint": req["endpoint"], "errors": None,
                     "input_file_id": req["input_file_id"], "completion_window": req.get("completion_window", "24h"),
                     "status": "validating", "output_file_id": None, "error_file_id": None, "created_at": int(time.time()),
                     "request_counts": {"total": len(lines), "completed": 0, "failed": 0}, "metadata": req.get("metadata")}
                self.batches[bid] = b
            self._bcount("batches_created")
            threading.Thread(target=self._run_batch, args=(b, lines), daemon=True, name=bid).start()
            return 200, self._batch_view(b)
        if parts == ["batches"] and method == "GET":
            with self._lock: data = [self._batch_view(b, locked=True) for b in reversed(list(self.batches.values()))]
            return 200, {"object": "list", "data": data, "first_id": None, "last_id": None, "has_more": False}
        if parts[:1] == ["batches"] and len(parts) in (2, 3):
            b = self.batches.get(parts[1])
            if b is None: return err(404, f"No such Batch object: {parts[1]}")
            if len(parts) == 2 and method == "GET": self._bcount("batch_retrieves"); return 200, self._batch_view(b)
            if parts[2:] == ["cancel"] and method == "POST":
                if b["status"] in ("validating", "in_progress"):
                    self._bcount("batches_cancelled"); b["cancel"] = True; self._batch_set(b, "cancelling")
                return 200, self._batch_view(b)
        return err(404, f"no route {path}")

    def _batch_view(self, b: dict, locked: bool = False) -> dict:
        if locked: return {k: v for k, v in b.items() if k != "cancel"}
        with self._lock: return {k: v for k, v in b.items() if k != "cancel"}

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

            def _batch_api(self, method, body=b""):
                if server.api_key is not None and self.headers.get("Authorization") != f"Bearer {server.api_key}":
                    return self._error(401, "invalid_api_key", "Incorrect API key provided.")
                path = self.path.split("?")[0].rstrip("/")
                status, obj = server.batch_api(method, path, body, self.headers.get("Content-Type", ""))
                if server.batch_drop is not None and server.batch_drop(method, path):   # done, and the answer is lost
                    server._bcount("dropped_answers")
                    self.close_connection = True
                    try: self.connection.shutdown(socket.SHUT_RDWR)
                    except OSError: pass
                    return
                if isinstance(obj, bytes):
                    try:
                        self.send_response(status); self.send_header("Content-Type", "application/octet-stream")
                        self.send_header("Content-Length", str(len(obj))); self.end_headers(); self.wfile.write(obj)
                    except (BrokenPipeError, ConnectionResetError): self.close_connection = True
                    return
                self._send(status, obj)

            def do_GET(self):
                if self.path.startswith(("/v1/files", "/v1/batches")): return self._batch_api("GET")
                if self.path.rstrip("/") == "/v1/models":
                    return self._send(200, {"object": "list", "data": [{"id": m, "object": "model", "owned_by": "fake"}
                                                                       for m in (server.models or ["fake"])]})
                if self.path.rstrip("/") == "/stats": return self._send(200, server.snapshot())
                self._error(404, "not_found", f"no route {self.path}")

            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                path = self.path.rstrip("/")
                with server._lock: server.paths[path] += 1
                if path.startswith(("/v1/files", "/v1/batches")): return self._batch_api("POST", body)
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
                with server._lock: server.in_flight += 1; server.peak_in_flight = max(server.peak_in_flight, server.in_flight)
                try:
                    with server._slots:   # a server at capacity queues the request
                        if (pause := server.delay(body)): time.sleep(pause)
                finally:
                    with server._lock: server.in_flight -= 1
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
                body = server.completion_body(path, req)
                self._send(200, body)
                with server._lock: server.answers.append((time.monotonic(), body["usage"]))
        return Handler


class BlackHoleServer:
    "A loopback server that accepts connections, reads what is sent and never answers (a hung replica)."
    def __init__(self, host: str = "127.0.0.1", port: int = 0):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((host, port)); self.sock.listen(512); self.sock.settimeout(0.05)
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}/v1"
        self.connections, self._conns, self._stop = 0, [], threading.Event()
        self._thread: threading.Thread|None = None
    def _serve(self):
        while not self._stop.is_set():
            try: c, _ = self.sock.accept()
            except (socket.timeout, OSError): continue
            c.setblocking(False)
            self._conns.append(c); self.connections += 1
            for x in self._conns:                       # drain what clients send, so they are never blocked writing
                try: x.recv(65536)
                except OSError: pass
    def start(self) -> "BlackHoleServer":
        self._thread = threading.Thread(target=self._serve, daemon=True); self._thread.start(); return self
    def stop(self):
        self._stop.set()
        if self._thread: self._thread.join(5)
        for c in self._conns: c.close()
        self.sock.close()
    def __enter__(self): return self.start()
    def __exit__(self, *a): self.stop()


def main(argv=None):
    p = argparse.ArgumentParser(description="Fake OpenAI-compatible server with fault injection.")
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--latency", type=float, default=0.0)
    for o in OUTCOMES: p.add_argument(f"--rate-{o}", type=float, default=0.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--timeout-sleep", type=float, default=2.0)
    p.add_argument("--tail-rate", type=float, default=0.0, help="share of answers that take --tail-latency")
    p.add_argument("--tail-latency", type=float, default=2.0)
    p.add_argument("--jitter", type=float, default=0.0, help="latency times a factor uniform in [1 - jitter, 1 + jitter]")
    p.add_argument("--capacity", type=int, default=None, help="answers worked on at once; more wait in a queue")
    p.add_argument("--api-key-env", default="", help="name of an env var holding the key requests must carry")
    a = p.parse_args(argv)
    srv = FakeOpenAIServer(latency=a.latency, seed=a.seed, timeout_sleep=a.timeout_sleep, port=a.port,
                           tail_rate=a.tail_rate, tail_latency=a.tail_latency, jitter=a.jitter, capacity=a.capacity,
                           api_key=os.environ[a.api_key_env] if a.api_key_env else None,
                           **{f"rate_{o}": getattr(a, f"rate_{o}") for o in OUTCOMES})
    print(f"READY {srv.url}", flush=True)
    try: srv.httpd.serve_forever(poll_interval=0.05)
    except KeyboardInterrupt: pass
    finally: srv.httpd.server_close()


if __name__ == "__main__":
    sys.exit(main())

"""OpenAICompatClient against a real HTTP server on 127.0.0.1 (no network), and the
all-or-nothing teacher dataset."""

import json
import os
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

pytest.importorskip("openai")

from rl.iga.agents import EndpointCfg, EndpointError, OpenAICompatClient  # noqa: E402
from rl.iga.sail import build_references  # noqa: E402


def _completion(texts):
    return {"id": "x", "object": "chat.completion", "created": 0, "model": "m",
            "choices": [{"index": i, "finish_reason": "stop",
                         "message": {"role": "assistant", "content": t}}
                        for i, t in enumerate(texts)]}


class Server:
    """Replies from a script of (status, body, delay_s); records every request body."""

    def __init__(self, script):
        self.script, self.requests = list(script), []
        outer = self

        class H(BaseHTTPRequestHandler):
            def do_POST(self):
                n = int(self.headers.get("Content-Length", 0))
                outer.requests.append({"path": self.path, "auth": self.headers.get(
                    "Authorization"), "body": json.loads(self.rfile.read(n))})
                status, body, delay = outer.script.pop(0) if outer.script else (500, "{}", 0)
                time.sleep(delay)
                data = body if isinstance(body, str) else json.dumps(body)
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data.encode())
                except (BrokenPipeError, ConnectionResetError):
                    pass

            def log_message(self, *a):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server():
    made = []

    def make(script):
        s = Server(script)
        made.append(s)
        return s
    yield make
    for s in made:
        s.close()


def client(url, **kw):
    cfg = dict(base_url=url, model="teacher-x", timeout=2.0, retries=2, backoff=0.01)
    cfg.update(kw)
    return OpenAICompatClient(EndpointCfg(**cfg))


def test_request_body_n_choices_and_key_from_env(server, monkeypatch):
    monkeypatch.setenv("IGA_TEST_KEY", "sk-local")
    s = server([(200, _completion(["a", "b", "c"]), 0)])
    out = client(s.url, api_key_env="IGA_TEST_KEY").chat(
        [{"role": "user", "content": "hi"}], n=3, temperature=0.5, max_tokens=7, seed=11)
    assert out == ["a", "b", "c"]
    (req,) = s.requests
    assert req["path"] == "/v1/chat/completions"
    assert req["auth"] == "Bearer sk-local"
    b = req["body"]
    assert (b["model"], b["n"], b["temperature"], b["max_tokens"], b["seed"]) == (
        "teacher-x", 3, 0.5, 7, 11)
    assert b["messages"] == [{"role": "user", "content": "hi"}]


def test_retries_on_500_then_succeeds(server):
    s = server([(500, {"error": {"message": "boom"}}, 0), (503, "{}", 0),
                (200, _completion(["ok"]), 0)])
    assert client(s.url).chat([{"role": "user", "content": "q"}]) == ["ok"]
    assert len(s.requests) == 3


def test_gives_up_after_retries_with_clear_error(server):
    s = server([(500, "{}", 0)] * 5)
    with pytest.raises(EndpointError, match="after 3 attempts"):
        client(s.url).chat([{"role": "user", "content": "q"}])
    assert len(s.requests) == 3


def test_timeout_is_retried_then_reported(server):
    s = server([(200, _completion(["late"]), 1.0)] * 3)
    with pytest.raises(EndpointError, match="timed out after 2 attempts"):
        client(s.url, timeout=0.2, retries=1).chat([{"role": "user", "content": "q"}])
    assert len(s.requests) == 2


@pytest.mark.parametrize("body", ["this is not json", '{"choices": []}',
                                  '{"choices": [{"message": {"role": "assistant"}}]}'])
def test_malformed_reply_is_a_clear_error_without_retry(server, body):
    s = server([(200, body, 0)] * 3)
    with pytest.raises(EndpointError, match="malformed reply"):
        client(s.url).chat([{"role": "user", "content": "q"}])
    assert len(s.requests) == 1


def test_client_error_is_not_retried(server):
    s = server([(401, {"error": {"message": "bad key"}}, 0)])
    with pytest.raises(EndpointError, match="HTTP 401"):
        client(s.url).chat([{"role": "user", "content": "q"}])
    assert len(s.requests) == 1


def _free_port():
    with socket.socket() as sk:
        sk.bind(("127.0.0.1", 0))
        return sk.getsockname()[1]


def test_unreachable_endpoint_writes_no_partial_dataset(tmp_path):
    url = f"http://127.0.0.1:{_free_port()}/v1"
    path = tmp_path / "refs" / "references.jsonl"
    with pytest.raises(EndpointError, match="unreachable"):
        build_references(client(url, retries=1), [("k", "rule", "q")], path=str(path))
    assert not path.exists()


def test_failure_midway_writes_no_partial_dataset(server, tmp_path):
    graph = json.dumps({"nodes": ["I", "x"], "edges": [
        {"from": "I", "to": "x", "relationship": "should not mention"}]})
    # query 1: graph, enhance, answer succeed; query 2: the graph call gets garbage
    s = server([(200, _completion([graph]), 0), (200, _completion([graph]), 0),
                (200, _completion(["fine"]), 0), (200, "garbage", 0)])
    path = tmp_path / "references.jsonl"
    with pytest.raises(EndpointError):
        build_references(client(s.url), [("a", "r", "q1"), ("b", "r", "q2")], path=str(path))
    assert not path.exists() and not os.path.exists(str(path) + ".tmp")


def test_missing_endpoint_config_is_a_clear_error():
    with pytest.raises(ValueError, match="base_url and model"):
        OpenAICompatClient(EndpointCfg())

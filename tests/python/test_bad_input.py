"""Malformed requests, sent raw with httpx: each gets its status, an OpenAI
error object with all four keys, the right `type` and (where it applies) the
`param` naming the field; afterwards the server still serves normally and has
not panicked. Tests in this module run in file order: the table first, the
health checks last."""
import json

import httpx
import pytest

ANY = object()  # param not checked (relayed from upstream, or not about a field)
USER = [{"role": "user", "content": "whoami /all on DC01"}]
VALID = json.dumps({"model": "triage", "messages": USER})


def body(**fields) -> str:
    return json.dumps({"model": "triage", "messages": USER, **fields})


# (id, method, path, raw body, status, error.type, error.param, error.code)
CASES = [
    ("invalid json", "POST", "/v1/chat/completions", '{"model": "triage",', 400, "invalid_request_error", None, ANY),
    ("empty body", "POST", "/v1/chat/completions", "", 400, "invalid_request_error", None, ANY),
    ("json array", "POST", "/v1/chat/completions", "[1,2]", 400, "invalid_request_error", None, ANY),
    ("json null", "POST", "/v1/chat/completions", "null", 400, "invalid_request_error", None, ANY),
    ("trailing garbage", "POST", "/v1/chat/completions", VALID + " {}", 400, "invalid_request_error", None, ANY),
    ("invalid utf-8", "POST", "/v1/chat/completions",
     b'{"model":"triage","messages":[{"role":"user","content":"\xff\xfe"}]}', 400, "invalid_request_error", ANY, ANY),
    ("missing model", "POST", "/v1/chat/completions", json.dumps({"messages": USER}),
     400, "invalid_request_error", "model", ANY),
    ("model a number", "POST", "/v1/chat/completions", json.dumps({"model": 5, "messages": USER}),
     400, "invalid_request_error", "model", ANY),
    ("model empty", "POST", "/v1/chat/completions", json.dumps({"model": "", "messages": USER}),
     400, "invalid_request_error", "model", ANY),
    ("duplicate model", "POST", "/v1/chat/completions",
     '{"model":"triage","model":"gpt-4o","messages":[{"role":"user","content":"x"}]}',
     400, "invalid_request_error", ANY, ANY),
    ("missing messages", "POST", "/v1/chat/completions", json.dumps({"model": "triage"}),
     400, "invalid_request_error", "messages", ANY),
    ("messages not an array", "POST", "/v1/chat/completions", json.dumps({"model": "triage", "messages": "hi"}),
     400, "invalid_request_error", "messages", ANY),
    ("messages empty", "POST", "/v1/chat/completions", json.dumps({"model": "triage", "messages": []}),
     400, "invalid_request_error", "messages", ANY),
    ("message a number", "POST", "/v1/chat/completions", json.dumps({"model": "triage", "messages": [5]}),
     400, "invalid_request_error", "messages[0]", ANY),
    ("role robot", "POST", "/v1/chat/completions",
     json.dumps({"model": "triage", "messages": [{"role": "robot", "content": "x"}]}),
     400, "invalid_request_error", "messages[0].role", ANY),
    ("content a number", "POST", "/v1/chat/completions",
     json.dumps({"model": "triage", "messages": [{"role": "user", "content": 5}]}),
     400, "invalid_request_error", "messages[0].content", ANY),
    ("second message bad", "POST", "/v1/chat/completions",
     json.dumps({"model": "triage", "messages": USER + [{"role": "user", "content": {"x": 1}}]}),
     400, "invalid_request_error", "messages[1].content", ANY),
    ("stream a string", "POST", "/v1/chat/completions", body(stream="yes"), 400, "invalid_request_error", "stream", ANY),
    ("include_usage a number", "POST", "/v1/chat/completions", body(stream=True, stream_options={"include_usage": 1}),
     400, "invalid_request_error", "stream_options.include_usage", ANY),
    ("n zero", "POST", "/v1/chat/completions", body(n=0), 400, "invalid_request_error", "n", ANY),
    ("n negative", "POST", "/v1/chat/completions", body(n=-1), 400, "invalid_request_error", "n", ANY),
    ("n huge", "POST", "/v1/chat/completions", body(n=1e30), 400, "invalid_request_error", "n", ANY),
    ("temperature 3", "POST", "/v1/chat/completions", body(temperature=3), 400, "invalid_request_error", "temperature", ANY),
    ("temperature a string", "POST", "/v1/chat/completions", body(temperature="hot"),
     400, "invalid_request_error", "temperature", ANY),
    ("top_p 2", "POST", "/v1/chat/completions", body(top_p=2), 400, "invalid_request_error", "top_p", ANY),
    ("max_tokens negative", "POST", "/v1/chat/completions", body(max_tokens=-5),
     400, "invalid_request_error", "max_tokens", ANY),
    ("tools not an array", "POST", "/v1/chat/completions", body(tools="isolate_host"),
     400, "invalid_request_error", "tools", ANY),
    ("deeply nested content", "POST", "/v1/chat/completions",
     '{"model":"triage","messages":[{"role":"user","content":' + "[" * 5000 + "]" * 5000 + "}]}",
     400, "invalid_request_error", ANY, ANY),
    ("body over the limit", "POST", "/v1/chat/completions",
     json.dumps({"model": "triage", "messages": [{"role": "user", "content": "A" * 70_000}]}),
     413, "invalid_request_error", None, "request_too_large"),
    ("unknown model", "POST", "/v1/chat/completions", json.dumps({"model": "no-such-model", "messages": USER}),
     404, "invalid_request_error", ANY, "model_not_found"),
    ("unknown v1 route (relayed)", "POST", "/v1/nope", "{}", 404, "invalid_request_error", ANY, ANY),
    ("GET on chat completions", "GET", "/v1/chat/completions", None, 405, "invalid_request_error", None, ANY),
]


def check_error(r: httpx.Response, status: int, kind: str, param=ANY, code=ANY) -> dict:
    assert r.status_code == status, r.text
    assert "application/json" in r.headers.get("content-type", ""), r.headers
    payload = r.json()
    assert set(payload) == {"error"}, payload
    error = payload["error"]
    assert {"message", "type", "param", "code"} <= set(error), error
    assert isinstance(error["message"], str) and error["message"], error
    assert error["type"] == kind, error
    if param is not ANY:
        assert error["param"] == param, error
    if code is not ANY:
        assert error["code"] == code, error
    return error


def auth(proxy, **extra) -> dict:
    return {"Authorization": f"Bearer {proxy.keys['client']}", "Content-Type": "application/json", **extra}


@pytest.mark.parametrize("name,method,path,raw,status,kind,param,code", CASES, ids=[c[0] for c in CASES])
def test_bad_input(proxy, name, method, path, raw, status, kind, param, code):
    r = httpx.request(method, proxy.url + path, content=raw, headers=auth(proxy), timeout=20)
    check_error(r, status, kind, param, code)


def test_a_body_over_the_limit_without_content_length(proxy):
    """A chunked upload declares no length: the limit holds all the same."""
    def chunks():
        yield b'{"model":"triage","messages":[{"role":"user","content":"'
        for _ in range(20):
            yield b"A" * 8192
        yield b'"}]}'

    r = httpx.post(proxy.url + "/v1/chat/completions", content=chunks(), headers=auth(proxy), timeout=20)
    check_error(r, 413, "invalid_request_error", code="request_too_large")


def test_a_wrong_content_type_is_still_parsed_as_json(proxy):
    r = httpx.post(proxy.url + "/v1/chat/completions", content=VALID,
                   headers=auth(proxy, **{"Content-Type": "text/plain"}), timeout=20)
    assert r.status_code == 200, r.text
    assert "Threat type:" in r.json()["choices"][0]["message"]["content"]


@pytest.mark.parametrize("authorization", [
    "Basic Zm9vOmJhcg==",
    "Bearer",
    "Token fw-not-a-key",
    "fw-not-a-key",
])
def test_bad_authorization_header(proxy, authorization):
    r = httpx.post(proxy.url + "/v1/chat/completions", content=VALID,
                   headers={"Authorization": authorization, "Content-Type": "application/json"}, timeout=20)
    check_error(r, 401, "invalid_request_error")


def test_no_authorization_header(proxy):
    r = httpx.post(proxy.url + "/v1/chat/completions", content=VALID,
                   headers={"Content-Type": "application/json"}, timeout=20)
    check_error(r, 401, "invalid_request_error")


def test_unknown_route_is_relayed_from_the_upstream(proxy, sim):
    """`/v1/nope` is no Flywheel route: it goes to the default provider,
    whose own 404 comes back unchanged."""
    direct = httpx.post(sim.url + "/v1/nope", content="{}", timeout=20)
    via_proxy = httpx.post(proxy.url + "/v1/nope", content="{}", headers=auth(proxy), timeout=20)
    assert via_proxy.status_code == direct.status_code == 404
    assert via_proxy.json() == direct.json()


# --- after the table ------------------------------------------------------------

def test_the_server_still_serves_after_the_table(proxy):
    r = httpx.post(proxy.url + "/v1/chat/completions", content=VALID, headers=auth(proxy), timeout=20)
    assert r.status_code == 200, r.text
    assert "Threat type:" in r.json()["choices"][0]["message"]["content"]
    assert httpx.get(proxy.url + "/readyz", timeout=5).status_code == 200
    assert proxy.process.alive()


def test_nothing_panicked(proxy, sim):
    for process in (proxy.process, sim.process):
        assert process.alive(), f"{process.name} exited"
        assert "panicked" not in process.log(), f"{process.name} panicked: see {process.log_path}"

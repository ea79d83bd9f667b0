"""Malformed requests, raw: each gets its status and error type, and the
server keeps serving afterwards."""
import httpx
import pytest

VALID = '{"model":"triage","messages":[{"role":"user","content":"whoami /all on DC01"}]}'
CASES = [
    ("invalid json", "POST", "/v1/chat/completions", "{", 400, "invalid_request_error", None),
    ("json array", "POST", "/v1/chat/completions", "[1,2]", 400, "invalid_request_error", None),
    ("missing model", "POST", "/v1/chat/completions", '{"messages":[{"role":"user","content":"x"}]}', 400, "invalid_request_error", "model"),
    ("model not a string", "POST", "/v1/chat/completions", '{"model":5,"messages":[{"role":"user","content":"x"}]}', 400, "invalid_request_error", "model"),
    ("messages not an array", "POST", "/v1/chat/completions", '{"model":"triage","messages":"hi"}', 400, "invalid_request_error", "messages"),
    ("unknown role", "POST", "/v1/chat/completions", '{"model":"triage","messages":[{"role":"robot","content":"x"}]}', 400, "invalid_request_error", "messages[0].role"),
    ("content a number", "POST", "/v1/chat/completions", '{"model":"triage","messages":[{"role":"user","content":5}]}', 400, "invalid_request_error", "messages[0].content"),
    ("stream a string", "POST", "/v1/chat/completions", VALID[:-1] + ',"stream":"yes"}', 400, "invalid_request_error", "stream"),
    ("n zero", "POST", "/v1/chat/completions", VALID[:-1] + ',"n":0}', 400, "invalid_request_error", "n"),
    ("temperature 3", "POST", "/v1/chat/completions", VALID[:-1] + ',"temperature":3}', 400, "invalid_request_error", "temperature"),
    ("body over the limit", "POST", "/v1/chat/completions", '{"model":"triage","messages":[{"role":"user","content":"' + "A" * 70_000 + '"}]}', 413, "invalid_request_error", None),
    ("unknown v1 route", "POST", "/v1/nope", "{}", 404, "invalid_request_error", None),
    ("wrong method", "GET", "/v1/chat/completions", None, 405, "invalid_request_error", None),
]


@pytest.mark.parametrize("name,method,path,body,status,kind,param", CASES, ids=[c[0] for c in CASES])
def test_bad_input(stack, name, method, path, body, status, kind, param):
    p = stack["main"]
    headers = {"Authorization": f"Bearer {p.keys['client']}", "Content-Type": "text/plain"}
    r = httpx.request(method, p.url + path, content=body, headers=headers, timeout=10)
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert set(error) >= {"message", "type", "param", "code"}
    assert error["type"] == kind
    if param is not None:
        assert error["param"] == param


def test_bad_authorization_scheme(stack):
    p = stack["main"]
    r = httpx.post(p.url + "/v1/chat/completions", content=VALID, headers={"Authorization": "Basic abc"})
    assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"


def test_server_still_serves_after_the_table(stack):
    p = stack["main"]
    r = httpx.post(p.url + "/v1/chat/completions", content=VALID,
                   headers={"Authorization": f"Bearer {p.keys['client']}", "Content-Type": "application/json"}, timeout=10)
    assert r.status_code == 200
    assert "Threat type: discovery" in r.json()["choices"][0]["message"]["content"]

#!/usr/bin/env python3
"""Tests of the mock provider itself (stdlib unittest).

Starts mock_provider.py as a subprocess on port 0 and talks to it with http.client and raw
sockets. Run: python3 test/mock/test_mock_provider.py  (last line: "N passed, M failed").
"""

import base64
import concurrent.futures
import email.utils
import http.client
import json
import math
import os
import select
import signal
import socket
import subprocess
import sys
import tempfile
import time
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
MOCK = os.path.join(HERE, "mock_provider.py")


# -----------------------------------------------------------------------------
# Process management and HTTP helpers
# -----------------------------------------------------------------------------

def start_mock(*extra):
    """Start a mock; return (process, port, seconds until LISTENING)."""
    t0 = time.monotonic()
    proc = subprocess.Popen([sys.executable, MOCK, "--port", "0", *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    ready, _, _ = select.select([proc.stdout], [], [], 10)
    if not ready:
        proc.kill()
        raise RuntimeError("mock did not start")
    line = proc.stdout.readline().decode()
    if not line.startswith("LISTENING "):
        proc.kill()
        raise RuntimeError(f"unexpected first line {line!r}")
    return proc, int(line.split()[1]), time.monotonic() - t0


def stop_mock(proc):
    proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(5)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        return None


class Mock:
    """The shared mock instance of this test module."""
    proc = None
    port = None
    startup = None


def setUpModule():
    Mock.proc, Mock.port, Mock.startup = start_mock("--quiet")


def tearDownModule():
    if Mock.proc is not None:
        stop_mock(Mock.proc)


def call(method, path, body=None, headers=None, port=None, timeout=10):
    """One request on a new connection -> (status, lower-cased headers, raw body)."""
    conn = http.client.HTTPConnection("127.0.0.1", port or Mock.port, timeout=timeout)
    try:
        if isinstance(body, (dict, list)):
            body = json.dumps(body)
        conn.request(method, path, body=body, headers=headers or {})
        resp = conn.getresponse()
        data = resp.read()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, data
    finally:
        conn.close()


def post(path, body, headers=None, port=None):
    """POST JSON -> (status, headers, parsed JSON body)."""
    status, hdrs, data = call("POST", path, body, headers, port)
    return status, hdrs, json.loads(data)


def control(method, name, body=None, port=None):
    status, _, data = call(method, "/_mock/" + name, body, port=port)
    return status, json.loads(data)


def stats():
    return control("GET", "stats")[1]


def requests_log(query=""):
    return control("GET", "requests" + query)[1]["requests"]


def wait_for(pred, timeout=3.0):
    """Poll pred() until true; return its last value."""
    end = time.monotonic() + timeout
    while True:
        v = pred()
        if v or time.monotonic() > end:
            return v
        time.sleep(0.02)


def read_response(f):
    """Read one HTTP/1.1 response from a binary file object -> (status, headers, body)."""
    line = f.readline()
    if not line:
        raise ConnectionError("closed")
    status = int(line.split()[1])
    headers = {}
    while True:
        line = f.readline().decode("latin-1").rstrip("\r\n")
        if not line:
            break
        k, _, v = line.partition(":")
        headers[k.strip().lower()] = v.strip()
    if status == 100:
        return read_response(f)
    body = f.read(int(headers.get("content-length", "0")))
    return status, headers, body


def raw_socket():
    s = socket.create_connection(("127.0.0.1", Mock.port), timeout=5)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return s


def raw_request(path, body, headers=None, extra=""):
    """Bytes of a POST with Content-Length."""
    if isinstance(body, dict):
        body = json.dumps(body)
    data = body.encode()
    head = f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: {len(data)}\r\n"
    for k, v in (headers or {}).items():
        head += f"{k}: {v}\r\n"
    return (head + extra + "\r\n").encode() + data


# Request builders for the five protocols.
AH = {"x-api-key": "test-key", "anthropic-version": "2023-06-01", "content-type": "application/json"}
OH = {"authorization": "Bearer test-key", "content-type": "application/json"}
GH = {"x-goog-api-key": "test-key", "content-type": "application/json"}
BH = {"authorization": "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20250101/us-east-1/bedrock/aws4_request, "
                       "SignedHeaders=host;x-amz-date, Signature=deadbeef",
      "x-amz-date": "20250101T000000Z", "content-type": "application/json"}
GEMINI = "/v1beta/models/gemini-2.0-flash:generateContent"
BEDROCK = "/model/anthropic.claude-3-5-sonnet-20240620-v1%3A0/converse"


def anth(text, **kw):
    body = {"model": "claude-test", "max_tokens": 1024, "messages": [{"role": "user", "content": text}]}
    body.update(kw)
    return body


def oai(text, **kw):
    body = {"model": "gpt-test", "messages": [{"role": "user", "content": text}]}
    body.update(kw)
    return body


def gem(text, **kw):
    body = {"contents": [{"role": "user", "parts": [{"text": text}]}]}
    body.update(kw)
    return body


def bed(text, **kw):
    body = {"messages": [{"role": "user", "content": [{"text": text}]}]}
    body.update(kw)
    return body


def oll(text, **kw):
    body = {"model": "llama3", "stream": False, "messages": [{"role": "user", "content": text}]}
    body.update(kw)
    return body


class MockTest(unittest.TestCase):
    def setUp(self):
        status, _ = control("POST", "reset")
        self.assertEqual(status, 200)


# -----------------------------------------------------------------------------
# Anthropic
# -----------------------------------------------------------------------------

class TestAnthropic(MockTest):
    def test_happy_path(self):
        st, h, b = post("/v1/messages", anth("Hello there"), AH)
        self.assertEqual(st, 200)
        self.assertEqual(b, {
            "id": "msg_mock_1", "type": "message", "role": "assistant", "model": "claude-test",
            "content": [{"type": "text", "text": "mock reply to: Hello there"}],
            "stop_reason": "end_turn", "stop_sequence": None,
            "usage": {"input_tokens": 2, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0,
                      "cache_creation": {"ephemeral_5m_input_tokens": 0, "ephemeral_1h_input_tokens": 0},
                      "output_tokens": 5, "server_tool_use": None, "service_tier": "standard"}})
        self.assertEqual(h["request-id"], "req_mock_1")
        self.assertEqual(h["content-type"], "application/json")
        self.assertEqual(h["anthropic-ratelimit-requests-limit"], "4000")
        self.assertEqual(h["anthropic-ratelimit-requests-remaining"], "3999")
        self.assertRegex(h["anthropic-ratelimit-requests-reset"], r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$")
        self.assertIn("anthropic-ratelimit-tokens-limit", h)

    def test_system_blocks_and_multi_turn_counting(self):
        body = anth("", system=[{"type": "text", "text": "sys a"}, {"type": "text", "text": "sys b"}],
                    messages=[{"role": "user", "content": "one two three"},
                              {"role": "assistant", "content": [{"type": "text", "text": "four five"}]},
                              {"role": "user", "content": [{"type": "text", "text": "six"},
                                                           {"type": "text", "text": "seven [[mock:cache=0]]"}]}])
        st, _, b = post("/v1/messages", body, AH)
        self.assertEqual(b["content"][0]["text"], "mock reply to: six seven [system: sys a sys b]")
        self.assertEqual(b["usage"]["input_tokens"], 11)
        self.assertEqual(b["usage"]["output_tokens"], 10)

    def test_system_string(self):
        _, _, b = post("/v1/messages", anth("hi", system="  be brief  "), AH)
        self.assertEqual(b["content"][0]["text"], "mock reply to: hi [system: be brief]")
        self.assertEqual(b["usage"]["input_tokens"], 3)

    def test_max_tokens(self):
        _, _, b = post("/v1/messages", anth("a b c d", max_tokens=3), AH)
        self.assertEqual(b["content"][0]["text"], "mock reply to:")
        self.assertEqual(b["stop_reason"], "max_tokens")
        self.assertIsNone(b["stop_sequence"])
        self.assertEqual(b["usage"]["output_tokens"], 3)

    def test_stop_sequence(self):
        _, _, b = post("/v1/messages", anth("alpha beta gamma", stop_sequences=["gamma", "beta"]), AH)
        self.assertEqual(b["content"][0]["text"], "mock reply to: alpha ")
        self.assertEqual(b["stop_reason"], "stop_sequence")
        self.assertEqual(b["stop_sequence"], "beta")
        self.assertEqual(b["usage"]["output_tokens"], 4)

    def test_tool_call_by_marker(self):
        tools = [{"name": "get_weather", "input_schema": {"type": "object"}}, {"name": "other"}]
        _, _, b = post("/v1/messages", anth("weather in Paris [[mock:tool]]", tools=tools), AH)
        self.assertEqual(b["content"], [
            {"type": "text", "text": "calling get_weather"},
            {"type": "tool_use", "id": "toolu_mock_1", "name": "get_weather",
             "input": {"query": "weather in Paris"}}])
        self.assertEqual(b["stop_reason"], "tool_use")
        self.assertEqual(b["usage"]["output_tokens"], 5)
        self.assertEqual(b["usage"]["input_tokens"], 3)

    def test_tool_choice_forcing(self):
        tools = [{"name": "first"}, {"name": "second"}]
        _, _, b = post("/v1/messages", anth("q", tools=tools, tool_choice={"type": "tool", "name": "second"}), AH)
        self.assertEqual(b["content"][1]["name"], "second")
        _, _, b = post("/v1/messages", anth("q", tools=tools, tool_choice={"type": "any"}), AH)
        self.assertEqual(b["content"][1]["name"], "first")
        self.assertEqual(b["content"][1]["id"], "toolu_mock_2")
        _, _, b = post("/v1/messages", anth("q [[mock:tool]]", tools=tools, tool_choice={"type": "none"}), AH)
        self.assertEqual(b["content"], [{"type": "text", "text": "mock reply to: q"}])
        self.assertEqual(b["stop_reason"], "end_turn")
        _, _, b = post("/v1/messages", anth("q [[mock:tool]]"), AH)           # no tools defined
        self.assertEqual(b["stop_reason"], "end_turn")

    def test_tool_marker_only_counts_in_last_user_message(self):
        tools = [{"name": "t"}]
        body = anth("", tools=tools, messages=[
            {"role": "user", "content": "first [[mock:tool]]"},
            {"role": "assistant", "content": "ok"},
            {"role": "user", "content": "thanks"}])
        _, _, b = post("/v1/messages", body, AH)
        self.assertEqual(b["content"], [{"type": "text", "text": "mock reply to: thanks"}])

    def test_tool_result(self):
        body = anth("", tools=[{"name": "t"}], tool_choice={"type": "any"}, messages=[
            {"role": "user", "content": "weather?"},
            {"role": "assistant", "content": [{"type": "tool_use", "id": "toolu_1", "name": "t", "input": {}}]},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1",
                                          "content": [{"type": "text", "text": "sunny"},
                                                      {"type": "text", "text": "20C"}]}]}])
        _, _, b = post("/v1/messages", body, AH)
        self.assertEqual(b["content"], [{"type": "text", "text": "tool result was: sunny 20C"}])
        self.assertEqual(b["stop_reason"], "end_turn")
        self.assertEqual(b["usage"]["input_tokens"], 3)
        body["messages"][2]["content"][0]["content"] = "plain string"
        _, _, b = post("/v1/messages", body, AH)
        self.assertEqual(b["content"][0]["text"], "tool result was: plain string")

    def test_header_and_body_validation(self):
        st, _, b = post("/v1/messages", anth("x"), {"x-api-key": "k"})
        self.assertEqual(st, 400)
        self.assertEqual(b["type"], "error")
        self.assertEqual(b["error"]["type"], "invalid_request_error")
        self.assertIn("anthropic-version", b["error"]["message"])
        st, _, b = post("/v1/messages", anth("x"), {"anthropic-version": "2023-06-01"})
        self.assertEqual((st, b["error"]["type"]), (401, "authentication_error"))
        st, _, b = post("/v1/messages", {"model": "m", "messages": [{"role": "user", "content": "x"}]}, AH)
        self.assertEqual((st, b["error"]["type"]), (400, "invalid_request_error"))
        self.assertIn("max_tokens", b["error"]["message"])
        st, h, b = post("/v1/messages", "{not json", AH)
        self.assertEqual((st, b["error"]["type"]), (400, "invalid_request_error"))
        self.assertEqual(b["request_id"], h["request-id"])

    def test_echo_auth(self):
        st, _, b = post("/v1/messages", anth("x [[mock:echo_auth]]"),
                        {"x-api-key": "echo-me-123", "anthropic-version": "2023-06-01"})
        self.assertEqual((st, b["error"]["type"]), (400, "invalid_request_error"))
        self.assertIn("x-api-key: echo-me-123", b["error"]["message"])
        st, _, b = post("/v1/chat/completions",
                        {"model": "m", "messages": [{"role": "user", "content": "x"}]},
                        {"authorization": "Bearer echo-me-456", "x-mock": "echo_auth,status=502"})
        self.assertEqual(st, 502)
        self.assertIn("authorization: Bearer echo-me-456", b["error"]["message"])

    def test_bearer_auth_accepted(self):
        st, _, _ = post("/v1/messages", anth("x"), {"authorization": "Bearer tok",
                                                     "anthropic-version": "2023-06-01"})
        self.assertEqual(st, 200)


# -----------------------------------------------------------------------------
# OpenAI and Azure
# -----------------------------------------------------------------------------

class TestOpenAI(MockTest):
    def test_happy_path(self):
        body = oai("", messages=[{"role": "system", "content": "sys one"},
                                 {"role": "developer", "content": "dev"},
                                 {"role": "user", "content": [{"type": "text", "text": "hello"},
                                                              {"type": "text", "text": "world"}]}],
                   temperature=0.2, top_p=0.5)
        st, h, b = post("/v1/chat/completions", body, OH)
        self.assertEqual(st, 200)
        self.assertEqual(b["id"], "chatcmpl-mock-1")
        self.assertEqual(b["object"], "chat.completion")
        self.assertEqual(b["model"], "gpt-test")
        self.assertIsInstance(b["created"], int)
        self.assertEqual(b["choices"], [{"index": 0, "logprobs": None, "finish_reason": "stop",
                                         "message": {"role": "assistant", "refusal": None, "annotations": [],
                                                     "content": "mock reply to: hello world [system: sys one dev]"}}])
        self.assertEqual(b["usage"]["prompt_tokens"], 5)
        self.assertEqual(b["usage"]["completion_tokens"], 9)
        self.assertEqual(b["usage"]["total_tokens"], 14)
        self.assertEqual(b["usage"]["prompt_tokens_details"]["cached_tokens"], 0)
        self.assertEqual(b["usage"]["completion_tokens_details"]["reasoning_tokens"], 0)
        self.assertEqual(h["x-request-id"], "req_mock_1")
        self.assertEqual(h["x-ratelimit-limit-requests"], "10000")
        self.assertEqual(h["x-ratelimit-reset-tokens"], "0s")
        self.assertEqual(requests_log()[0]["body"]["temperature"], 0.2)

    def test_max_tokens_variants(self):
        _, _, b = post("/v1/chat/completions", oai("a b c", max_completion_tokens=2), OH)
        self.assertEqual(b["choices"][0]["message"]["content"], "mock reply")
        self.assertEqual(b["choices"][0]["finish_reason"], "length")
        _, _, b = post("/v1/chat/completions", oai("a b c", max_tokens=4), OH)
        self.assertEqual(b["choices"][0]["message"]["content"], "mock reply to: a")
        self.assertEqual(b["usage"]["completion_tokens"], 4)

    def test_stop(self):
        _, _, b = post("/v1/chat/completions", oai("alpha beta", stop="beta"), OH)
        self.assertEqual(b["choices"][0]["message"]["content"], "mock reply to: alpha ")
        self.assertEqual(b["choices"][0]["finish_reason"], "stop")
        _, _, b = post("/v1/chat/completions", oai("alpha beta", stop=["zzz", "reply"]), OH)
        self.assertEqual(b["choices"][0]["message"]["content"], "mock ")

    def test_tool_calls(self):
        tools = [{"type": "function", "function": {"name": "lookup", "parameters": {}}},
                 {"type": "function", "function": {"name": "other"}}]
        _, _, b = post("/v1/chat/completions", oai("find cats", tools=tools, tool_choice="required"), OH)
        msg = b["choices"][0]["message"]
        self.assertIsNone(msg["content"])
        self.assertEqual(b["choices"][0]["finish_reason"], "tool_calls")
        tc = msg["tool_calls"]
        self.assertEqual(len(tc), 1)
        self.assertEqual(tc[0]["id"], "call_mock_1")
        self.assertEqual(tc[0]["type"], "function")
        self.assertEqual(tc[0]["function"]["name"], "lookup")
        self.assertIsInstance(tc[0]["function"]["arguments"], str)
        self.assertEqual(json.loads(tc[0]["function"]["arguments"]), {"query": "find cats"})
        _, _, b = post("/v1/chat/completions", oai("x", tools=tools, tool_choice={
            "type": "function", "function": {"name": "other"}}), OH)
        self.assertEqual(b["choices"][0]["message"]["tool_calls"][0]["function"]["name"], "other")
        _, _, b = post("/v1/chat/completions", oai("x [[mock:tool]]", tools=tools), OH)
        self.assertEqual(b["choices"][0]["finish_reason"], "tool_calls")
        _, _, b = post("/v1/chat/completions", oai("x [[mock:tool]]", tools=tools, tool_choice="none"), OH)
        self.assertEqual(b["choices"][0]["message"]["content"], "mock reply to: x")

    def test_tool_result(self):
        body = oai("", tools=[{"type": "function", "function": {"name": "lookup"}}], messages=[
            {"role": "user", "content": "find"},
            {"role": "assistant", "content": None, "tool_calls": [
                {"id": "call_1", "type": "function", "function": {"name": "lookup", "arguments": "{}"}}]},
            {"role": "tool", "tool_call_id": "call_1", "content": "42 cats"}])
        _, _, b = post("/v1/chat/completions", body, OH)
        self.assertEqual(b["choices"][0]["message"]["content"], "tool result was: 42 cats")
        self.assertEqual(b["choices"][0]["finish_reason"], "stop")

    def test_openai_v1_alias(self):
        st, _, b = post("/openai/v1/chat/completions", oai("hi"), {"api-key": "k"})
        self.assertEqual(st, 200)
        self.assertEqual(b["choices"][0]["message"]["content"], "mock reply to: hi")

    def test_azure(self):
        path = "/openai/deployments/my-gpt4o/chat/completions?api-version=2024-10-21"
        st, h, b = post(path, {"messages": [{"role": "user", "content": "hi"}]}, {"api-key": "k"})
        self.assertEqual(st, 200)
        self.assertEqual(b["model"], "my-gpt4o")
        self.assertEqual(b["choices"][0]["message"]["content"], "mock reply to: hi")
        self.assertIn("x-ms-request-id", h)
        st, _, b = post("/openai/deployments/my-gpt4o/chat/completions", oai("hi"), {"api-key": "k"})
        self.assertEqual(st, 404)
        self.assertEqual(b, {"error": {"code": "404", "message": "Resource not found"}})
        st, _, b = post(path, oai("hi"), {"api-key": "bad-key"})
        self.assertEqual(st, 401)
        self.assertEqual(b["error"]["code"], "401")
        st, _, b = post(path, oai("hi"), {"authorization": "Bearer entra-token"})
        self.assertEqual(st, 200)
        st, h, b = post(path, oai("hi"), {"api-key": "k", "x-mock": "status=429,retry_after=4"})
        self.assertEqual((st, h["retry-after"], b["error"]["code"]), (429, "4", "429"))
        self.assertIn("retry after 4 seconds", b["error"]["message"])
        log = requests_log()
        self.assertEqual(log[0]["query"], "api-version=2024-10-21")

    def test_errors(self):
        st, _, b = post("/v1/chat/completions", "[1,", OH)
        self.assertEqual(st, 400)
        self.assertEqual(set(b["error"]), {"message", "type", "param", "code"})
        self.assertEqual(b["error"]["type"], "invalid_request_error")
        st, _, b = post("/v1/chat/completions", oai("x"), {})
        self.assertEqual(st, 401)
        st, h, b = post("/v1/chat/completions", oai("x [[mock:status=429,retry_after=2]]"), OH)
        self.assertEqual((st, h["retry-after"]), (429, "2"))
        self.assertEqual(b["error"]["code"], "rate_limit_exceeded")
        st, _, b = post("/v1/chat/completions", oai("x [[mock:status=500]]"), OH)
        self.assertEqual((st, b["error"]["type"], b["error"]["code"]), (500, "server_error", None))
        st, _, b = post("/v1/chat/completions", oai("x [[mock:status=401]]"), OH)
        self.assertEqual((st, b["error"]["code"]), (401, "invalid_api_key"))
        st, _, b = post("/v1/chat/completions", oai("x", stream=True), OH)
        self.assertEqual(st, 400)


# -----------------------------------------------------------------------------
# Gemini
# -----------------------------------------------------------------------------

class TestGemini(MockTest):
    def test_happy_path(self):
        body = gem("what is up", systemInstruction={"parts": [{"text": "be kind"}]},
                   generationConfig={"temperature": 0.1})
        st, h, b = post(GEMINI, body, GH)
        self.assertEqual(st, 200)
        self.assertEqual(b, {
            "candidates": [{"content": {"parts": [{"text": "mock reply to: what is up [system: be kind]"}],
                                        "role": "model"}, "finishReason": "STOP", "index": 0}],
            "usageMetadata": {"promptTokenCount": 5, "candidatesTokenCount": 9, "totalTokenCount": 14,
                              "cachedContentTokenCount": 0,
                              "promptTokensDetails": [{"modality": "TEXT", "tokenCount": 5}]},
            "modelVersion": "gemini-2.0-flash", "responseId": "mock-1"})

    def test_max_tokens_and_stop(self):
        _, _, b = post(GEMINI, gem("a b", generationConfig={"maxOutputTokens": 2}), GH)
        self.assertEqual(b["candidates"][0]["content"]["parts"][0]["text"], "mock reply")
        self.assertEqual(b["candidates"][0]["finishReason"], "MAX_TOKENS")
        _, _, b = post(GEMINI, gem("a b", generationConfig={"stopSequences": [" b"]}), GH)
        self.assertEqual(b["candidates"][0]["content"]["parts"][0]["text"], "mock reply to: a")
        self.assertEqual(b["candidates"][0]["finishReason"], "STOP")

    def test_tool_call_and_result(self):
        tools = [{"functionDeclarations": [{"name": "lookup", "parameters": {"type": "OBJECT"}}]}]
        _, _, b = post(GEMINI, gem("find x", tools=tools,
                                   toolConfig={"functionCallingConfig": {"mode": "ANY"}}), GH)
        self.assertEqual(b["candidates"][0]["content"]["parts"],
                         [{"functionCall": {"name": "lookup", "args": {"query": "find x"}}}])
        self.assertEqual(b["candidates"][0]["finishReason"], "STOP")
        _, _, b = post(GEMINI, gem("find x [[mock:tool]]", tools=tools), GH)
        self.assertIn("functionCall", b["candidates"][0]["content"]["parts"][0])
        _, _, b = post(GEMINI, gem("find x [[mock:tool]]", tools=tools,
                                   toolConfig={"functionCallingConfig": {"mode": "NONE"}}), GH)
        self.assertEqual(b["candidates"][0]["content"]["parts"], [{"text": "mock reply to: find x"}])
        body = {"tools": tools, "contents": [
            {"role": "user", "parts": [{"text": "find x"}]},
            {"role": "model", "parts": [{"functionCall": {"name": "lookup", "args": {"query": "find x"}}}]},
            {"role": "user", "parts": [{"functionResponse": {"name": "lookup",
                                                             "response": {"result": "found it"}}}]}]}
        _, _, b = post(GEMINI, body, GH)
        self.assertEqual(b["candidates"][0]["content"]["parts"], [{"text": "tool result was: found it"}])
        body["contents"][2]["parts"][0]["functionResponse"]["response"] = {"b": 1, "a": [2]}
        _, _, b = post(GEMINI, body, GH)
        self.assertEqual(b["candidates"][0]["content"]["parts"][0]["text"],
                         'tool result was: {"a":[2],"b":1}')

    def test_auth_and_errors(self):
        st, _, b = post(GEMINI, gem("x"), {"x-goog-api-key": "bad-key"})
        self.assertEqual((st, b["error"]["status"], b["error"]["code"]), (400, "INVALID_ARGUMENT", 400))
        self.assertIn("API key not valid", b["error"]["message"])
        st, _, b = post(GEMINI, gem("x"), {})
        self.assertEqual((st, b["error"]["status"]), (403, "PERMISSION_DENIED"))
        st, _, b = post(GEMINI + "?key=good", gem("x"), {})
        self.assertEqual(st, 200)
        st, _, b = post(GEMINI, gem("x [[mock:status=429]]"), GH)
        self.assertEqual((st, b["error"]["status"], b["error"]["code"]), (429, "RESOURCE_EXHAUSTED", 429))
        retry = [d for d in b["error"]["details"] if d["@type"].endswith("RetryInfo")]
        self.assertEqual(retry, [{"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "2s"}])
        st, h, b = post(GEMINI, gem("x [[mock:status=429,retry_after=7]]"), GH)
        self.assertEqual(b["error"]["details"][-1]["retryDelay"], "7s")
        self.assertEqual(h["retry-after"], "7")
        st, _, b = post(GEMINI, gem("x [[mock:status=503]]"), GH)
        self.assertEqual((st, b["error"]["status"]), (503, "UNAVAILABLE"))
        st, _, b = post(GEMINI, "nope", GH)
        self.assertEqual((st, b["error"]["status"]), (400, "INVALID_ARGUMENT"))
        st, _, b = post("/v1beta/models/gemini-2.0-flash:countTokens", gem("x"), GH)
        self.assertEqual(st, 404)


# -----------------------------------------------------------------------------
# Bedrock
# -----------------------------------------------------------------------------

class TestBedrock(MockTest):
    def test_happy_path(self):
        body = bed("hello bedrock", system=[{"text": "sys"}, {"cachePoint": {"type": "default"}}],
                   inferenceConfig={"temperature": 0.3, "topP": 0.9})
        st, h, b = post(BEDROCK, body, BH)
        self.assertEqual(st, 200)
        self.assertEqual(b, {"output": {"message": {"role": "assistant", "content": [
            {"text": "mock reply to: hello bedrock [system: sys]"}]}},
            "stopReason": "end_turn",
            "usage": {"inputTokens": 3, "outputTokens": 7, "totalTokens": 10,
                      "cacheReadInputTokens": 0, "cacheWriteInputTokens": 0},
            "metrics": {"latencyMs": 0}})
        self.assertEqual(h["x-amzn-requestid"], "00000000-0000-4000-8000-000000000001")
        entry = requests_log()[0]
        self.assertEqual(entry["path"], BEDROCK)
        self.assertEqual(entry["aws_auth"]["scheme"], "sigv4")
        self.assertEqual(entry["aws_auth"]["access_key"], "AKIDEXAMPLE")
        self.assertEqual(entry["aws_auth"]["region"], "us-east-1")
        self.assertEqual(entry["aws_auth"]["SignedHeaders"], "host;x-amz-date")

    def test_model_id_decoded_nowhere_but_bearer_ok(self):
        st, _, b = post("/model/us.anthropic.claude%3A0/converse", bed("x"), {"authorization": "Bearer k"})
        self.assertEqual(st, 200)
        self.assertEqual(requests_log()[0]["aws_auth"], {"scheme": "bearer"})

    def test_max_tokens_stop_and_tools(self):
        _, _, b = post(BEDROCK, bed("a", inferenceConfig={"maxTokens": 1}), BH)
        self.assertEqual((b["output"]["message"]["content"][0]["text"], b["stopReason"]), ("mock", "max_tokens"))
        _, _, b = post(BEDROCK, bed("a b", inferenceConfig={"stopSequences": ["to:"]}), BH)
        self.assertEqual((b["output"]["message"]["content"][0]["text"], b["stopReason"]),
                         ("mock reply ", "stop_sequence"))
        tools = {"tools": [{"toolSpec": {"name": "calc", "inputSchema": {"json": {}}}}], "toolChoice": {"any": {}}}
        _, _, b = post(BEDROCK, bed("2+2", toolConfig=tools), BH)
        self.assertEqual(b["output"]["message"]["content"],
                         [{"toolUse": {"toolUseId": "tooluse_mock_3", "name": "calc", "input": {"query": "2+2"}}}])
        self.assertEqual(b["stopReason"], "tool_use")
        body = {"toolConfig": tools, "messages": [
            {"role": "user", "content": [{"text": "2+2"}]},
            {"role": "assistant", "content": [{"toolUse": {"toolUseId": "t1", "name": "calc", "input": {}}}]},
            {"role": "user", "content": [{"toolResult": {"toolUseId": "t1", "content": [{"json": {"value": 4}}]}}]}]}
        _, _, b = post(BEDROCK, body, BH)
        self.assertEqual(b["output"]["message"]["content"], [{"text": 'tool result was: {"value":4}'}])
        self.assertEqual(b["stopReason"], "end_turn")
        body["messages"][2]["content"][0]["toolResult"]["content"] = [{"text": "four"}]
        _, _, b = post(BEDROCK, body, BH)
        self.assertEqual(b["output"]["message"]["content"], [{"text": "tool result was: four"}])

    def test_error_types(self):
        for status, etype in ((429, "ThrottlingException"), (400, "ValidationException"),
                              (403, "AccessDeniedException"), (500, "InternalServerException"),
                              (503, "ServiceUnavailableException"), (408, "ModelTimeoutException")):
            st, h, b = post(BEDROCK, bed(f"x [[mock:status={status}]]"), BH)
            self.assertEqual(st, status)
            self.assertEqual(h["x-amzn-errortype"],
                             f"{etype}:http://internal.amazon.com/coral/com.amazon.bedrock/")
            self.assertEqual(list(b), ["message"])
            self.assertIn("x-amzn-requestid", h)

    def test_auth_and_validation(self):
        st, h, b = post(BEDROCK, bed("x"), {"authorization": "Bearer bad-key"})
        self.assertEqual(st, 403)
        self.assertTrue(h["x-amzn-errortype"].startswith("UnrecognizedClientException:"))
        st, h, b = post(BEDROCK, bed("x"), {})
        self.assertEqual(st, 403)
        self.assertTrue(h["x-amzn-errortype"].startswith("MissingAuthenticationTokenException:"))
        st, h, b = post(BEDROCK, "{{", BH)
        self.assertEqual(st, 400)
        self.assertIn("message", b)
        st, h, b = post(BEDROCK, {"messages": []}, BH)
        self.assertEqual(st, 400)
        self.assertTrue(h["x-amzn-errortype"].startswith("ValidationException:"))


    def test_sigv4_function_matches_aws_vectors(self):
        import importlib.util
        spec = importlib.util.spec_from_file_location("mock_provider", MOCK)
        mp = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mp)
        secret = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY"
        # aws-sig-v4-test-suite post-vanilla
        self.assertEqual(mp.sigv4_signature(
            secret, "POST", "/", "", {"host": "example.amazonaws.com", "x-amz-date": "20150830T123600Z"},
            ["host", "x-amz-date"], b"", "20150830T123600Z", "20150830/us-east-1/service/aws4_request"),
            "5da7c1a2acd57cee7505fc6676e4e544621c30862966e37dddb68e92efbe5d6b")
        # botocore get-space: the encoded path is encoded again
        self.assertEqual(mp.sigv4_signature(
            secret, "GET", "/%20/foo", "", {"host": "host.foo.com", "date": "Mon, 09 Sep 2011 23:36:00 GMT"},
            ["date", "host"], b"", "20110909T233600Z", "20110909/us-east-1/host/aws4_request"),
            "2be9e587d1ee1f0fd02128724b86b4358ba3630d39f493b6e06610a19a50779e")

    def test_sigv4_verification(self):
        import importlib.util
        spec = importlib.util.spec_from_file_location("mock_provider", MOCK)
        mp = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mp)
        self.assertEqual(control("POST", "config", {"aws_secret_access_key": "right/secret"})[0], 200)

        def signed(secret, body, token=None):
            raw = json.dumps(body).encode()
            h = {"host": f"127.0.0.1:{Mock.port}", "x-amz-date": "20250101T000000Z",
                 "content-type": "application/json"}
            if token:
                h["x-amz-security-token"] = token
            names = sorted(h)
            sig = mp.sigv4_signature(secret, "POST", BEDROCK, "", h, names, raw, h["x-amz-date"],
                                     "20250101/us-east-1/bedrock/aws4_request")
            h["authorization"] = ("AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20250101/us-east-1/bedrock/"
                                  f"aws4_request, SignedHeaders={';'.join(names)}, Signature={sig}")
            return raw, h

        raw, h = signed("right/secret", bed("hi"), token="tok+en==")
        st, _, b = post(BEDROCK, raw, h)
        self.assertEqual(st, 200)
        self.assertIs(requests_log()[-1]["aws_auth"]["verified"], True)
        raw, h = signed("wrong/secret", bed("hi"))
        st, hd, b = post(BEDROCK, raw, h)
        self.assertEqual(st, 403)
        self.assertEqual(hd["x-amzn-errortype"],
                         "InvalidSignatureException:http://internal.amazon.com/coral/com.amazon.coral.service/")
        self.assertEqual(b, {"message": "The request signature we calculated does not match the signature "
                                        "you provided. Check your AWS Secret Access Key and signing method. "
                                        "Consult the service documentation for details."})
        self.assertIs(requests_log()[-1]["aws_auth"]["verified"], False)
        raw, h = signed("right/secret", bed("hi"))
        st, _, _ = post(BEDROCK, raw.replace(b"hi", b"ho"), h)      # body changed after signing
        self.assertEqual(st, 403)
        # reset forgets the secret: signatures are recorded, not verified
        control("POST", "reset")
        st, _, _ = post(BEDROCK, bed("x"), BH)
        self.assertEqual(st, 200)


# -----------------------------------------------------------------------------
# Ollama
# -----------------------------------------------------------------------------

class TestVertex(MockTest):
    """POST /token (JWT bearer grant, RS256 checked with openssl) and Vertex generateContent."""
    PATH = "/v1/projects/proj-1/locations/us-central1/publishers/google/models/gemini-2.0-flash:generateContent"

    @classmethod
    def setUpClass(cls):
        cls.dir = tempfile.TemporaryDirectory()
        cls.keys = {}
        for name in ("good", "other"):
            key = os.path.join(cls.dir.name, name + ".pem")
            subprocess.run(["openssl", "genpkey", "-algorithm", "RSA", "-pkeyopt",
                            "rsa_keygen_bits:2048", "-out", key], check=True, capture_output=True)
            pub = subprocess.run(["openssl", "pkey", "-in", key, "-pubout"], check=True,
                                 capture_output=True).stdout.decode()
            cls.keys[name] = (key, pub)

    @classmethod
    def tearDownClass(cls):
        cls.dir.cleanup()

    @staticmethod
    def b64(data):
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    def jwt(self, key="good", **claims):
        now = int(time.time())
        c = {"iss": "sa@p.iam.gserviceaccount.com", "sub": "sa@p.iam.gserviceaccount.com",
             "aud": "http://mock/token", "scope": "https://www.googleapis.com/auth/cloud-platform",
             "iat": now, "exp": now + 3600}
        c.update(claims)
        head = self.b64(json.dumps({"alg": "RS256", "typ": "JWT", "kid": "k1"}).encode())
        data = head + "." + self.b64(json.dumps(c).encode())
        sig = subprocess.run(["openssl", "dgst", "-sha256", "-sign", self.keys[key][0]],
                             input=data.encode(), check=True, capture_output=True).stdout
        return data + "." + self.b64(sig)

    def token(self, jwt):
        body = "grant_type=urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Ajwt-bearer&assertion=" + jwt
        st, _, data = call("POST", "/token", body,
                           {"content-type": "application/x-www-form-urlencoded"})
        return st, json.loads(data)

    def test_token_and_call(self):
        control("POST", "config", {"vertex_public_key": self.keys["good"][1],
                                   "vertex_token_expires_in": 310})
        st, b = self.token(self.jwt())
        self.assertEqual((st, b), (200, {"access_token": "ya29.mock-1", "expires_in": 310,
                                         "token_type": "Bearer"}))
        st, _, b = post(self.PATH, gem("hello"), {"authorization": "Bearer ya29.mock-1"})
        self.assertEqual(st, 200)
        self.assertEqual(b["candidates"][0]["content"]["parts"][0]["text"], "mock reply to: hello")
        self.assertEqual(stats()["token_requests"], 1)
        self.assertEqual(stats()["tokens_issued"], 1)

    def test_context_directive(self):
        control("POST", "config", {"vertex_public_key": self.keys["good"][1],
                                   "directives": "context=2"})
        st, b = self.token(self.jwt())
        auth = {"authorization": "Bearer " + b["access_token"]}
        st, _, b = post(self.PATH, gem("one two"), auth)
        self.assertEqual(st, 200)
        st, _, b = post(self.PATH, gem("one two three"), auth)
        self.assertEqual((st, b), (400, {"error": {
            "code": 400, "message": "The input token count (3) exceeds the maximum number of tokens "
                                    "allowed (2).", "status": "INVALID_ARGUMENT"}}))

    def test_embeddings_predict(self):
        control("POST", "config", {"vertex_public_key": self.keys["good"][1]})
        st, b = self.token(self.jwt())
        path = self.PATH.replace("gemini-2.0-flash:generateContent", "text-embedding-005:predict")
        body = {"instances": [{"content": "a b", "task_type": "RETRIEVAL_QUERY"}, {"content": "c"}],
                "parameters": {"outputDimensionality": 4, "autoTruncate": False}}
        st, _, b = post(path, body, {"authorization": "Bearer " + b["access_token"]})
        self.assertEqual(st, 200)
        self.assertEqual([len(p["embeddings"]["values"]) for p in b["predictions"]], [4, 4])
        self.assertEqual([p["embeddings"]["statistics"]["token_count"] for p in b["predictions"]], [2, 1])
        # without an issued token: 401 like generateContent
        st, _, b = post(path, body, {"authorization": "Bearer ya29.forged"})
        self.assertEqual(st, 401)

    def test_refusals(self):
        control("POST", "config", {"vertex_public_key": self.keys["good"][1]})
        self.assertEqual(self.token(self.jwt("other")),
                         (400, {"error": "invalid_grant", "error_description": "Invalid JWT Signature."}))
        st, b = self.token(self.jwt(exp=int(time.time()) + 7200))
        self.assertEqual((st, b["error"]), (400, "invalid_grant"))
        self.assertEqual(self.token("a.b")[1]["error_description"], "Invalid JWT format.")
        self.assertEqual(stats()["token_requests"], 3)
        self.assertEqual(stats()["tokens_issued"], 0)
        # an access token the endpoint did not issue, or none
        for h in ({"authorization": "Bearer ya29.forged"}, {"x-goog-api-key": "test-key"}):
            st, _, b = post(self.PATH, gem("hello"), h)
            self.assertEqual((st, b["error"]["status"]), (401, "UNAUTHENTICATED"))

    def test_token_latency(self):
        control("POST", "config", {"vertex_public_key": self.keys["good"][1],
                                   "vertex_token_latency_ms": 300})
        t0 = time.monotonic()
        self.assertEqual(self.token(self.jwt())[0], 200)
        self.assertGreaterEqual(time.monotonic() - t0, 0.29)
        t0 = time.monotonic()
        post("/v1/messages", anth("x"), AH)
        self.assertLess(time.monotonic() - t0, 0.25)       # only the token endpoint is slow

    def test_no_public_key_configured(self):
        self.assertEqual(self.token(self.jwt())[0], 400)


class TestOllama(MockTest):
    def test_non_streaming(self):
        body = oll("", messages=[{"role": "system", "content": "terse"},
                                 {"role": "user", "content": "hi there"}])
        st, h, b = post("/api/chat", body, {})
        self.assertEqual(st, 200)
        self.assertEqual(b["model"], "llama3")
        self.assertRegex(b["created_at"], r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z$")
        self.assertEqual(b["message"], {"role": "assistant", "content": "mock reply to: hi there [system: terse]"})
        self.assertEqual((b["done"], b["done_reason"]), (True, "stop"))
        self.assertEqual((b["prompt_eval_count"], b["eval_count"]), (3, 7))
        for k in ("total_duration", "load_duration", "prompt_eval_duration", "eval_duration"):
            self.assertIsInstance(b[k], int)

    def test_streaming_ndjson(self):
        for body in (oll("one two", stream=True), {"model": "llama3", "messages": [{"role": "user", "content": "one two"}]}):
            st, h, data = call("POST", "/api/chat", body)
            self.assertEqual(st, 200)
            self.assertEqual(h["content-type"], "application/x-ndjson")
            lines = [json.loads(x) for x in data.decode().splitlines()]
            self.assertGreater(len(lines), 2)
            self.assertTrue(all(not x["done"] for x in lines[:-1]))
            self.assertEqual("".join(x["message"]["content"] for x in lines), "mock reply to: one two")
            self.assertEqual((lines[-1]["done"], lines[-1]["done_reason"], lines[-1]["eval_count"]), (True, "stop", 5))

    def test_limits_tools_and_errors(self):
        _, _, b = post("/api/chat", oll("a b", options={"num_predict": 2}), {})
        self.assertEqual((b["message"]["content"], b["done_reason"]), ("mock reply", "length"))
        _, _, b = post("/api/chat", oll("a b", options={"stop": ["b"]}), {})
        self.assertEqual((b["message"]["content"], b["done_reason"]), ("mock reply to: a ", "stop"))
        tools = [{"type": "function", "function": {"name": "weather"}}]
        _, _, b = post("/api/chat", oll("rome [[mock:tool]]", tools=tools), {})
        self.assertEqual(b["message"]["tool_calls"], [{"id": "call_mock_3", "function": {
            "index": 0, "name": "weather", "arguments": {"query": "rome"}}}])
        self.assertEqual(b["done_reason"], "stop")
        body = oll("", tools=tools, messages=[{"role": "user", "content": "rome"},
                                              {"role": "assistant", "content": "", "tool_calls": []},
                                              {"role": "tool", "content": "hot"}])
        _, _, b = post("/api/chat", body, {})
        self.assertEqual(b["message"]["content"], "tool result was: hot")
        st, _, b = post("/api/chat", oll("x [[mock:status=500]]"), {})
        self.assertEqual((st, b), (500, {"error": "internal server error"}))
        st, _, b = post("/api/chat", {"messages": []}, {})
        self.assertEqual((st, b), (400, {"error": "model is required"}))
        st, _, b = post("/api/chat", "{", {})
        self.assertEqual(st, 400)
        self.assertIsInstance(b["error"], str)


# -----------------------------------------------------------------------------
# Fault injection
# -----------------------------------------------------------------------------

class TestEmbeddings(MockTest):
    """The embeddings endpoints: deterministic vectors (sha256 bytes), dimensions, tokens."""

    @staticmethod
    def vec(text, dim):
        import hashlib
        h = hashlib.sha256(text.encode()).digest()
        return [((h[i % 32] + i) % 256) / 256 - 0.5 for i in range(dim)]

    def test_openai(self):
        st, _, b = post("/v1/embeddings", {"model": "emb", "input": ["a b", "c"], "encoding_format": "float"}, OH)
        self.assertEqual(st, 200)
        self.assertEqual([d["index"] for d in b["data"]], [0, 1])
        self.assertEqual(b["data"][0]["embedding"], self.vec("a b", 8))
        self.assertEqual(b["usage"], {"prompt_tokens": 3, "total_tokens": 3})
        _, _, b = post("/v1/embeddings", {"model": "emb", "input": "x", "dimensions": 3}, OH)
        self.assertEqual(b["data"][0]["embedding"], self.vec("x", 3))
        _, _, b = post("/v1/embeddings", {"model": "emb-d5", "input": ["x", "y"]},
                       dict(OH, **{"x-mock": "embed_reverse"}))
        self.assertEqual([d["index"] for d in b["data"]], [1, 0])
        self.assertEqual(len(b["data"][0]["embedding"]), 5)
        self.assertEqual(stats()["by_path"]["/v1/embeddings"], 3)
        _, _, b = post("/v1/embeddings", {"model": "emb", "input": ["x [[mock:embed_dim=2]]"], "dimensions": 4}, OH)
        self.assertEqual(len(b["data"][0]["embedding"]), 2)
        st, _, _ = post("/v1/embeddings", {"model": "emb", "input": ["x"]}, {})
        self.assertEqual(st, 401)
        st, _, b = post("/v1/embeddings", {"model": "emb", "input": ["x [[mock:status=503]]"]}, OH)
        self.assertEqual((st, b["error"]["type"]), (503, "server_error"))

    def test_azure(self):
        st, _, b = post("/openai/deployments/my-emb/embeddings?api-version=2024-10-21",
                        {"input": ["hi"]}, {"api-key": "k"})
        self.assertEqual((st, b["model"]), (200, "my-emb"))
        st, _, _ = post("/openai/deployments/my-emb/embeddings", {"input": ["hi"]}, {"api-key": "k"})
        self.assertEqual(st, 404)

    def test_gemini(self):
        st, _, b = post("/v1beta/models/text-embedding-004:batchEmbedContents",
                        {"requests": [{"model": "models/text-embedding-004", "content": {"parts": [{"text": "q"}]},
                                       "taskType": "RETRIEVAL_QUERY", "outputDimensionality": 4}] * 2}, GH)
        self.assertEqual(st, 200)
        self.assertEqual(b["embeddings"], [{"values": self.vec("q", 4)}] * 2)
        st, _, b = post("/v1beta/models/text-embedding-004:embedContent",
                        {"content": {"parts": [{"text": "q"}]}}, GH)
        self.assertEqual(b, {"embedding": {"values": self.vec("q", 8)}})

    def test_ollama(self):
        st, _, b = post("/api/embed", {"model": "nomic-d6", "input": ["one two", "three"]}, {})
        self.assertEqual(st, 200)
        self.assertEqual(b["embeddings"], [self.vec("one two", 6), self.vec("three", 6)])
        self.assertEqual(b["prompt_eval_count"], 3)

    def test_bedrock(self):
        st, _, b = post("/model/amazon.titan-embed-text-v2%3A0/invoke",
                        {"inputText": "a b c", "dimensions": 256, "normalize": True}, BH)
        self.assertEqual(st, 200)
        self.assertEqual((len(b["embedding"]), b["inputTextTokenCount"]), (256, 3))
        st, h, b = post("/model/cohere.embed-english-v3/invoke",
                        {"texts": ["x", "y z"], "input_type": "search_document"}, BH)
        self.assertEqual((st, b["embeddings"], b["response_type"]),
                         (200, [self.vec("x", 8), self.vec("y z", 8)], "embeddings_floats"))
        self.assertEqual(h.get("x-amzn-bedrock-input-token-count"), "3")
        st, _, _ = post("/model/cohere.embed-english-v3/invoke", {"texts": ["x"]}, {})
        self.assertEqual(st, 403)


class TestFaults(MockTest):
    def test_latency(self):
        t0 = time.monotonic()
        st, _, b = post("/v1/messages", anth("slow [[mock:latency=300]]"), AH)
        dt = time.monotonic() - t0
        self.assertEqual(st, 200)
        self.assertEqual(b["content"][0]["text"], "mock reply to: slow")
        self.assertGreaterEqual(dt, 0.29)
        self.assertLess(dt, 2.0)
        _, _, b = post(BEDROCK, bed("x [[mock:latency=50]]"), BH)
        self.assertEqual(b["metrics"]["latencyMs"], 50)

    def test_latency_does_not_block_others(self):
        with concurrent.futures.ThreadPoolExecutor(2) as pool:
            slow = pool.submit(post, "/v1/messages", anth("[[mock:latency=800]]"), AH)
            wait_for(lambda: stats()["in_flight"] == 1)
            t0 = time.monotonic()
            st, _, _ = post("/v1/messages", anth("fast"), AH)
            self.assertLess(time.monotonic() - t0, 0.5)
            self.assertFalse(slow.done())
            self.assertEqual(slow.result()[0], 200)

    def test_status_codes_anthropic(self):
        expected = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
                    404: "not_found_error", 413: "request_too_large", 422: "invalid_request_error",
                    429: "rate_limit_error", 500: "api_error", 502: "api_error", 503: "api_error",
                    504: "timeout_error", 529: "overloaded_error"}
        for status, etype in expected.items():
            st, h, b = post("/v1/messages", anth(f"x [[mock:status={status}]]"), AH)
            self.assertEqual(st, status)
            self.assertEqual(b["type"], "error")
            self.assertEqual(b["error"]["type"], etype)
            self.assertEqual(b["request_id"], h["request-id"])
            self.assertNotIn("retry-after", h)
        st, _, b = post("/v1/messages", anth("x [[mock:status=529]]"), AH)
        self.assertEqual(b["error"]["message"], "Overloaded")

    def test_retry_after_headers(self):
        st, h, _ = post("/v1/messages", anth("x [[mock:status=429,retry_after=3,retry_after_ms=2500]]"), AH)
        self.assertEqual((st, h["retry-after"], h["retry-after-ms"]), (429, "3", "2500"))
        st, h, _ = post("/v1/messages", anth("x [[mock:status=503,retry_after_date=30]]"), AH)
        when = email.utils.parsedate_to_datetime(h["retry-after"]).timestamp()
        self.assertAlmostEqual(when, time.time() + 30, delta=3)
        st, h, _ = post("/v1/messages", anth("x [[mock:status=500,should_retry=false]]"), AH)
        self.assertEqual(h["x-should-retry"], "false")

    def test_fail_first(self):
        body = anth("flaky [[mock:fail_first=2]]")
        for _ in range(2):
            st, _, b = post("/v1/messages", body, AH)
            self.assertEqual((st, b["error"]["type"]), (503, "api_error"))
        st, _, b = post("/v1/messages", body, AH)
        self.assertEqual(st, 200)
        self.assertEqual(b["content"][0]["text"], "mock reply to: flaky")
        # other text = other key; explicit status and key
        st, _, _ = post("/v1/messages", anth("other [[mock:fail_first=1,status=429]]"), AH)
        self.assertEqual(st, 429)
        st, _, _ = post("/v1/messages", anth("k1 [[mock:fail_first=1,key=shared]]"), AH)
        self.assertEqual(st, 503)
        st, _, _ = post("/v1/messages", anth("k2 [[mock:fail_first=1,key=shared]]"), AH)
        self.assertEqual(st, 200)
        # same text on another path is another key
        st, _, _ = post("/v1/chat/completions", oai("flaky [[mock:fail_first=2]]"), OH)
        self.assertEqual(st, 503)
        control("POST", "reset")
        st, _, _ = post("/v1/messages", body, AH)
        self.assertEqual(st, 503)

    def test_malformed(self):
        for path, body, hdr in (("/v1/messages", anth("x [[mock:malformed]]"), AH),
                                ("/v1/chat/completions", oai("x [[mock:malformed]]"), OH),
                                (GEMINI, gem("x [[mock:malformed]]"), GH)):
            st, h, data = call("POST", path, body, hdr)
            self.assertEqual(st, 200)
            self.assertEqual(h["content-type"], "application/json")
            self.assertGreater(len(data), 10)
            self.assertEqual(int(h["content-length"]), len(data))
            with self.assertRaises(ValueError):
                json.loads(data)

    def test_error200(self):
        st, _, b = post("/v1/messages", anth("x [[mock:error200]]"), AH)
        self.assertEqual((st, b), (200, {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}))
        st, _, b = post("/v1/chat/completions", oai("x [[mock:error200]]"), OH)
        self.assertEqual(st, 200)
        self.assertEqual((b["error"]["type"], b["error"]["code"]), ("server_error", None))
        self.assertIn("message", b["error"])
        st, _, b = post(GEMINI, gem("x [[mock:error200]]"), GH)
        self.assertEqual((st, b["error"]["code"], b["error"]["status"]), (200, 503, "UNAVAILABLE"))
        st, _, b = post(BEDROCK, bed("x [[mock:error200]]"), BH)
        self.assertEqual((st, list(b)), (200, ["message"]))
        st, _, b = post("/api/chat", oll("x [[mock:error200]]"), {})
        self.assertEqual((st, list(b)), (200, ["error"]))

    def test_reset(self):
        with self.assertRaises((ConnectionResetError, http.client.RemoteDisconnected)):
            post("/v1/messages", anth("x [[mock:reset]]"), AH)
        s = raw_socket()
        s.sendall(raw_request("/v1/messages", anth("[[mock:reset]]"), AH))
        with self.assertRaises(ConnectionResetError):
            s.recv(100)
        s.close()
        log = requests_log()
        self.assertEqual([e["status"] for e in log], [None, None])
        self.assertEqual(stats()["disconnects"], 0)
        self.assertEqual(stats()["in_flight"], 0)

    def test_hang_and_disconnect(self):
        s = raw_socket()
        s.sendall(raw_request("/v1/messages", anth("[[mock:hang]]"), AH))
        self.assertTrue(wait_for(lambda: stats()["in_flight"] == 1))
        s.settimeout(0.3)
        with self.assertRaises(socket.timeout):
            s.recv(100)
        t_close = time.time()
        s.close()
        self.assertTrue(wait_for(lambda: stats()["disconnects"] == 1))
        st = stats()
        self.assertEqual((st["in_flight"], st["max_in_flight"], st["disconnects"]), (0, 1, 1))
        entry = requests_log()[0]
        self.assertTrue(entry["client_disconnected"])
        self.assertIsNone(entry["status"])
        self.assertAlmostEqual(entry["disconnected_at"], t_close, delta=2)

    def test_disconnect_during_latency(self):
        s = raw_socket()
        s.sendall(raw_request("/v1/messages", anth("[[mock:latency=1000]]"), AH))
        self.assertTrue(wait_for(lambda: stats()["in_flight"] == 1))
        s.close()
        self.assertTrue(wait_for(lambda: stats()["disconnects"] == 1))
        self.assertTrue(requests_log()[0]["client_disconnected"])

    def test_large(self):
        st, h, data = call("POST", "/v1/messages", anth("big [[mock:large=100000]]"), AH)
        self.assertEqual(st, 200)
        b = json.loads(data)
        text = b["content"][0]["text"]
        self.assertTrue(100000 <= len(text) <= 100001)
        self.assertTrue(text.startswith("mock reply to: big x x "))
        self.assertEqual(set(text[len("mock reply to: big"):].split()), {"x"})
        self.assertEqual(b["usage"]["output_tokens"], len(text.split()))
        self.assertEqual(int(h["content-length"]), len(data))

    def test_trickle(self):
        conn = http.client.HTTPConnection("127.0.0.1", Mock.port, timeout=10)
        t0 = time.monotonic()
        conn.request("POST", "/v1/messages", json.dumps(anth("drip [[mock:trickle=10]]")), AH)
        resp = conn.getresponse()
        t_head = time.monotonic() - t0
        length = int(resp.getheader("content-length"))
        chunks = math.ceil(length / 16)
        data = resp.read()
        dt = time.monotonic() - t0
        conn.close()
        self.assertEqual(len(data), length)
        self.assertEqual(json.loads(data)["content"][0]["text"], "mock reply to: drip")
        self.assertLess(t_head, chunks * 0.010 / 2)
        self.assertGreaterEqual(dt, chunks * 0.010 * 0.95)
        self.assertLess(dt, chunks * 0.010 * 4 + 1)
        # a bigger chunk size means fewer chunks
        t0 = time.monotonic()
        st, _, data = call("POST", "/v1/messages", anth("drip [[mock:trickle=20,trickle_bytes=200]]"), AH)
        self.assertGreaterEqual(time.monotonic() - t0, math.ceil(len(data) / 200) * 0.020 * 0.95)

    def test_cache(self):
        _, _, b = post("/v1/messages", anth("a b [[mock:cache=100]]"), AH)
        self.assertEqual((b["usage"]["input_tokens"], b["usage"]["cache_read_input_tokens"]), (2, 100))
        _, _, b = post("/v1/chat/completions", oai("a b [[mock:cache=100]]"), OH)
        self.assertEqual((b["usage"]["prompt_tokens"], b["usage"]["prompt_tokens_details"]["cached_tokens"],
                          b["usage"]["total_tokens"]), (102, 100, 102 + 5))
        _, _, b = post(GEMINI, gem("a b [[mock:cache=100]]"), GH)
        u = b["usageMetadata"]
        self.assertEqual((u["promptTokenCount"], u["cachedContentTokenCount"], u["totalTokenCount"]), (102, 100, 107))
        _, _, b = post(BEDROCK, bed("a b [[mock:cache=100]]"), BH)
        u = b["usage"]
        self.assertEqual((u["inputTokens"], u["cacheReadInputTokens"], u["totalTokens"]), (2, 100, 107))

    def test_auth_rule_all_protocols(self):
        cases = [("/v1/messages", anth("x"), {"x-api-key": "bad-key", "anthropic-version": "1"}, 401),
                 ("/v1/messages", anth("x"), {"authorization": "Bearer invalid-123", "anthropic-version": "1"}, 401),
                 ("/v1/chat/completions", oai("x"), {"authorization": "Bearer bad-key"}, 401),
                 ("/v1/chat/completions", oai("x"), {"api-key": "invalidXYZ"}, 401),
                 (GEMINI, gem("x"), {"x-goog-api-key": "invalid"}, 400),
                 (BEDROCK, bed("x"), {"authorization": BH["authorization"].replace("AKIDEXAMPLE", "invalid1")}, 403),
                 ("/api/chat", oll("x"), {"authorization": "Bearer bad-key"}, 401)]
        for path, body, hdr, status in cases:
            st, _, b = post(path, body, hdr)
            self.assertEqual(st, status, path)
        _, _, b = post("/v1/chat/completions", oai("x"), {"authorization": "Bearer bad-key"})
        self.assertEqual(b["error"]["code"], "invalid_api_key")
        _, _, b = post("/v1/messages", anth("x"), {"x-api-key": "bad-key", "anthropic-version": "1"})
        self.assertEqual(b["error"]["type"], "authentication_error")
        st, _, _ = post("/v1/messages", anth("x"), {"x-api-key": "valid-invalid", "anthropic-version": "1"})
        self.assertEqual(st, 200)

    def test_header_directives_and_precedence(self):
        st, _, b = post("/v1/messages", anth("x"), dict(AH, **{"x-mock": "status=500"}))
        self.assertEqual((st, b["error"]["type"]), (500, "api_error"))
        st, _, _ = post("/v1/messages", anth("x [[mock:status=200]]"), dict(AH, **{"x-mock": "status=500"}))
        self.assertEqual(st, 200)                                # markers override the header
        t0 = time.monotonic()
        st, _, _ = post("/v1/messages", anth("x"), dict(AH, **{"x-mock": "latency=200, cache=5"}))
        self.assertGreaterEqual(time.monotonic() - t0, 0.19)
        tools = [{"name": "t"}]
        _, _, b = post("/v1/messages", anth("x", tools=tools), dict(AH, **{"x-mock": "tool"}))
        self.assertEqual(b["stop_reason"], "tool_use")
        self.assertEqual(requests_log()[-1]["directives"], {"tool": True})
        _, _, b = post("/v1/messages", anth("x [[mock:cache=2]]", tools=tools), dict(AH, **{"x-mock": "tool"}))
        self.assertEqual(b["stop_reason"], "tool_use")            # header tool + last-message marker
        self.assertEqual(b["usage"]["cache_read_input_tokens"], 2)

    def test_markers_anywhere_and_stripped(self):
        body = anth("", system="sys [[mock:cache=7]]", messages=[
            {"role": "user", "content": "[[mock:latency=1]] one two"},
            {"role": "assistant", "content": "three"},
            {"role": "user", "content": "  four [[mock:cache=9]]  five  "}])
        _, _, b = post("/v1/messages", body, AH)
        self.assertEqual(b["content"][0]["text"], "mock reply to: four   five [system: sys]")
        self.assertEqual(b["usage"]["input_tokens"], 6)
        self.assertEqual(b["usage"]["cache_read_input_tokens"], 9)
        self.assertEqual(requests_log()[0]["directives"], {"cache": 9, "latency": 1.0})

    def test_close_directive(self):
        s = raw_socket()
        f = s.makefile("rb")
        s.sendall(raw_request("/v1/messages", anth("[[mock:close]]"), AH))
        st, h, _ = read_response(f)
        self.assertEqual((st, h["connection"]), (200, "close"))
        self.assertEqual(f.read(), b"")
        s.close()


class TestContext(MockTest):
    """context=N: an input over N tokens (the mock's word count) gets the real context 400."""
    WORDS20 = " ".join(f"w{i}" for i in range(20))
    WORDS21 = WORDS20 + " w20"

    def check(self, path, build, headers, over_status, over_body):
        for how in ("marker", "header", "global"):
            control("POST", "reset")
            hdr = dict(headers)
            suffix = ""
            if how == "marker":
                suffix = " [[mock:context=20]]"
            elif how == "header":
                hdr["x-mock"] = "context=20"
            else:
                control("POST", "config", {"directives": "context=20"})
            st, _, b = post(path, build(self.WORDS20 + suffix), hdr)
            self.assertEqual(st, 200, (path, how, b))
            st, _, b = post(path, build(self.WORDS21 + suffix), hdr)
            self.assertEqual((st, b), (over_status, over_body), (path, how))
            entry = requests_log()[-1]
            self.assertEqual((entry["status"], entry["context_exceeded"], entry["directives"]["context"]),
                             (400, {"input_tokens": 21, "context": 20}, 20))

    def test_anthropic(self):
        self.check("/v1/messages", anth, AH, 400, {
            "type": "error", "error": {"type": "invalid_request_error",
                                       "message": "prompt is too long: 21 tokens > 20 maximum"},
            "request_id": "req_mock_2"})

    def test_system_and_tool_results_count(self):
        control("POST", "config", {"directives": "context=5"})
        body = anth("", system="s1 s2", messages=[
            {"role": "user", "content": "a"},
            {"role": "assistant", "content": [{"type": "tool_use", "id": "t", "name": "f", "input": {}}]},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t", "content": "r1 r2"}]}])
        st, _, b = post("/v1/messages", body, AH)
        self.assertEqual(st, 200)                              # 2 + 1 + 2 = 5 words
        body["messages"][0]["content"] = "a b"
        st, _, b = post("/v1/messages", body, AH)
        self.assertEqual((st, b["error"]["message"]), (400, "prompt is too long: 6 tokens > 5 maximum"))

    def test_openai_and_azure(self):
        want = {"error": {"message": "This model's maximum context length is 20 tokens. However, your "
                                     "messages resulted in 21 tokens. Please reduce the length of the messages.",
                          "type": "invalid_request_error", "param": "messages",
                          "code": "context_length_exceeded"}}
        self.check("/v1/chat/completions", oai, OH, 400, want)
        self.check("/openai/deployments/my-gpt4o/chat/completions?api-version=2024-10-21", oai,
                   {"api-key": "k"}, 400, want)

    def test_gemini(self):
        self.check(GEMINI, gem, GH, 400, {"error": {
            "code": 400, "message": "The input token count (21) exceeds the maximum number of tokens "
                                    "allowed (20).", "status": "INVALID_ARGUMENT"}})

    def test_bedrock(self):
        self.check(BEDROCK, bed, BH, 400, {"message": "Input is too long for requested model."})
        control("POST", "config", {"directives": "context=20"})
        _, h, _ = call("POST", BEDROCK, json.dumps(bed(self.WORDS21)), BH)
        self.assertTrue(h["x-amzn-errortype"].startswith("ValidationException:"))

    def test_ollama(self):
        self.check("/api/chat", oll, {}, 400, {"error": "the input length exceeds the context length"})

    def test_embeddings_and_other_faults(self):
        control("POST", "config", {"directives": "context=1"})
        st, _, _ = post("/v1/embeddings", {"model": "emb", "input": ["a b c"]}, OH)
        self.assertEqual(st, 200)                              # chat endpoints only
        st, _, b = post("/v1/messages", anth("a b [[mock:status=503]]"), AH)
        self.assertEqual(st, 400)                              # refused before other faults
        self.assertNotIn("context_exceeded", requests_log()[-2])


# -----------------------------------------------------------------------------
# HTTP handling
# -----------------------------------------------------------------------------

class TestHTTP(MockTest):
    def test_keep_alive_reuse(self):
        conn = http.client.HTTPConnection("127.0.0.1", Mock.port, timeout=5)
        for i in range(3):
            conn.request("POST", "/v1/messages", json.dumps(anth(f"n{i}")), AH)
            r = conn.getresponse()
            self.assertEqual(json.loads(r.read())["content"][0]["text"], f"mock reply to: n{i}")
            self.assertEqual(r.getheader("connection"), "keep-alive")
        conn.request("GET", "/_mock/stats")                      # control on the same connection
        st = json.loads(conn.getresponse().read())
        conn.close()
        self.assertEqual((st["requests"], st["connections_total"], st["connections"]), (3, 1, 1))
        self.assertTrue(wait_for(lambda: stats()["connections"] == 0))

    def test_pipelined_in_order(self):
        s = raw_socket()
        f = s.makefile("rb")
        data = (raw_request("/v1/messages", anth("one [[mock:latency=200]]"), AH)
                + raw_request("/v1/chat/completions", oai("two"), OH)
                + raw_request("/api/chat", oll("three"), {}))
        s.sendall(data)
        texts = []
        for _ in range(3):
            st, _, body = read_response(f)
            self.assertEqual(st, 200)
            texts.append(body)
        s.close()
        self.assertEqual(json.loads(texts[0])["content"][0]["text"], "mock reply to: one")
        self.assertEqual(json.loads(texts[1])["choices"][0]["message"]["content"], "mock reply to: two")
        self.assertEqual(json.loads(texts[2])["message"]["content"], "mock reply to: three")

    def test_partial_reads(self):
        s = raw_socket()
        f = s.makefile("rb")
        data = raw_request("/v1/messages", anth("split up"), AH)
        for i in range(0, len(data), 7):
            s.sendall(data[i:i + 7])
            if i < 70:
                time.sleep(0.005)
        st, _, body = read_response(f)
        s.close()
        self.assertEqual((st, json.loads(body)["content"][0]["text"]), (200, "mock reply to: split up"))

    def test_chunked_request_body(self):
        body = json.dumps(anth("chunked body")).encode()
        s = raw_socket()
        f = s.makefile("rb")
        head = "POST /v1/messages HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
        head += "".join(f"{k}: {v}\r\n" for k, v in AH.items()) + "\r\n"
        s.sendall(head.encode())
        for i in range(0, len(body), 20):
            piece = body[i:i + 20]
            s.sendall(b"%x;ext=1\r\n%s\r\n" % (len(piece), piece))
            time.sleep(0.002)
        s.sendall(b"0\r\nX-Trailer: y\r\n\r\n")
        st, _, resp = read_response(f)
        self.assertEqual((st, json.loads(resp)["content"][0]["text"]), (200, "mock reply to: chunked body"))
        s.sendall(raw_request("/v1/messages", anth("after"), AH))     # connection still usable
        self.assertEqual(read_response(f)[0], 200)
        s.close()
        self.assertEqual(requests_log()[0]["body"]["messages"][0]["content"], "chunked body")

    def test_large_chunked_body(self):
        text = " ".join(["w"] * 300000)                          # ~600 kB, ~2400 chunks
        body = json.dumps(anth(text)).encode()
        chunked = b"".join(b"%x\r\n%s\r\n" % (len(body[i:i + 256]), body[i:i + 256])
                           for i in range(0, len(body), 256)) + b"0\r\n\r\n"
        head = "POST /v1/messages HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
        head += "".join(f"{k}: {v}\r\n" for k, v in AH.items()) + "\r\n"
        s = raw_socket()
        f = s.makefile("rb")
        t0 = time.monotonic()
        s.sendall(head.encode())
        for i in range(0, len(chunked), 4000):
            s.sendall(chunked[i:i + 4000])
        st, _, resp = read_response(f)
        s.close()
        self.assertEqual(st, 200)
        self.assertEqual(json.loads(resp)["usage"]["input_tokens"], 300000)
        self.assertLess(time.monotonic() - t0, 3)

    def test_expect_100_continue(self):
        body = json.dumps(anth("expect")).encode()
        s = raw_socket()
        f = s.makefile("rb")
        s.sendall(raw_request("/v1/messages", "", AH, "Expect: 100-continue\r\n")
                  .replace(b"Content-Length: 0", b"Content-Length: %d" % len(body)))
        self.assertEqual(f.readline(), b"HTTP/1.1 100 Continue\r\n")
        self.assertEqual(f.readline(), b"\r\n")
        s.sendall(body)
        st, _, resp = read_response(f)
        s.close()
        self.assertEqual((st, json.loads(resp)["content"][0]["text"]), (200, "mock reply to: expect"))

    def test_connection_close_and_http10(self):
        for extra, version in (("Connection: close\r\n", "HTTP/1.1"), ("", "HTTP/1.0")):
            s = raw_socket()
            f = s.makefile("rb")
            s.sendall(raw_request("/v1/messages", anth("bye"), AH, extra).replace(b"HTTP/1.1", version.encode(), 1))
            st, h, _ = read_response(f)
            self.assertEqual((st, h["connection"]), (200, "close"))
            self.assertEqual(f.read(), b"")
            s.close()

    def test_404_405_and_bad_requests(self):
        st, _, b = call("POST", "/v2/nothing", "{}")
        self.assertEqual(st, 404)
        self.assertIn("error", json.loads(b))
        st, h, b = call("GET", "/v1/messages", headers=AH)
        self.assertEqual(st, 405)
        self.assertEqual(h["allow"], "POST")
        self.assertEqual(json.loads(b)["error"]["type"], "invalid_request_error")
        st, _, b = call("GET", "/_mock/reset")
        self.assertEqual(st, 405)
        st, _, b = call("GET", "/_mock/nothing")
        self.assertEqual(st, 404)
        for garbage in (b"BLAH\r\n\r\n", b"GET /x HTTP/1.1\r\nno colon here\r\n\r\n",
                        b"POST /v1/messages HTTP/1.1\r\nContent-Length: abc\r\n\r\n",
                        b"POST /v1/messages HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n"):
            s = raw_socket()
            f = s.makefile("rb")
            s.sendall(garbage)
            st, h, _ = read_response(f)
            self.assertEqual((st, h["connection"]), (400, "close"), garbage)
            self.assertEqual(f.read(), b"")
            s.close()
        self.assertEqual(control("GET", "health"), (200, {"ok": True}))     # still alive
        self.assertEqual(stats()["by_status"], {"404": 1, "405": 1})


# -----------------------------------------------------------------------------
# Control API and CLI
# -----------------------------------------------------------------------------

class TestControl(MockTest):
    def test_request_log(self):
        post("/v1/messages?beta=true", anth("logged"), dict(AH, **{"X-Custom-Header": "Value"}))
        post("/v1/chat/completions", oai("second"), OH)
        call("POST", "/v1/chat/completions", "not json", OH)
        stats()                                                   # control: not logged
        log = requests_log()
        self.assertEqual([e["seq"] for e in log], [1, 2, 3])
        e = log[0]
        self.assertEqual((e["method"], e["path"], e["query"], e["status"]), ("POST", "/v1/messages", "beta=true", 200))
        self.assertEqual(e["headers"]["x-custom-header"], "Value")
        self.assertEqual(e["headers"]["anthropic-version"], "2023-06-01")
        self.assertEqual(e["body"], anth("logged"))
        self.assertFalse(e["client_disconnected"])
        self.assertAlmostEqual(e["received_at"], time.time(), delta=5)
        self.assertEqual(log[2]["body"], "not json")
        self.assertEqual(log[2]["status"], 400)
        self.assertEqual([e["seq"] for e in requests_log("?last=2")], [2, 3])
        self.assertEqual([e["seq"] for e in requests_log("?path=/v1/chat")], [2, 3])
        self.assertEqual([e["seq"] for e in requests_log("?path=/v1/chat&last=1")], [3])
        st = stats()
        self.assertEqual(st["requests"], 3)
        self.assertEqual(st["by_path"], {"/v1/messages": 1, "/v1/chat/completions": 2})
        self.assertEqual(st["by_status"], {"200": 2, "400": 1})

    def test_reset(self):
        post("/v1/messages", anth("x"), AH)
        post("/v1/messages", anth("[[mock:fail_first=1]]"), AH)
        self.assertEqual(control("POST", "reset"), (200, {"ok": True}))
        self.assertEqual(requests_log(), [])
        self.assertEqual(stats(), {"requests": 0, "in_flight": 0, "max_in_flight": 0, "disconnects": 0,
                                   "by_path": {}, "by_status": {}, "connections": 0, "connections_total": 0,
                                   "token_requests": 0, "tokens_issued": 0})
        _, _, b = post("/v1/messages", anth("x"), AH)
        self.assertEqual(b["id"], "msg_mock_1")

    def test_config(self):
        st, cfg = control("POST", "config", {"latency_ms": 200, "fail_first": 1, "fail_status": 429,
                                             "retry_after": 2})
        self.assertEqual(st, 200)
        self.assertEqual((cfg["latency_ms"], cfg["fail_first"], cfg["fail_status"], cfg["retry_after"]),
                         (200, 1, 429, 2))
        t0 = time.monotonic()
        st, h, _ = post("/v1/messages", anth("cfg"), AH)
        self.assertEqual((st, h["retry-after"]), (429, "2"))
        self.assertGreaterEqual(time.monotonic() - t0, 0.19)
        st, _, _ = post("/v1/messages", anth("cfg"), AH)
        self.assertEqual(st, 200)
        st, _, _ = post("/v1/messages", anth("cfg [[mock:latency=0]]"), AH)   # per-request override
        self.assertEqual(control("GET", "config")[1]["latency_ms"], 200)
        st, cfg = control("POST", "config", {"directives": "cache=3", "fail_first": 0, "latency_ms": 0})
        _, _, b = post("/v1/messages", anth("d"), AH)
        self.assertEqual(b["usage"]["cache_read_input_tokens"], 3)
        self.assertEqual(control("POST", "config", {"nope": 1})[0], 400)
        self.assertEqual(control("POST", "config", {"fail_first": -1})[0], 400)
        control("POST", "reset")
        self.assertEqual(control("GET", "config")[1],
                         {"latency_ms": 0, "fail_first": 0, "fail_status": 503, "retry_after": None,
                          "directives": "", "aws_secret_access_key": None,
                          "vertex_public_key": None, "vertex_token_expires_in": 3600,
                          "vertex_token_latency_ms": 0})

    def test_max_in_flight(self):
        def one(i):
            return post("/v1/messages", anth(f"c{i} [[mock:latency=1000]]"), AH)[0]
        with concurrent.futures.ThreadPoolExecutor(20) as pool:
            futures = [pool.submit(one, i) for i in range(20)]
            self.assertTrue(wait_for(lambda: stats()["in_flight"] == 20))
            results = [f.result() for f in futures]
        self.assertEqual(results, [200] * 20)
        st = stats()
        self.assertEqual((st["max_in_flight"], st["in_flight"], st["requests"], st["connections_total"]),
                         (20, 0, 20, 20))

    def test_cli_flags_port_file_and_sigterm(self):
        with tempfile.TemporaryDirectory() as tmp:
            pf = os.path.join(tmp, "port")
            proc, port, startup = start_mock("--port-file", pf, "--fail-first", "1", "--fail-status", "429",
                                             "--retry-after", "7", "--latency-ms", "50", "--quiet")
            try:
                self.assertLess(startup, 1.0)
                with open(pf) as f:
                    self.assertEqual(f.read().strip(), str(port))
                self.assertEqual(os.listdir(tmp), ["port"])
                t0 = time.monotonic()
                st, h, b = post("/v1/messages", anth("cli"), AH, port=port)
                self.assertEqual((st, h["retry-after"], b["error"]["type"]), (429, "7", "rate_limit_error"))
                self.assertGreaterEqual(time.monotonic() - t0, 0.045)
                st, _, _ = post("/v1/messages", anth("cli"), AH, port=port)
                self.assertEqual(st, 200)
            finally:
                rc = stop_mock(proc)
            self.assertEqual(rc, 0)

    def test_signal_right_after_listening(self):
        for sig in (signal.SIGTERM, signal.SIGINT):
            proc, _, _ = start_mock("--quiet")
            proc.send_signal(sig)
            self.assertEqual(proc.wait(5), 0)

    def test_startup_time(self):
        self.assertLess(Mock.startup, 1.0)


# -----------------------------------------------------------------------------
# Runner: last line "N passed, M failed"
# -----------------------------------------------------------------------------

# -----------------------------------------------------------------------------
# Structured output
# -----------------------------------------------------------------------------

SCHEMA = {"type": "object", "additionalProperties": False, "required": ["name", "age"],
          "properties": {"name": {"type": "string"}, "age": {"type": "integer"},
                         "score": {"type": "number"}, "ok": {"type": "boolean"},
                         "color": {"enum": ["red", "green"]}, "kind": {"const": "person"},
                         "tags": {"type": "array", "items": {"type": "string"}},
                         "address": {"type": "object", "properties": {"city": {"type": "string"}}}}}
EXPECTED = {"name": "mock Ann is 5", "age": 1, "score": 1, "ok": True, "color": "red",
            "kind": "person", "tags": ["mock Ann is 5"], "address": {"city": "mock Ann is 5"}}


class TestStructuredOutput(MockTest):
    def test_every_protocol_answers_an_object_built_from_the_schema(self):
        cases = (
            ("/v1/messages", anth("Ann is 5", output_config={"format": {"type": "json_schema", "schema": SCHEMA}}), AH,
             lambda b: b["content"][0]["text"]),
            ("/v1/chat/completions", oai("Ann is 5", response_format={"type": "json_schema", "json_schema": {"name": "o", "schema": SCHEMA, "strict": True}}), OH,
             lambda b: b["choices"][0]["message"]["content"]),
            (GEMINI, gem("Ann is 5", generationConfig={"responseMimeType": "application/json", "responseSchema": SCHEMA}), GH,
             lambda b: b["candidates"][0]["content"]["parts"][0]["text"]),
            (GEMINI, gem("Ann is 5", generationConfig={"responseJsonSchema": SCHEMA}), GH,
             lambda b: b["candidates"][0]["content"]["parts"][0]["text"]),
            ("/api/chat", oll("Ann is 5", format=SCHEMA), {}, lambda b: b["message"]["content"]),
        )
        for path, body, hdr, text in cases:
            st, _, b = post(path, body, hdr)
            self.assertEqual(st, 200, path)
            self.assertEqual(json.loads(text(b)), EXPECTED, path)

    def test_no_schema_no_json(self):
        st, _, b = post("/v1/chat/completions", oai("Ann", response_format={"type": "json_object"}), OH)
        self.assertEqual(b["choices"][0]["message"]["content"], "mock reply to: Ann")

    def test_bad_json_first_drops_the_first_required_key(self):
        body = anth("Ann is 5 [[mock:bad_json_first=2,key=bj]]",
                    output_config={"format": {"type": "json_schema", "schema": SCHEMA}})
        for _ in range(2):
            st, _, b = post("/v1/messages", body, AH)
            got = json.loads(b["content"][0]["text"])
            self.assertNotIn("name", got)
            self.assertEqual(got["age"], 1)
        st, _, b = post("/v1/messages", body, AH)
        self.assertEqual(json.loads(b["content"][0]["text"]), EXPECTED)
        # bad_json: always; counted per key, so another key starts again
        st, _, b = post("/v1/messages", anth("x [[mock:bad_json]]", output_config={"format": {"type": "json_schema", "schema": SCHEMA}}), AH)
        self.assertNotIn("name", json.loads(b["content"][0]["text"]))
        st, _, b = post("/v1/messages", anth("x [[mock:bad_json_first=1,key=other]]", output_config={"format": {"type": "json_schema", "schema": SCHEMA}}), AH)
        self.assertNotIn("name", json.loads(b["content"][0]["text"]))


def main():
    suite = unittest.defaultTestLoader.loadTestsFromModule(sys.modules[__name__])
    result = unittest.TextTestRunner(stream=sys.stdout, verbosity=2).run(suite)
    failed = len(result.failures) + len(result.errors) + len(result.unexpectedSuccesses)
    passed = result.testsRun - len(result.failures) - len(result.errors) - len(result.skipped) \
        - len(result.unexpectedSuccesses)
    sys.stderr.flush()
    sys.stdout.flush()
    print(f"{max(passed, 0)} passed, {failed} failed", flush=True)
    return 1 if failed or not result.testsRun else 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""Deterministic mock LLM provider for the llm_gateway tests.

Speaks the non-streaming chat endpoints of Anthropic (Messages), OpenAI and Azure OpenAI
(Chat Completions), Gemini (generateContent), AWS Bedrock (Converse) and Ollama (/api/chat)
over HTTP/1.1 on loopback, with latency and fault injection and a JSON control API under
/_mock/ that lets a test read back what the mock received.

Python 3 standard library only, one process, asyncio with a raw asyncio.Protocol.
The contract (CLI, markers, endpoints, control API) is documented in README.md beside this file.
"""

import argparse
import asyncio
import base64
import email.utils
import hashlib
import hmac
import json
import os
import re
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
import traceback
from collections import deque
from urllib.parse import parse_qs, quote, unquote

# =============================================================================
# 1. Constants and small helpers
# =============================================================================

MAX_HEAD = 64 * 1024            # request line + headers
MAX_BODY = 64 * 1024 * 1024     # request body
LOG_KEEP = 10_000               # request log entries kept
TRICKLE_BYTES = 16              # default chunk size of the `trickle` directive

REASONS = {
    100: "Continue", 200: "OK", 400: "Bad Request", 401: "Unauthorized",
    402: "Payment Required", 403: "Forbidden", 404: "Not Found", 405: "Method Not Allowed",
    408: "Request Timeout", 409: "Conflict", 413: "Payload Too Large",
    422: "Unprocessable Entity", 424: "Failed Dependency", 429: "Too Many Requests",
    431: "Request Header Fields Too Large", 500: "Internal Server Error",
    501: "Not Implemented", 502: "Bad Gateway", 503: "Service Unavailable",
    504: "Gateway Timeout", 529: "Site Overloaded",
}

JSON_CT = "application/json"
VERTEX_PATH = re.compile(r"^/v1/projects/([^/]+)/locations/([^/]+)/publishers/google/models/([^/:]+):(generateContent|predict)$")
MARKER_TAG = "[[mock:"
MARKER_RE = re.compile(r"\[\[mock:([^\]]*)\]\]")
HEXDIGITS = frozenset(b"0123456789abcdefABCDEF")

# JSON encoders are built once: json.dumps() with non-default arguments builds a new
# encoder on every call.
_enc_utf8 = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode
_enc_ascii = json.JSONEncoder(separators=(",", ":")).encode
_enc_sorted = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), sort_keys=True).encode


def dumpb(obj):
    """Compact UTF-8 JSON bytes (falls back to \\u escapes for lone surrogates)."""
    try:
        return _enc_utf8(obj).encode("utf-8")
    except UnicodeEncodeError:
        return _enc_ascii(obj).encode("ascii")


def clean(text):
    """Remove fault markers and surrounding whitespace."""
    if MARKER_TAG in text:
        text = MARKER_RE.sub("", text)
    return text.strip()


def count_words(text):
    """Whitespace-separated words of a text, markers removed."""
    if MARKER_TAG in text:
        text = MARKER_RE.sub("", text)
    return len(text.split())


def structured_text(value):
    """Text of a structured tool-result payload: a string as is; an object with exactly one
    string member gives that string (e.g. {"result": "42"} -> "42"); anything else is
    compact JSON with sorted keys (independent of the key order the client used)."""
    if isinstance(value, str):
        return value
    if isinstance(value, dict) and len(value) == 1:
        (only,) = value.values()
        if isinstance(only, str):
            return only
    if value is None:
        return ""
    return _enc_sorted(value)


def str_list(value):
    """A stop-sequence parameter (string or list of strings) as a list."""
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    return [s for s in value if isinstance(s, str) and s]


def is_bad_key(key):
    """The fixed auth rule: `bad-key` or anything starting with `invalid` is rejected."""
    return key == "bad-key" or key.startswith("invalid")


def bearer(headers):
    auth = headers.get("authorization", "")
    if auth[:7].lower() == "bearer ":
        return auth[7:].strip()
    return None


class BadRequest(Exception):
    """The request body is not acceptable to the provider (answered with a 400)."""


# =============================================================================
# 2. Fault directives
#    `[[mock:key=value,flag]]` in message text, `x-mock: key=value,flag` header, or global
#    defaults (CLI / control API). Precedence: global < header < markers.
# =============================================================================

_INT_KEYS = frozenset(("status", "fail_first", "bad_json_first", "large", "cache", "retry_after_ms",
                       "retry_after_date", "trickle_bytes", "embed_dim", "context"))
_FLOAT_KEYS = frozenset(("latency", "trickle"))


def parse_directives(spec, into):
    """Parse `key=value,key2=value2,flag` into the dict `into` (flags map to True).
    Numbers that do not parse are ignored."""
    for item in spec.split(","):
        key, eq, value = item.partition("=")
        key = key.strip().lower()
        if not key:
            continue
        if not eq:
            into[key] = True
            continue
        value = value.strip()
        try:
            if key in _INT_KEYS:
                into[key] = int(value)
            elif key in _FLOAT_KEYS:
                into[key] = float(value)
            else:
                into[key] = value
        except ValueError:
            pass
    return into


def markers_in(text, into):
    """Collect the directives of every marker found in text."""
    for m in MARKER_RE.finditer(text):
        parse_directives(m.group(1), into)
    return into


# =============================================================================
# 3. Canonical call and the deterministic reply
# =============================================================================

class Call:
    """What the reply engine needs from a provider request, markers already removed."""
    __slots__ = ("model", "system", "last_text", "tool_result", "tool_flag", "last_directives",
                 "input_tokens", "tools", "tool_choice", "forced_name", "max_tokens", "stops", "stream",
                 "schema", "bad_json")

    def __init__(self, model):
        self.model = model
        self.tools = []             # tool names, in request order
        self.tool_choice = "auto"   # auto | none | any
        self.forced_name = None     # a specific tool forced by the tool choice
        self.max_tokens = None
        self.stops = []
        self.stream = False
        self.schema = None          # the structured-output schema asked for, if any
        self.bad_json = False       # answer it with an object missing a required key

    def finish(self, system_raw, last_raw, last_result, words):
        """Set the derived fields from the raw system text, the raw last-user text, the
        last user turn's tool-result text (None if it has none) and the message word count."""
        self.system = clean(system_raw)
        self.last_text = clean(last_raw)
        self.last_directives = markers_in(last_raw, {}) if MARKER_TAG in last_raw else None
        self.tool_flag = bool(self.last_directives) and "tool" in self.last_directives
        self.tool_result = None if last_result is None else clean(last_result)
        self.input_tokens = words + count_words(system_raw)
        return self

    @property
    def key_text(self):
        """Text used in the default fail_first key."""
        return self.last_text if self.tool_result is None else self.tool_result


class Result:
    """The reply: text or one tool call, the protocol-neutral stop reason and usage."""
    __slots__ = ("text", "reason", "stop_seq", "tool_name", "tool_input",
                 "input_tokens", "output_tokens", "cache")


_SCHEMA_MAX_DEPTH = 32


def schema_value(schema, text, depth=0):
    """A deterministic value following a JSON schema: strings "mock <text>", numbers and
    integers 1, booleans true, enums/const their (first) value, arrays one item, objects every
    property. Unknown or too deep schemas give null."""
    if not isinstance(schema, dict) or depth > _SCHEMA_MAX_DEPTH:
        return None
    if "const" in schema:
        return schema["const"]
    if isinstance(schema.get("enum"), list) and schema["enum"]:
        return schema["enum"][0]
    t = schema.get("type")
    if isinstance(t, list):
        t = next((x for x in t if x != "null"), t[0] if t else None)
    if t is None and isinstance(schema.get("properties"), dict):
        t = "object"
    if t == "object":
        props = schema.get("properties") if isinstance(schema.get("properties"), dict) else {}
        return {k: schema_value(v, text, depth + 1) for k, v in props.items()}
    if t == "array":
        n = max(1, schema.get("minItems", 1) if isinstance(schema.get("minItems"), int) else 1)
        return [schema_value(schema.get("items"), text, depth + 1) for _ in range(n)]
    if t == "string":
        return "mock " + text
    if t in ("number", "integer"):
        return 1
    if t == "boolean":
        return True
    return None


def bad_schema_value(schema, text):
    """A value that does not follow the schema: the object without its first required
    property (or its first property), else a string where the schema wants something else."""
    v = schema_value(schema, text)
    if isinstance(v, dict) and v:
        req = [k for k in schema.get("required") or () if k in v]
        del v[req[0] if req else next(iter(v))]
        return v
    return "mock: not what the schema asks for" if not isinstance(v, str) else 0


def make_reply(call, d):
    """Deterministic reply for a call under directives d. Reasons: end | length | stop | tool."""
    r = Result()
    r.input_tokens = call.input_tokens
    r.cache = max(0, d.get("cache", 0))
    r.stop_seq = None
    r.tool_name = None
    r.tool_input = None
    if call.tool_result is not None:
        text = "tool result was: " + call.tool_result
    elif (call.tools and call.tool_choice != "none"
          and (call.tool_flag or d.get("tool") is True or call.tool_choice == "any"
               or call.forced_name)):
        name = call.forced_name or call.tools[0]
        r.tool_name = name
        r.tool_input = {"query": call.last_text}
        r.text = "calling " + name
        r.reason = "tool"
        r.output_tokens = count_words(r.text) + count_words(call.last_text)
        return r
    elif call.schema is not None:                   # structured output: JSON, never cut
        value = (bad_schema_value if call.bad_json else schema_value)(call.schema, call.last_text)
        r.text = json.dumps(value, ensure_ascii=False, separators=(",", ":"))
        r.reason = "end"
        r.output_tokens = len(r.text.split())
        return r
    else:
        text = "mock reply to: " + call.last_text
        if call.system:
            text += " [system: " + call.system + "]"
    reason = "end"
    if call.stops:                                   # earliest stop sequence wins
        best = -1
        for s in call.stops:
            i = text.find(s)
            if i >= 0 and (best < 0 or i < best):
                best, r.stop_seq = i, s
        if best >= 0:
            text = text[:best]
            reason = "stop"
    if call.max_tokens is not None and call.max_tokens >= 0:
        words = text.split()
        if len(words) > call.max_tokens:            # the limit was reached first
            text = " ".join(words[:call.max_tokens])
            reason = "length"
            r.stop_seq = None
    large = d.get("large", 0)
    if large > len(text):                            # padding ignores max_tokens on purpose
        text += " x" * ((large - len(text) + 1) // 2)
    r.text = text
    r.reason = reason
    r.output_tokens = len(text.split())
    return r


# =============================================================================
# 4. Protocol adapters: request parsing, success bodies, error bodies, headers.
#    A "plan" is (status, extra header lines, body bytes, content type) or RESET.
# =============================================================================

class Api:
    name = ""

    def check(self, ex):
        """Auth and required headers; a plan to answer with, or None."""
        return None

    def headers(self, ex):
        return ""

    def plan(self, ex, status, obj, extra=""):
        return (status, self.headers(ex) + extra, dumpb(obj), JSON_CT)

    def context_error(self, ex, n, limit):
        """The protocol's real 400 for an input of n tokens over a window of limit."""
        raise NotImplementedError


# ---- 4.1 Anthropic Messages -------------------------------------------------

def _anthropic_content(content):
    """(text of text blocks, text of tool_result blocks or None) of a message content."""
    if isinstance(content, str):
        return content, None
    if content is None:
        return "", None
    texts, results = [], None
    for b in content:
        t = b.get("type")
        if t == "text":
            texts.append(b.get("text") or "")
        elif t == "tool_result":
            if results is None:
                results = []
            c = b.get("content")
            if isinstance(c, list):
                c = " ".join(x.get("text") or "" if x.get("type") == "text" else structured_text(x)
                             for x in c)
            results.append(structured_text(c))
    return " ".join(texts), (None if results is None else " ".join(results))


class Anthropic(Api):
    name = "anthropic"
    ERRORS = {400: "invalid_request_error", 401: "authentication_error", 402: "billing_error",
              403: "permission_error", 404: "not_found_error", 413: "request_too_large",
              429: "rate_limit_error", 500: "api_error", 504: "timeout_error",
              529: "overloaded_error"}
    MESSAGES = {
        "invalid_request_error": "Invalid request",
        "authentication_error": "invalid x-api-key",
        "billing_error": "Your credit balance is too low to access the Anthropic API.",
        "permission_error": "Your API key does not have permission to use the specified resource.",
        "not_found_error": "Not found",
        "request_too_large": "Request exceeds the maximum allowed number of bytes.",
        "rate_limit_error": "Number of requests has exceeded your per-minute rate limit",
        "api_error": "Internal server error",
        "timeout_error": "Request timed out",
        "overloaded_error": "Overloaded",
    }
    STOP = {"end": "end_turn", "length": "max_tokens", "stop": "stop_sequence", "tool": "tool_use"}

    def headers(self, ex):
        reset = ex.state.reset_ts
        return (f"request-id: req_mock_{ex.seq}\r\n"
                "anthropic-ratelimit-requests-limit: 4000\r\n"
                "anthropic-ratelimit-requests-remaining: 3999\r\n"
                f"anthropic-ratelimit-requests-reset: {reset}\r\n"
                "anthropic-ratelimit-tokens-limit: 400000\r\n"
                "anthropic-ratelimit-tokens-remaining: 400000\r\n"
                f"anthropic-ratelimit-tokens-reset: {reset}\r\n"
                "anthropic-ratelimit-input-tokens-limit: 200000\r\n"
                "anthropic-ratelimit-input-tokens-remaining: 200000\r\n"
                f"anthropic-ratelimit-input-tokens-reset: {reset}\r\n"
                "anthropic-ratelimit-output-tokens-limit: 80000\r\n"
                "anthropic-ratelimit-output-tokens-remaining: 80000\r\n"
                f"anthropic-ratelimit-output-tokens-reset: {reset}\r\n")

    def error(self, ex, status, message=None):
        etype = self.ERRORS.get(status) or ("api_error" if status >= 500 else "invalid_request_error")
        return self.plan(ex, status, {"type": "error",
                                      "error": {"type": etype, "message": message or self.MESSAGES[etype]},
                                      "request_id": f"req_mock_{ex.seq}"})

    def error200(self, ex):
        return dumpb({"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}})

    def context_error(self, ex, n, limit):
        return self.error(ex, 400, f"prompt is too long: {n} tokens > {limit} maximum")

    def check(self, ex):
        h = ex.req.headers
        key = h.get("x-api-key")
        if key is None:
            key = bearer(h)
        if not key:
            return self.error(ex, 401, "x-api-key header is required")
        if is_bad_key(key):
            return self.error(ex, 401, "invalid x-api-key")
        if not h.get("anthropic-version"):
            return self.error(ex, 400, "anthropic-version: header is required")
        return None

    def parse(self, body, ex):
        model = body.get("model")
        if not isinstance(model, str) or not model:
            raise BadRequest("model: Field required")
        mt = body.get("max_tokens")
        if not isinstance(mt, int) or isinstance(mt, bool) or mt < 0:
            raise BadRequest("max_tokens: Field required (a non-negative integer)")
        msgs = body.get("messages")
        if not isinstance(msgs, list) or not msgs:
            raise BadRequest("messages: at least one message is required")
        call = Call(model)
        call.max_tokens = mt
        system = body.get("system") or ""
        if not isinstance(system, str):
            system = _anthropic_content(system)[0]
        words, last_raw, last_res = 0, "", None
        for m in msgs:
            text, res = _anthropic_content(m.get("content"))
            words += count_words(text) + (count_words(res) if res else 0)
            if m.get("role") == "user":
                last_raw, last_res = text, res
        call.stops = str_list(body.get("stop_sequences"))
        call.tools = [t["name"] for t in body.get("tools") or () if t.get("name")]
        tc = body.get("tool_choice") or {}
        kind = tc.get("type", "auto")
        if kind in ("none", "any"):
            call.tool_choice = kind
        elif kind == "tool":
            call.forced_name = tc.get("name")
        fmt = (body.get("output_config") or {}).get("format") or {}
        if fmt.get("type") == "json_schema" and isinstance(fmt.get("schema"), dict):
            call.schema = fmt["schema"]
        return call.finish(system, last_raw, last_res, words)

    def render(self, ex, call, r):
        if r.tool_name:
            content = [{"type": "text", "text": r.text},
                       {"type": "tool_use", "id": f"toolu_mock_{ex.seq}", "name": r.tool_name,
                        "input": r.tool_input}]
        else:
            content = [{"type": "text", "text": r.text}]
        return self.plan(ex, 200, {
            "id": f"msg_mock_{ex.seq}", "type": "message", "role": "assistant",
            "model": call.model, "content": content,
            "stop_reason": self.STOP[r.reason], "stop_sequence": r.stop_seq,
            "usage": {"input_tokens": r.input_tokens, "cache_creation_input_tokens": 0,
                      "cache_read_input_tokens": r.cache,
                      "cache_creation": {"ephemeral_5m_input_tokens": 0,
                                         "ephemeral_1h_input_tokens": 0},
                      "output_tokens": r.output_tokens, "server_tool_use": None,
                      "service_tier": "standard"}})


# ---- 4.2 OpenAI / Azure OpenAI Chat Completions ------------------------------

def _parts_text(content):
    """Text of an OpenAI-style content: a string or a list of parts with `text`."""
    if isinstance(content, str):
        return content
    if not content:
        return ""
    return " ".join(p.get("text") or "" for p in content if "text" in p)


class OpenAI(Api):
    name = "openai"
    ERRORS = {
        400: ("invalid_request_error", None, "Invalid request."),
        401: ("invalid_request_error", "invalid_api_key", "Incorrect API key provided."),
        403: ("invalid_request_error", "unsupported_country_region_territory",
              "Country, region, or territory not supported"),
        404: ("invalid_request_error", "model_not_found",
              "The model does not exist or you do not have access to it."),
        413: ("invalid_request_error", "request_too_large", "Request too large."),
        429: ("requests", "rate_limit_exceeded",
              "Rate limit reached for requests. Please try again later."),
        500: ("server_error", None,
              "The server had an error while processing your request. Sorry about that!"),
        502: ("server_error", None, "Bad gateway."),
        503: ("server_error", None, "The engine is currently overloaded, please try again later."),
        504: ("server_error", None, "Gateway timeout."),
    }
    FINISH = {"end": "stop", "length": "length", "stop": "stop", "tool": "tool_calls"}

    def headers(self, ex):
        return (f"x-request-id: req_mock_{ex.seq}\r\n"
                "openai-version: 2020-10-01\r\n"
                "openai-processing-ms: 1\r\n"
                "x-ratelimit-limit-requests: 10000\r\n"
                "x-ratelimit-limit-tokens: 1000000\r\n"
                "x-ratelimit-remaining-requests: 9999\r\n"
                "x-ratelimit-remaining-tokens: 999000\r\n"
                "x-ratelimit-reset-requests: 6ms\r\n"
                "x-ratelimit-reset-tokens: 0s\r\n")

    def error(self, ex, status, message=None):
        etype, code, default = self.ERRORS.get(status) or (
            ("server_error", None, "Server error.") if status >= 500
            else ("invalid_request_error", None, "Invalid request."))
        return self.plan(ex, status, {"error": {"message": message or default, "type": etype,
                                                "param": None, "code": code}})

    def error200(self, ex):
        return dumpb({"error": {"message": "The server had an error while processing your request.",
                                "type": "server_error", "param": None, "code": None}})

    def context_error(self, ex, n, limit):
        return self.plan(ex, 400, {"error": {
            "message": f"This model's maximum context length is {limit} tokens. However, your "
                       f"messages resulted in {n} tokens. Please reduce the length of the messages.",
            "type": "invalid_request_error", "param": "messages", "code": "context_length_exceeded"}})

    def auth_key(self, h):
        return bearer(h) or h.get("api-key")

    def check(self, ex):
        key = self.auth_key(ex.req.headers)
        if not key:
            return self.error(ex, 401, "You didn't provide an API key. You need to provide your "
                                       "API key in an Authorization header using Bearer auth.")
        if is_bad_key(key):
            return self.error(ex, 401, f"Incorrect API key provided: {key}.")
        return None

    def model_of(self, body, ex):
        model = body.get("model")
        if not isinstance(model, str) or not model:
            raise BadRequest("you must provide a model parameter")
        return model

    def parse(self, body, ex):
        call = Call(self.model_of(body, ex))
        msgs = body.get("messages")
        if not isinstance(msgs, list) or not msgs:
            raise BadRequest("'messages' must be a non-empty array")
        systems, words, last_raw, last_res = [], 0, "", None
        for m in msgs:
            role = m.get("role")
            text = _parts_text(m.get("content"))
            if role in ("system", "developer"):
                systems.append(text)
                continue
            words += count_words(text)
            if role == "user":
                last_raw, last_res = text, None
            elif role == "tool":
                last_res = text
        mt = body.get("max_completion_tokens")
        if mt is None:
            mt = body.get("max_tokens")
        call.max_tokens = mt
        call.stops = str_list(body.get("stop"))
        call.tools = [(t.get("function") or t).get("name") for t in body.get("tools") or ()]
        call.tools = [n for n in call.tools if n]
        tc = body.get("tool_choice", "auto")
        if tc in ("none", "auto"):
            call.tool_choice = tc
        elif tc == "required":
            call.tool_choice = "any"
        elif isinstance(tc, dict):
            call.forced_name = (tc.get("function") or tc).get("name")
        rf = body.get("response_format") or {}
        if rf.get("type") == "json_schema" and isinstance((rf.get("json_schema") or {}).get("schema"), dict):
            call.schema = rf["json_schema"]["schema"]
        return call.finish(" ".join(systems), last_raw, last_res, words)

    def render(self, ex, call, r):
        msg = {"role": "assistant", "content": r.text, "refusal": None, "annotations": []}
        if r.tool_name:
            msg["content"] = None
            msg["tool_calls"] = [{"id": f"call_mock_{ex.seq}", "type": "function",
                                  "function": {"name": r.tool_name,
                                               "arguments": _enc_utf8(r.tool_input)}}]
        prompt = r.input_tokens + r.cache
        return self.plan(ex, 200, {
            "id": f"chatcmpl-mock-{ex.seq}", "object": "chat.completion",
            "created": int(ex.entry["received_at"]), "model": call.model,
            "choices": [{"index": 0, "message": msg, "logprobs": None,
                         "finish_reason": self.FINISH[r.reason]}],
            "usage": {"prompt_tokens": prompt, "completion_tokens": r.output_tokens,
                      "total_tokens": prompt + r.output_tokens,
                      "prompt_tokens_details": {"cached_tokens": r.cache, "audio_tokens": 0},
                      "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0,
                                                    "accepted_prediction_tokens": 0,
                                                    "rejected_prediction_tokens": 0}},
            "service_tier": "default", "system_fingerprint": "fp_mock"})


class Azure(OpenAI):
    """Azure OpenAI classic deployment route: model = deployment, api-version required.
    429 and 401 use Azure's own `{"error":{"code":"429","message":...}}` shape."""
    name = "azure"

    def headers(self, ex):
        return (OpenAI.headers(self, ex) + f"x-ms-request-id: req_mock_{ex.seq}\r\n"
                f"apim-request-id: req_mock_{ex.seq}\r\n")

    def error(self, ex, status, message=None):
        if status == 401:
            return self.plan(ex, 401, {"error": {"code": "401", "message": message or (
                "Access denied due to invalid subscription key or wrong API endpoint. Make sure to "
                "provide a valid key for an active subscription and use a correct regional API "
                "endpoint for your resource.")}})
        if status == 429:
            ra = ex.directives.get("retry_after", "1")
            return self.plan(ex, 429, {"error": {"code": "429", "message": message or (
                "Requests to the ChatCompletions_Create Operation under Azure OpenAI API version "
                f"have exceeded token rate limit of your current tier. Please retry after {ra} "
                "seconds.")}})
        return OpenAI.error(self, ex, status, message)

    def check(self, ex):
        if not parse_qs(ex.query).get("api-version"):
            return self.plan(ex, 404, {"error": {"code": "404", "message": "Resource not found"}})
        key = self.auth_key(ex.req.headers)
        if not key or is_bad_key(key):
            return self.error(ex, 401)
        return None

    def model_of(self, body, ex):
        return ex.params


# ---- 4.3 Gemini generateContent ---------------------------------------------

def _g(d, camel, snake):
    """Gemini REST accepts camelCase and snake_case field names."""
    v = d.get(camel)
    return d.get(snake) if v is None else v


class Gemini(Api):
    name = "gemini"
    STATUS = {400: "INVALID_ARGUMENT", 401: "UNAUTHENTICATED", 403: "PERMISSION_DENIED",
              404: "NOT_FOUND", 409: "ABORTED", 429: "RESOURCE_EXHAUSTED", 499: "CANCELLED",
              500: "INTERNAL", 501: "UNIMPLEMENTED", 503: "UNAVAILABLE", 504: "DEADLINE_EXCEEDED"}
    MESSAGES = {
        "INVALID_ARGUMENT": "Request contains an invalid argument.",
        "UNAUTHENTICATED": "Request had invalid authentication credentials.",
        "PERMISSION_DENIED": "The caller does not have permission",
        "NOT_FOUND": "Requested entity was not found.",
        "ABORTED": "The operation was aborted.",
        "RESOURCE_EXHAUSTED": "Resource has been exhausted (e.g. check quota).",
        "CANCELLED": "The operation was cancelled.",
        "INTERNAL": "An internal error has occurred. Please retry or report in "
                    "https://developers.generativeai.google/guide/troubleshooting",
        "UNIMPLEMENTED": "Method not implemented.",
        "UNAVAILABLE": "The model is overloaded. Please try again later.",
        "DEADLINE_EXCEEDED": "The request timed out. Please try again.",
    }
    FINISH = {"end": "STOP", "length": "MAX_TOKENS", "stop": "STOP", "tool": "STOP"}

    def error(self, ex, status, message=None, details=None):
        rpc = self.STATUS.get(status) or ("INTERNAL" if status >= 500 else "INVALID_ARGUMENT")
        err = {"code": status, "message": message or self.MESSAGES[rpc], "status": rpc}
        if status == 429 and details is None:
            d = ex.directives
            if "retry_after" in d:
                delay = d["retry_after"] + "s"
            elif "retry_after_ms" in d:
                delay = f"{d['retry_after_ms'] / 1000:g}s"
            else:
                delay = "2s"
            details = [{"@type": "type.googleapis.com/google.rpc.QuotaFailure",
                        "violations": [{"quotaMetric": "generativelanguage.googleapis.com/generate_content_requests",
                                        "quotaId": "GenerateRequestsPerMinutePerProjectPerModel",
                                        "quotaDimensions": {"location": "global", "model": ex.params or ""},
                                        "quotaValue": "15"}]},
                       {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": delay}]
        if details:
            err["details"] = details
        return self.plan(ex, status, {"error": err})

    def error200(self, ex):
        return dumpb({"error": {"code": 503, "message": self.MESSAGES["UNAVAILABLE"],
                                "status": "UNAVAILABLE"}})

    def context_error(self, ex, n, limit):
        return self.error(ex, 400, f"The input token count ({n}) exceeds the maximum number of "
                                   f"tokens allowed ({limit}).")

    def check(self, ex):
        h = ex.req.headers
        key = h.get("x-goog-api-key") or bearer(h)
        if not key and "key=" in ex.query:
            key = (parse_qs(ex.query).get("key") or [""])[0]
        if not key:
            return self.error(ex, 403, "Method doesn't allow unregistered callers (callers without "
                              "established identity). Please use API Key or other form of API "
                              "consumer identity to call this API.")
        if is_bad_key(key):
            return self.error(ex, 400, "API key not valid. Please pass a valid API key.", [
                {"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": "API_KEY_INVALID",
                 "domain": "googleapis.com",
                 "metadata": {"service": "generativelanguage.googleapis.com"}}])
        return None

    def parse(self, body, ex):
        contents = body.get("contents")
        if not isinstance(contents, list) or not contents:
            raise BadRequest("* GenerateContentRequest.contents: contents is not specified")
        call = Call(ex.params)
        si = _g(body, "systemInstruction", "system_instruction")
        system = ""
        if isinstance(si, str):
            system = si
        elif si:
            system = " ".join(p.get("text") or "" for p in si.get("parts") or () if "text" in p)
        words, last_raw, last_res = 0, "", None
        for c in contents:
            texts, results = [], []
            for p in c.get("parts") or ():
                if "text" in p and not p.get("thought"):
                    texts.append(p["text"] or "")
                fr = _g(p, "functionResponse", "function_response")
                if fr is not None:
                    results.append(structured_text(fr.get("response")))
            text = " ".join(texts)
            res = " ".join(results) if results else None
            words += count_words(text) + (count_words(res) if res else 0)
            if c.get("role", "user") != "model":
                last_raw, last_res = text, res
        gc = _g(body, "generationConfig", "generation_config") or {}
        call.max_tokens = _g(gc, "maxOutputTokens", "max_output_tokens")
        call.stops = str_list(_g(gc, "stopSequences", "stop_sequences"))
        for t in body.get("tools") or ():
            for f in _g(t, "functionDeclarations", "function_declarations") or ():
                if f.get("name"):
                    call.tools.append(f["name"])
        fcc = _g(_g(body, "toolConfig", "tool_config") or {},
                 "functionCallingConfig", "function_calling_config") or {}
        mode = str(fcc.get("mode", "AUTO")).upper()
        if mode == "NONE":
            call.tool_choice = "none"
        elif mode == "ANY":
            allowed = _g(fcc, "allowedFunctionNames", "allowed_function_names")
            if allowed:
                call.forced_name = allowed[0]
            else:
                call.tool_choice = "any"
        schema = (_g(gc, "responseJsonSchema", "response_json_schema")
                  or _g(gc, "responseSchema", "response_schema"))
        if isinstance(schema, dict):
            call.schema = schema
        return call.finish(system, last_raw, last_res, words)

    def render(self, ex, call, r):
        if r.tool_name:
            parts = [{"functionCall": {"name": r.tool_name, "args": r.tool_input}}]
        else:
            parts = [{"text": r.text}]
        prompt = r.input_tokens + r.cache
        return self.plan(ex, 200, {
            "candidates": [{"content": {"parts": parts, "role": "model"},
                            "finishReason": self.FINISH[r.reason], "index": 0}],
            "usageMetadata": {"promptTokenCount": prompt, "candidatesTokenCount": r.output_tokens,
                              "totalTokenCount": prompt + r.output_tokens,
                              "cachedContentTokenCount": r.cache,
                              "promptTokensDetails": [{"modality": "TEXT", "tokenCount": prompt}]},
            "modelVersion": call.model, "responseId": f"mock-{ex.seq}"})



# ---- 4.3b Vertex AI: Gemini behind an OAuth token endpoint ------------------------------

class Vertex(Gemini):
    """generateContent on Vertex AI paths; only Bearer tokens issued by POST /token pass."""
    name = "vertex"

    def check(self, ex):
        token = bearer(ex.req.headers)
        if not token or token not in ex.state.vertex_tokens:
            return self.error(ex, 401, "Request had invalid authentication credentials. Expected "
                              "OAuth 2 access token, login cookie or other valid authentication "
                              "credential.")
        return None


def _b64url_decode(text):
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def rs256_verify(public_pem, signing_input, signature):
    """True when signature is an RS256 signature of signing_input under public_pem (openssl)."""
    with tempfile.TemporaryDirectory() as d:
        kp, sp = os.path.join(d, "pub.pem"), os.path.join(d, "sig.bin")
        with open(kp, "w") as f:
            f.write(public_pem)
        with open(sp, "wb") as f:
            f.write(signature)
        r = subprocess.run(["openssl", "dgst", "-sha256", "-verify", kp, "-signature", sp],
                           input=signing_input, capture_output=True)
        return r.returncode == 0


# ---- 4.4 Bedrock Converse -----------------------------------------------------

def _sigv4_uri(path):
    """Canonical URI of a non-S3 request: dot and empty segments removed, encoded once more."""
    out = []
    for seg in path.split("/"):
        if seg in ("", "."):
            continue
        if seg == "..":
            if out:
                out.pop()
        else:
            out.append(seg)
    norm = "/" + "/".join(out)
    if out and path.endswith("/"):
        norm += "/"
    return quote(norm, safe="/~")


def sigv4_signature(secret, method, path, query, headers, signed, body, amz_date, scope):
    """AWS SigV4 signature (hex) of a request as received.

    headers: lower-case name -> value; signed: the SignedHeaders names;
    scope: "yyyymmdd/region/service/aws4_request"."""
    pairs = []
    for item in query.split("&") if query else ():
        k, _, v = item.partition("=")
        pairs.append((quote(unquote(k), safe="~"), quote(unquote(v), safe="~")))
    canon_headers = "".join(f"{n}:{' '.join(headers.get(n, '').split())}\n" for n in signed)
    creq = "\n".join([method, _sigv4_uri(path), "&".join(f"{k}={v}" for k, v in sorted(pairs)),
                      canon_headers, ";".join(signed), hashlib.sha256(body).hexdigest()])
    sts = "\n".join(["AWS4-HMAC-SHA256", amz_date, scope,
                     hashlib.sha256(creq.encode()).hexdigest()])
    key = ("AWS4" + secret).encode()
    for part in scope.split("/"):
        key = hmac.new(key, part.encode(), hashlib.sha256).digest()
    return hmac.new(key, sts.encode(), hashlib.sha256).hexdigest()


class Bedrock(Api):
    name = "bedrock"
    ERRORS = {400: "ValidationException", 401: "UnrecognizedClientException",
              403: "AccessDeniedException", 404: "ResourceNotFoundException",
              408: "ModelTimeoutException", 409: "ConflictException", 424: "ModelErrorException",
              429: "ThrottlingException", 500: "InternalServerException",
              503: "ServiceUnavailableException"}
    MESSAGES = {
        "ValidationException": "Malformed input request, please reformat your input and try again.",
        "UnrecognizedClientException": "The security token included in the request is invalid.",
        "AccessDeniedException": "You don't have access to the model with the specified model ID.",
        "ResourceNotFoundException": "Could not resolve the foundation model from the provided model identifier.",
        "ModelTimeoutException": "Model has timed out in processing the request. Try your request again.",
        "ConflictException": "Conflict.",
        "ModelErrorException": "The model returned an error.",
        "ThrottlingException": "Too many requests, please wait before trying again.",
        "InternalServerException": "The server encountered an internal error while processing the request.",
        "ServiceUnavailableException": "Service unavailable. Please try again later.",
        "MissingAuthenticationTokenException": "Missing Authentication Token",
        "InvalidSignatureException": ("The request signature we calculated does not match the "
                                      "signature you provided. Check your AWS Secret Access Key and "
                                      "signing method. Consult the service documentation for details."),
        "SerializationException": "Unexpected character in the request body.",
    }
    STOP = {"end": "end_turn", "length": "max_tokens", "stop": "stop_sequence", "tool": "tool_use"}

    def headers(self, ex):
        return f"x-amzn-RequestId: 00000000-0000-4000-8000-{ex.seq:012d}\r\n"

    def error(self, ex, status, message=None, etype=None):
        etype = etype or self.ERRORS.get(status) or (
            "InternalServerException" if status >= 500 else "ValidationException")
        domain = ("com.amazon.coral.service" if etype in ("UnrecognizedClientException",
                                                          "MissingAuthenticationTokenException",
                                                          "InvalidSignatureException")
                  else "com.amazon.bedrock")
        return self.plan(ex, status, {"message": message or self.MESSAGES[etype]},
                         f"x-amzn-ErrorType: {etype}:http://internal.amazon.com/coral/{domain}/\r\n")

    def error200(self, ex):
        return dumpb({"message": self.MESSAGES["InternalServerException"]})

    def context_error(self, ex, n, limit):
        return self.error(ex, 400, "Input is too long for requested model.")

    def check(self, ex):
        auth = ex.req.headers.get("authorization", "")
        info = None
        if auth.startswith("AWS4-HMAC-SHA256 "):
            info = {"scheme": "sigv4"}
            for item in auth[17:].split(","):
                k, _, v = item.strip().partition("=")
                info[k] = v
            cred = info.get("Credential", "").split("/")
            info["access_key"] = cred[0]
            if len(cred) == 5:
                info["date"], info["region"], info["service"] = cred[1], cred[2], cred[3]
            key = cred[0]
        else:
            key = bearer(ex.req.headers)
            if key:
                info = {"scheme": "bearer"}
        if info is not None:
            ex.entry["aws_auth"] = info            # recorded, never verified
        if not key:
            return self.error(ex, 403, etype="MissingAuthenticationTokenException")
        if is_bad_key(key):
            return self.error(ex, 403, etype="UnrecognizedClientException")
        secret = ex.state.config.get("aws_secret_access_key")
        if secret and info.get("scheme") == "sigv4" and not self.signature_ok(ex, info, secret):
            ex.entry["aws_auth"]["verified"] = False
            return self.error(ex, 403, etype="InvalidSignatureException")
        if secret and info.get("scheme") == "sigv4":
            ex.entry["aws_auth"]["verified"] = True
        return None

    @staticmethod
    def signature_ok(ex, info, secret):
        """Recompute the SigV4 signature with the configured secret (host must be signed)."""
        h = ex.req.headers
        signed = [n for n in info.get("SignedHeaders", "").split(";") if n]
        scope = "/".join(info.get("Credential", "").split("/")[1:])
        amz_date = h.get("x-amz-date", "")
        if "host" not in signed or not scope or not amz_date or any(n not in h for n in signed):
            return False
        want = sigv4_signature(secret, ex.req.method, ex.path, ex.query, h, signed,
                               ex.req.body or b"", amz_date, scope)
        return hmac.compare_digest(want, info.get("Signature", ""))

    def parse(self, body, ex):
        msgs = body.get("messages")
        if not isinstance(msgs, list) or not msgs:
            raise BadRequest("The model returned the following errors: messages: field required")
        call = Call(ex.params)
        system = " ".join(b.get("text") or "" for b in body.get("system") or () if "text" in b)
        words, last_raw, last_res = 0, "", None
        for m in msgs:
            texts, results = [], []
            for b in m.get("content") or ():
                if "text" in b:
                    texts.append(b["text"] or "")
                elif "toolResult" in b:
                    results.append(" ".join(
                        (x.get("text") or "") if "text" in x else structured_text(x.get("json", x))
                        for x in b["toolResult"].get("content") or ()))
            text = " ".join(texts)
            res = " ".join(results) if results else None
            words += count_words(text) + (count_words(res) if res else 0)
            if m.get("role") == "user":
                last_raw, last_res = text, res
        ic = body.get("inferenceConfig") or {}
        call.max_tokens = ic.get("maxTokens")
        call.stops = str_list(ic.get("stopSequences"))
        tcfg = body.get("toolConfig") or {}
        call.tools = [t["toolSpec"]["name"] for t in tcfg.get("tools") or () if "toolSpec" in t]
        tc = tcfg.get("toolChoice") or {}
        if "any" in tc:
            call.tool_choice = "any"
        elif "tool" in tc:
            call.forced_name = tc["tool"].get("name")
        return call.finish(system, last_raw, last_res, words)

    def render(self, ex, call, r):
        if r.tool_name:
            content = [{"toolUse": {"toolUseId": f"tooluse_mock_{ex.seq}", "name": r.tool_name,
                                    "input": r.tool_input}}]
        else:
            content = [{"text": r.text}]
        return self.plan(ex, 200, {
            "output": {"message": {"role": "assistant", "content": content}},
            "stopReason": self.STOP[r.reason],
            "usage": {"inputTokens": r.input_tokens, "outputTokens": r.output_tokens,
                      "totalTokens": r.input_tokens + r.output_tokens + r.cache,
                      "cacheReadInputTokens": r.cache, "cacheWriteInputTokens": 0},
            "metrics": {"latencyMs": int(ex.directives.get("latency", 0))}})


# ---- 4.5 Ollama /api/chat ----------------------------------------------------------

class Ollama(Api):
    name = "ollama"
    MESSAGES = {400: "invalid request", 401: "unauthorized", 404: "model not found, try pulling it first",
                429: "too many requests", 500: "internal server error", 502: "bad gateway",
                503: "server busy, please try again.  maximum pending requests exceeded"}
    DONE = {"end": "stop", "length": "length", "stop": "stop", "tool": "stop"}

    def error(self, ex, status, message=None):
        return self.plan(ex, status, {"error": message or self.MESSAGES.get(status, "error")})

    def error200(self, ex):
        return dumpb({"error": "internal server error"})

    def context_error(self, ex, n, limit):
        return self.error(ex, 400, "the input length exceeds the context length")

    def check(self, ex):
        key = bearer(ex.req.headers)            # no auth locally; a bad bearer is refused
        if key and is_bad_key(key):
            return self.error(ex, 401)
        return None

    def parse(self, body, ex):
        model = body.get("model")
        if not isinstance(model, str) or not model:
            raise BadRequest("model is required")
        call = Call(model)
        systems, words, last_raw, last_res = [], 0, "", None
        for m in body.get("messages") or ():
            role = m.get("role")
            text = m.get("content") or ""
            if not isinstance(text, str):
                raise BadRequest("message content must be a string")
            if role == "system":
                systems.append(text)
                continue
            words += count_words(text)
            if role == "user":
                last_raw, last_res = text, None
            elif role == "tool":
                last_res = text
        opts = body.get("options") or {}
        mt = opts.get("num_predict")
        call.max_tokens = mt if isinstance(mt, int) and mt >= 0 else None
        call.stops = str_list(opts.get("stop"))
        call.tools = [n for n in ((t.get("function") or t).get("name") for t in body.get("tools") or ()) if n]
        call.stream = body.get("stream") is not False
        if isinstance(body.get("format"), dict):
            call.schema = body["format"]
        return call.finish(" ".join(systems), last_raw, last_res, words)

    def render(self, ex, call, r):
        t = ex.entry["received_at"]
        created = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + f".{int(t % 1 * 1e6):06d}Z"
        msg = {"role": "assistant", "content": "" if r.tool_name else r.text}
        if r.tool_name:
            msg["tool_calls"] = [{"id": f"call_mock_{ex.seq}",
                                  "function": {"index": 0, "name": r.tool_name,
                                               "arguments": r.tool_input}}]
        final = {"model": call.model, "created_at": created, "message": msg,
                 "done_reason": self.DONE[r.reason], "done": True,
                 "total_duration": 1_000_000 + r.input_tokens * 100_000 + r.output_tokens * 1_000_000,
                 "load_duration": 1_000_000, "prompt_eval_count": r.input_tokens,
                 "prompt_eval_duration": r.input_tokens * 100_000, "eval_count": r.output_tokens,
                 "eval_duration": r.output_tokens * 1_000_000}
        if not call.stream:
            return (200, "", dumpb(final), JSON_CT)
        # NDJSON stream: one line per word (concatenation == full text), tool calls, final line.
        lines = []
        pieces = [] if r.tool_name or not r.text else r.text.split(" ")
        for i, w in enumerate(pieces):
            lines.append(dumpb({"model": call.model, "created_at": created,
                                "message": {"role": "assistant", "content": w if i == 0 else " " + w},
                                "done": False}))
        if r.tool_name:
            lines.append(dumpb({"model": call.model, "created_at": created, "message": msg,
                                "done": False}))
        final["message"] = {"role": "assistant", "content": ""}
        lines.append(dumpb(final))
        return (200, "", b"\n".join(lines) + b"\n", "application/x-ndjson")


# =============================================================================
# 5. Server state: configuration, request log, statistics, control API, dispatch
# =============================================================================

RESET = "reset"        # plan: close the connection with an RST, no response


class Exchange:
    """One provider request from arrival to its last byte (or the client's disappearance)."""
    __slots__ = ("state", "conn", "req", "path", "query", "params", "seq", "gen", "entry",
                 "directives", "done", "timer", "keep_alive")


# ---- 4.6 Embeddings (OpenAI/Azure, Gemini, Ollama, Bedrock Titan v2 and Cohere) -----
#
# Deterministic vectors: element i of the embedding of text t (as sent, markers included) is
#   ((sha256(utf8(t))[i % 32] + i) % 256) / 256 - 0.5
# exact in float32, so a test can compute it in SQL with sha256() and get_byte().  The
# dimension is the request's (dimensions / outputDimensionality), else a "-d<N>" suffix of
# the model id (e.g. "embed-d12"), else 8.  Tokens: the words of each input (at least 1).

import hashlib

EMBED_DEFAULT_DIM = 8


def embed_vector(text, dim):
    h = hashlib.sha256(text.encode("utf-8")).digest()
    return [((h[i % 32] + i) % 256) / 256 - 0.5 for i in range(dim)]


def embed_dim(model, asked):
    if isinstance(asked, int) and not isinstance(asked, bool) and asked > 0:
        return asked
    m = re.search(r"-d(\d+)(?::\d+)?$", model or "")
    return int(m.group(1)) if m else EMBED_DEFAULT_DIM


def embed_tokens(text):
    return max(1, count_words(text))


class EmbedCall:
    """An embeddings request: inputs in order, the dimension and input type asked for."""
    __slots__ = ("model", "inputs", "dim", "input_type", "last_directives")

    def __init__(self, model, inputs, asked=None, input_type=None):
        if not inputs or not all(isinstance(t, str) for t in inputs):
            raise BadRequest("mock: the inputs must be a non-empty list of strings")
        self.model, self.inputs, self.input_type = model, inputs, input_type
        self.dim = embed_dim(model, asked)
        self.last_directives = None

    @property
    def key_text(self):
        return "\n".join(self.inputs)

    def vectors(self):
        return [embed_vector(t, self.dim) for t in self.inputs]

    def tokens(self):
        return sum(embed_tokens(t) for t in self.inputs)


class OpenAIEmbed(OpenAI):
    """POST /v1/embeddings; data[] in reverse order under the directive embed_reverse."""
    embed = True

    def parse(self, body, ex):
        inp = body.get("input")
        inputs = [inp] if isinstance(inp, str) else inp
        if body.get("encoding_format", "float") != "float":
            raise BadRequest("mock: only encoding_format float is served")
        return EmbedCall(self.model_of(body, ex), inputs, body.get("dimensions"))

    def model_of(self, body, ex):
        return body.get("model") or ""

    def render(self, ex, call, r):
        data = [{"object": "embedding", "index": i, "embedding": v}
                for i, v in enumerate(call.vectors())]
        if ex.directives.get("embed_reverse"):
            data.reverse()
        n = call.tokens()
        return self.plan(ex, 200, {"object": "list", "data": data, "model": call.model,
                                   "usage": {"prompt_tokens": n, "total_tokens": n}})


class AzureEmbed(OpenAIEmbed, Azure):
    """POST /openai/deployments/{deployment}/embeddings?api-version=..."""
    embed = True

    def model_of(self, body, ex):
        return ex.params


class GeminiEmbed(Gemini):
    """:batchEmbedContents (requests[]) and :embedContent (one content)."""
    embed = True
    TASK = {"RETRIEVAL_QUERY": "query", "RETRIEVAL_DOCUMENT": "document"}

    @staticmethod
    def _text(content):
        parts = (content or {}).get("parts") or []
        return "".join(p.get("text", "") for p in parts if isinstance(p, dict))

    def parse(self, body, ex):
        model, method = ex.params
        reqs = body.get("requests") if method == "batchEmbedContents" else [body]
        if not isinstance(reqs, list) or not reqs:
            raise BadRequest("* BatchEmbedContentsRequest.requests: requests is not specified")
        first = reqs[0]
        call = EmbedCall(model, [self._text(q.get("content")) for q in reqs],
                         _g(first, "outputDimensionality", "output_dimensionality"),
                         self.TASK.get(_g(first, "taskType", "task_type")))
        call.last_directives = None
        ex.entry["embed_method"] = method
        return call

    def render(self, ex, call, r):
        vecs = [{"values": v} for v in call.vectors()]
        if ex.params[1] == "embedContent":
            return self.plan(ex, 200, {"embedding": vecs[0]})
        return self.plan(ex, 200, {"embeddings": vecs})


class VertexEmbed(Vertex):
    """Vertex AI :predict for text embeddings: instances[{content, task_type}] and
    parameters.outputDimensionality -> predictions[{embeddings: {values, statistics}}]."""
    embed = True

    def parse(self, body, ex):
        inst = body.get("instances")
        if not isinstance(inst, list) or not inst or not all(isinstance(i, dict) for i in inst):
            raise BadRequest("instances must be a non-empty list of objects")
        params = body.get("parameters") or {}
        ex.entry["embed_method"] = "predict"
        return EmbedCall(ex.params, [i.get("content") for i in inst],
                         params.get("outputDimensionality"),
                         GeminiEmbed.TASK.get(inst[0].get("task_type")))

    def render(self, ex, call, r):
        preds = [{"embeddings": {"values": v, "statistics": {"token_count": embed_tokens(t),
                                                             "truncated": False}}}
                 for v, t in zip(call.vectors(), call.inputs)]
        return self.plan(ex, 200, {"predictions": preds,
                                   "metadata": {"billableCharacterCount": sum(len(t) for t in call.inputs)}})


class OllamaEmbed(Ollama):
    """POST /api/embed: input is a string or a list; embeddings[][] and prompt_eval_count."""
    embed = True

    def parse(self, body, ex):
        inp = body.get("input")
        inputs = [inp] if isinstance(inp, str) else inp
        return EmbedCall(body.get("model") or "", inputs, body.get("dimensions"))

    def render(self, ex, call, r):
        return self.plan(ex, 200, {"model": call.model, "embeddings": call.vectors(),
                                   "total_duration": 1000, "load_duration": 100,
                                   "prompt_eval_count": call.tokens()})


class BedrockEmbed(Bedrock):
    """InvokeModel /model/{id}/invoke: Titan text embeddings v2 (inputText -> embedding,
    inputTextTokenCount) when the id names titan-embed, else Cohere embed (texts ->
    embeddings, input_type search_query / search_document)."""
    embed = True
    COHERE_TYPES = {"search_query": "query", "search_document": "document"}

    def parse(self, body, ex):
        model = ex.params
        if "titan-embed" in model:
            if not isinstance(body.get("inputText"), str):
                raise BadRequest("Malformed input request: #: required key [inputText] not found")
            return EmbedCall(model, [body["inputText"]], body.get("dimensions"))
        texts = body.get("texts")
        if not isinstance(texts, list):
            raise BadRequest("Malformed input request: #: required key [texts] not found")
        return EmbedCall(model, texts, None, self.COHERE_TYPES.get(body.get("input_type")))

    def render(self, ex, call, r):
        # InvokeModel answers carry the input token count as a header (Cohere's body has none)
        count = f"X-Amzn-Bedrock-Input-Token-Count: {call.tokens()}\r\n"
        if "titan-embed" in call.model:
            v = call.vectors()[0]
            return self.plan(ex, 200, {"embedding": v, "embeddingsByType": {"float": v},
                                       "inputTextTokenCount": call.tokens()}, count)
        return self.plan(ex, 200, {"id": f"emb-mock-{ex.seq}", "embeddings": call.vectors(),
                                   "texts": call.inputs, "response_type": "embeddings_floats"}, count)


class MockState:
    """All mutable state of the server."""

    def __init__(self, args, loop):
        self.loop = loop
        self.quiet = args.quiet
        self.defaults = {"latency_ms": args.latency_ms, "fail_first": args.fail_first,
                         "fail_status": args.fail_status, "retry_after": args.retry_after,
                         "directives": "", "aws_secret_access_key": args.aws_secret_access_key,
                         "vertex_public_key": None, "vertex_token_expires_in": 3600,
                         "vertex_token_latency_ms": 0}
        anthropic, openai = Anthropic(), OpenAI()
        self.routes = {"/v1/messages": anthropic, "/v1/chat/completions": openai,
                       "/openai/v1/chat/completions": openai, "/api/chat": Ollama(),
                       "/v1/embeddings": OpenAIEmbed(), "/openai/v1/embeddings": OpenAIEmbed(),
                       "/api/embed": OllamaEmbed()}
        self.azure, self.gemini, self.bedrock = Azure(), Gemini(), Bedrock()
        self.azure_embed, self.gemini_embed, self.bedrock_embed = AzureEmbed(), GeminiEmbed(), BedrockEmbed()
        self.vertex, self.vertex_embed = Vertex(), VertexEmbed()
        self.conns = set()          # every open connection
        self.open_counted = 0       # open connections that carried a provider request
        self.in_flight = 0
        self.gen = 0                # bumped by every reset
        self._second = -1
        self.http_date = self.reset_ts = ""
        self.reset()

    # ---- configuration, counters --------------------------------------------------

    def reset(self):
        self.gen += 1
        self.config = dict(self.defaults)
        self._rebuild_base()
        self.seq = 0
        self.log = deque(maxlen=LOG_KEEP)
        self.n_requests = 0
        self.max_in_flight = self.in_flight
        self.disconnects = 0
        self.by_path = {}
        self.by_status = {}
        self.connections_total = 0
        self.fail_counts = {}
        self.token_requests = 0     # POST /token, answered or refused
        self.tokens_issued = 0
        self.vertex_tokens = set()  # access tokens /token issued since the reset

    def _rebuild_base(self):
        """Global directives derived from the effective configuration."""
        c, base = self.config, {}
        if c["directives"]:
            parse_directives(c["directives"], base)
        if c["latency_ms"]:
            base["latency"] = float(c["latency_ms"])
        if c["fail_first"]:
            base["fail_first"] = int(c["fail_first"])
        ra = c["retry_after"]
        if ra is not None:
            base["retry_after"] = (str(int(ra)) if isinstance(ra, float) and ra.is_integer()
                                   else str(ra))
        self.base = base

    def tick(self):
        """Refresh the per-second cached date strings."""
        now = time.time()
        sec = int(now)
        if sec != self._second:
            self._second = sec
            self.http_date = email.utils.formatdate(sec, usegmt=True)
            self.reset_ts = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(sec + 60))
        return now

    def stats(self):
        return {"requests": self.n_requests, "in_flight": self.in_flight,
                "max_in_flight": self.max_in_flight, "disconnects": self.disconnects,
                "by_path": self.by_path, "by_status": self.by_status,
                "connections": self.open_counted, "connections_total": self.connections_total,
                "token_requests": self.token_requests, "tokens_issued": self.tokens_issued}

    # ---- control API ------------------------------------------------------------------

    def control(self, conn, req, path, query):
        name, m, status = path[7:], req.method, 200
        if name == "requests" and m == "GET":
            q = parse_qs(query)
            items = list(self.log)
            prefix = (q.get("path") or [None])[0]
            if prefix:
                items = [e for e in items if e["path"].startswith(prefix)]
            last = (q.get("last") or [None])[0]
            if last is not None and last.isdigit():
                items = items[-int(last):] if int(last) else []
            obj = {"requests": items}
        elif name == "stats" and m == "GET":
            obj = self.stats()
        elif name == "reset" and m == "POST":
            self.reset()
            obj = {"ok": True}
        elif name == "config" and m in ("GET", "POST"):
            status, obj = (200, self.config) if m == "GET" else self._set_config(req.body)
        elif name == "health" and m == "GET":
            obj = {"ok": True}
        elif name in ("requests", "stats", "reset", "config", "health"):
            status, obj = 405, {"error": f"method {m} not allowed on {path}"}
        else:
            status, obj = 404, {"error": f"no control endpoint {path}"}
        conn.send(status, "", dumpb(obj), JSON_CT, req.keep_alive)

    def _set_config(self, body):
        try:
            new = json.loads(body or b"{}")
            if not isinstance(new, dict):
                raise ValueError("body must be a JSON object")
            cfg = dict(self.config)
            for k, v in new.items():
                if k not in cfg:
                    raise ValueError(f"unknown config key {k!r}")
                ok = {"latency_ms": lambda x: isinstance(x, (int, float)) and x >= 0,
                      "fail_first": lambda x: isinstance(x, int) and x >= 0,
                      "fail_status": lambda x: isinstance(x, int) and 100 <= x <= 599,
                      "retry_after": lambda x: x is None or isinstance(x, (int, float, str)),
                      "directives": lambda x: isinstance(x, str),
                      "aws_secret_access_key": lambda x: x is None or isinstance(x, str),
                      "vertex_public_key": lambda x: x is None or isinstance(x, str),
                      "vertex_token_expires_in": lambda x: isinstance(x, int) and x > 0,
                      "vertex_token_latency_ms": lambda x: isinstance(x, (int, float)) and x >= 0}[k](v)
                if not ok or isinstance(v, bool):
                    raise ValueError(f"bad value for {k}: {v!r}")
                cfg[k] = v
        except ValueError as e:
            return 400, {"error": str(e)}
        self.config = cfg
        self._rebuild_base()
        return 200, cfg

    # ---- provider dispatch --------------------------------------------------------------

    def route(self, path):
        """(api, path parameter) of a provider path, or (None, None)."""
        api = self.routes.get(path)
        if api is not None:
            return api, None
        if path.startswith("/openai/deployments/") and path.endswith("/chat/completions"):
            dep = path[20:-17]
            if dep and "/" not in dep:
                return self.azure, unquote(dep)
        elif path.startswith("/openai/deployments/") and path.endswith("/embeddings"):
            dep = path[20:-11]
            if dep and "/" not in dep:
                return self.azure_embed, unquote(dep)
        elif path.startswith("/v1beta/models/") or path.startswith("/v1/models/"):
            model, _, method = path.split("/models/", 1)[1].rpartition(":")
            if method == "generateContent" and model:
                return self.gemini, unquote(model)
            if method in ("batchEmbedContents", "embedContent") and model:
                return self.gemini_embed, (unquote(model), method)
        elif path.startswith("/v1/projects/"):
            m = VERTEX_PATH.match(path)
            if m and m.group(4) == "predict":
                return self.vertex_embed, unquote(m.group(3))
            if m:
                return self.vertex, unquote(m.group(3))
        elif path.startswith("/model/") and path.endswith("/converse") and len(path) > 16:
            return self.bedrock, unquote(path[7:-9])
        elif path.startswith("/model/") and path.endswith("/invoke") and len(path) > 14:
            return self.bedrock_embed, unquote(path[7:-7])
        return None, None

    def dispatch(self, conn, req):
        """Entry point for every complete request (called by the connection)."""
        path, _, query = req.target.partition("?")
        if path.startswith("/_mock/"):
            return self.control(conn, req, path, query)
        now = self.tick()
        self.seq += 1
        ex = Exchange()
        ex.state, ex.conn, ex.req, ex.path, ex.query = self, conn, req, path, query
        ex.seq, ex.gen, ex.done, ex.timer, ex.keep_alive = self.seq, self.gen, False, None, req.keep_alive
        body = req.body
        try:
            parsed = json.loads(body) if body else None
        except ValueError:
            parsed = None
        ex.entry = entry = {
            "seq": ex.seq, "method": req.method, "path": path, "query": query,
            "headers": req.headers,
            "body": parsed if parsed is not None else body.decode("utf-8", "replace"),
            "received_at": now, "client_disconnected": False, "status": None}
        self.log.append(entry)
        self.n_requests += 1
        self.by_path[path] = self.by_path.get(path, 0) + 1
        self.in_flight += 1
        if self.in_flight > self.max_in_flight:
            self.max_in_flight = self.in_flight
        if not conn.counted:
            conn.counted = True
            self.open_counted += 1
        if conn.gen != self.gen:
            conn.gen = self.gen
            self.connections_total += 1
        conn.ex = ex

        # Directives: global < x-mock header < markers anywhere in the body < markers in the
        # last user message (applied in plan(); `tool` only counts from there or the header).
        d = dict(self.base)
        hdr = req.headers.get("x-mock")
        if hdr:
            parse_directives(hdr, d)
        if b"[[mock:" in body:
            found = markers_in(body.decode("utf-8", "replace"), {})
            found.pop("tool", None)
            d.update(found)
        ex.directives = entry["directives"] = d

        api, ex.params = self.route(path)
        try:
            if path == "/token" and req.method == "POST":
                plan = self.token_plan(body)
            elif api is None:
                plan = (404, "", dumpb({"error": {"message": f"mock: no route for {req.method} {path}",
                                                  "type": "not_found_error", "code": "not_found"}}),
                        JSON_CT)
            elif req.method != "POST":
                status, hdrs, b, ct = api.error(ex, 405, f"method {req.method} not allowed")
                plan = (status, hdrs + "Allow: POST\r\n", b, ct)
            elif d.get("hang"):
                return                      # never answered; see client_gone()
            else:
                plan = self.plan(api, ex, parsed, d)
        except Exception:                   # a bug in the mock must not kill the server
            traceback.print_exc()
            plan = (500, "", dumpb({"error": {"message": "mock internal error"}}), JSON_CT)
        latency = self.config["vertex_token_latency_ms"] if path == "/token" else d.get("latency", 0)
        if latency > 0:
            ex.timer = self.loop.call_later(latency / 1000.0, self.deliver, ex, plan)
        else:
            self.deliver(ex, plan)

    def token_plan(self, body):
        """Google's OAuth token endpoint, JWT bearer grant (RFC 7523) with an RS256 assertion
        checked against the configured vertex_public_key."""
        self.token_requests += 1

        def refuse(status, code, text):
            return (status, "", dumpb({"error": code, "error_description": text}), JSON_CT)
        form = parse_qs(body.decode("utf-8", "replace"))
        grant = (form.get("grant_type") or [""])[0]
        jwt = (form.get("assertion") or [""])[0]
        if grant != "urn:ietf:params:oauth:grant-type:jwt-bearer":
            return refuse(400, "unsupported_grant_type", f"Invalid grant_type: {grant}")
        parts = jwt.split(".")
        try:
            if len(parts) != 3:
                raise ValueError
            header = json.loads(_b64url_decode(parts[0]))
            claims = json.loads(_b64url_decode(parts[1]))
            sig = _b64url_decode(parts[2])
        except ValueError:
            return refuse(400, "invalid_grant", "Invalid JWT format.")
        now = time.time()
        if header.get("alg") != "RS256" or header.get("typ") != "JWT":
            return refuse(400, "invalid_grant", "Invalid JWT header.")
        if not (isinstance(claims.get("iat"), int) and isinstance(claims.get("exp"), int)
                and claims["iat"] <= now + 60 and claims["exp"] > now
                and claims["exp"] - claims["iat"] <= 3600):
            return refuse(400, "invalid_grant", "Invalid JWT: Token must be a short-lived token "
                          "(60 minutes) and in a reasonable timeframe.")
        if (not claims.get("iss") or claims.get("sub", claims["iss"]) != claims["iss"]
                or not claims.get("aud")
                or "https://www.googleapis.com/auth/cloud-platform" not in str(claims.get("scope"))):
            return refuse(400, "invalid_scope", "Invalid JWT claims.")
        pub = self.config["vertex_public_key"]
        if not pub or not rs256_verify(pub, (parts[0] + "." + parts[1]).encode(), sig):
            return refuse(400, "invalid_grant", "Invalid JWT Signature.")
        self.tokens_issued += 1
        token = f"ya29.mock-{self.tokens_issued}"
        self.vertex_tokens.add(token)
        return (200, "", dumpb({"access_token": token,
                                "expires_in": self.config["vertex_token_expires_in"],
                                "token_type": "Bearer"}), JSON_CT)

    def plan(self, api, ex, body, d):
        """Decide the answer at arrival time (so fail_first counts in arrival order)."""
        if d.get("reset"):
            return RESET
        err = api.check(ex)
        if err is not None:
            return err
        if d.get("echo_auth"):
            # a careless proxy or provider that repeats the credential headers back
            h = ex.req.headers
            seen = "; ".join(f"{k}: {h[k]}" for k in ("authorization", "x-api-key", "api-key",
                                                       "x-goog-api-key") if k in h)
            status = d.get("status", 400)
            return api.error(ex, status if status >= 400 else 400,
                             f"mock echo of the credential headers: {seen}")
        if not isinstance(body, dict):
            if api is self.bedrock:
                return api.error(ex, 400, etype="SerializationException")
            return api.error(ex, 400, "mock: the request body is not a valid JSON object")
        if body.get("stream") and not isinstance(api, (Ollama, Bedrock, Gemini)):
            return api.error(ex, 400, "mock: stream=true is not supported by the mock")
        try:
            call = api.parse(body, ex)
        except BadRequest as e:
            return api.error(ex, 400, str(e))
        except (AttributeError, TypeError, KeyError, ValueError, IndexError) as e:
            return api.error(ex, 400, f"mock: cannot interpret the request: {e!r}")
        if call.last_directives:            # the last user message's markers win
            d.update(call.last_directives)
        if getattr(api, "embed", False) and isinstance(d.get("embed_dim"), int) and d["embed_dim"] > 0:
            call.dim = d["embed_dim"]       # a provider that ignores the size asked for
        limit = d.get("context")
        if (isinstance(limit, int) and not getattr(api, "embed", False)
                and call.input_tokens > limit):
            # a model whose window is `limit` tokens: refused before any reply or other fault
            ex.entry["context_exceeded"] = {"input_tokens": call.input_tokens, "context": limit}
            return api.context_error(ex, call.input_tokens, limit)
        fail = None
        ff = d.get("fail_first", 0)
        if ff > 0:
            key = d.get("key") or call.key_text + "|" + ex.path
            n = self.fail_counts.get(key, 0) + 1
            self.fail_counts[key] = n
            if n <= ff:
                fail = d.get("status") or self.config["fail_status"]
        elif d.get("status", 200) != 200:
            fail = d["status"]
        if fail:
            status, hdrs, b, ct = api.error(ex, fail)
            return (status, hdrs + self.retry_headers(d), b, ct)
        if d.get("error200"):
            return (200, api.headers(ex), api.error200(ex), JSON_CT)
        if getattr(call, "schema", None) is not None:   # an EmbedCall has none
            call.bad_json = bool(d.get("bad_json"))
            if d.get("bad_json_first", 0) > 0:
                key = "bad_json|" + (d.get("key") or ex.path)
                n = self.fail_counts.get(key, 0) + 1
                self.fail_counts[key] = n
                call.bad_json = n <= d["bad_json_first"]
        plan = api.render(ex, call, None if getattr(api, "embed", False) else make_reply(call, d))
        if d.get("malformed"):
            b = plan[2]
            plan = (200, plan[1], b[:max(1, len(b) // 2)], JSON_CT)
        return plan

    @staticmethod
    def retry_headers(d):
        h = ""
        if "retry_after_date" in d:
            h += f"retry-after: {email.utils.formatdate(time.time() + d['retry_after_date'], usegmt=True)}\r\n"
        elif "retry_after" in d:
            h += f"retry-after: {d['retry_after']}\r\n"
        if "retry_after_ms" in d:
            h += f"retry-after-ms: {d['retry_after_ms']}\r\n"
        if "should_retry" in d:
            h += f"x-should-retry: {str(d['should_retry']).lower()}\r\n"
        return h

    # ---- delivery ---------------------------------------------------------------------------

    def deliver(self, ex, plan):
        """Send the planned answer (after the latency timer, if any)."""
        if ex.done:
            return
        ex.timer = None
        conn = ex.conn
        if plan is RESET:
            self._finish(ex, None)
            conn.reset()
            return
        status, hdrs, body, ctype = plan
        keep = ex.keep_alive and not ex.directives.get("close")
        ex.entry["status"] = status
        if ex.gen == self.gen:
            k = str(status)
            self.by_status[k] = self.by_status.get(k, 0) + 1
        trickle = ex.directives.get("trickle", 0)
        if trickle > 0 and body:
            conn.send_head(status, hdrs, len(body), ctype, keep)
            size = max(1, ex.directives.get("trickle_bytes", TRICKLE_BYTES))
            ex.timer = self.loop.call_later(trickle / 1000.0, self._trickle, ex, body, 0,
                                            size, keep)
            return
        self._finish(ex, status)
        conn.send(status, hdrs, body, ctype, keep)

    def _trickle(self, ex, body, pos, size, keep):
        if ex.done:
            return
        end = pos + size
        ex.conn.transport.write(body[pos:end])
        if end >= len(body):
            ex.timer = None
            self._finish(ex, ex.entry["status"])
            ex.conn.complete(keep)
        else:
            ex.timer = self.loop.call_later(ex.directives["trickle"] / 1000.0, self._trickle,
                                            ex, body, end, size, keep)

    def _finish(self, ex, status):
        ex.done = True
        ex.conn.ex = None
        self.in_flight -= 1
        if not self.quiet:
            print(f"mock: {ex.req.method} {ex.path} -> {status if status else 'reset'}",
                  file=sys.stderr)

    def client_gone(self, ex):
        """The connection closed before the answer was complete (hang, latency, trickle)."""
        if ex.done:
            return
        ex.done = True
        if ex.timer is not None:
            ex.timer.cancel()
            ex.timer = None
        self.in_flight -= 1
        if ex.gen == self.gen:
            self.disconnects += 1
        ex.entry["client_disconnected"] = True
        ex.entry["disconnected_at"] = time.time()
        if not self.quiet:
            print(f"mock: {ex.req.method} {ex.path} -> client went away", file=sys.stderr)


# =============================================================================
# 6. HTTP/1.1 connection (raw asyncio.Protocol)
#    Requests on one connection are answered in order: while one is being answered
#    (latency, trickle, hang) later pipelined bytes are only buffered.
# =============================================================================

class Request:
    __slots__ = ("method", "target", "version", "headers", "body", "keep_alive")


class Connection(asyncio.Protocol):
    __slots__ = ("state", "transport", "buf", "head", "busy", "processing", "closed",
                 "counted", "gen", "ex", "continued", "chunk_pos", "chunk_parts")

    def __init__(self, state):
        self.state = state
        self.transport = None
        self.buf = bytearray()
        self.head = None            # parsed request head waiting for its body
        self.busy = False           # a request is being answered
        self.processing = False     # inside the parse loop
        self.closed = False
        self.counted = False        # carried a provider request (stats "connections")
        self.gen = 0                # state generation in which it was last counted
        self.ex = None              # the Exchange being answered
        self.continued = False      # 100 Continue already sent for the current request
        self.chunk_pos = 0          # resume point of the chunked-body decoder
        self.chunk_parts = []

    # ---- asyncio callbacks ------------------------------------------------------------------

    def connection_made(self, transport):
        self.transport = transport
        self.state.conns.add(self)

    def data_received(self, data):
        if self.closed:
            return
        self.buf += data
        if not self.busy and not self.processing:
            self._process()

    def eof_received(self):
        return False                # the client is gone: close our side as well

    def connection_lost(self, exc):
        self.closed = True
        st = self.state
        st.conns.discard(self)
        if self.counted:
            st.open_counted -= 1
        if self.ex is not None:
            st.client_gone(self.ex)
            self.ex = None

    # ---- parsing ------------------------------------------------------------------------------

    def _process(self):
        self.processing = True
        try:
            while not self.busy and not self.closed:
                req = self._parse()
                if req is None:
                    break
                self.busy = True
                try:
                    self.state.dispatch(self, req)
                except Exception:
                    traceback.print_exc()
                    self.fail(500, "mock internal error")
        finally:
            self.processing = False

    def _parse(self):
        """One complete request from the buffer, or None (incomplete, or answered with an error)."""
        buf = self.buf
        if self.head is None:
            while buf[:2] == b"\r\n":                   # tolerated between requests
                del buf[:2]
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                if len(buf) > MAX_HEAD:
                    self.fail(431, "request head too large")
                return None
            if end > MAX_HEAD:
                self.fail(431, "request head too large")
                return None
            lines = buf[:end].decode("latin-1").split("\r\n")
            del buf[:end + 4]
            parts = lines[0].split(" ")
            if len(parts) != 3 or not parts[2].startswith("HTTP/1.") or not parts[0].isalpha():
                self.fail(400, "malformed request line")
                return None
            headers = {}
            for line in lines[1:]:
                name, sep, value = line.partition(":")
                name = name.lower()
                if not sep or not name or name != name.strip():
                    self.fail(400, "malformed header line")
                    return None
                value = value.strip()
                if name in headers:
                    headers[name] += ", " + value
                else:
                    headers[name] = value
            te = headers.get("transfer-encoding")
            if te is not None:
                if te.lower().rpartition(",")[2].strip() != "chunked":
                    self.fail(501, "unsupported transfer-encoding")
                    return None
                length = -1
            else:
                cl = headers.get("content-length", "0")
                if not cl.isdigit():
                    self.fail(400, "bad content-length")
                    return None
                length = int(cl)
                if length > MAX_BODY:
                    self.fail(413, "request body too large")
                    return None
            self.head = (parts[0], parts[1], parts[2], headers, length)
            self.continued = False
            self.chunk_pos, self.chunk_parts = 0, []
        method, target, version, headers, length = self.head
        if length >= 0:
            if len(buf) < length:
                self._maybe_continue(headers)
                return None
            body = bytes(buf[:length])
            del buf[:length]
        else:
            try:
                got = self._dechunk()
            except ValueError:
                self.fail(400, "malformed chunked body")
                return None
            if got is None:
                if len(buf) > MAX_BODY:
                    self.fail(413, "request body too large")
                    return None
                self._maybe_continue(headers)
                return None
            body, used = got
            del buf[:used]
        self.head = None
        req = Request()
        req.method, req.target, req.version, req.headers, req.body = method, target, version, headers, body
        conn_hdr = headers.get("connection", "").lower()
        if version == "HTTP/1.1":
            req.keep_alive = "close" not in conn_hdr
        else:
            req.keep_alive = "keep-alive" in conn_hdr
        if target.startswith("http://") or target.startswith("https://"):   # absolute-form
            slash = target.find("/", target.find("//") + 2)
            req.target = target[slash:] if slash >= 0 else "/"
        return req

    def _dechunk(self):
        """Decode the chunked body at the start of the buffer: (body, bytes used), or None
        if incomplete (resumes where it stopped on the next call). ValueError if malformed."""
        buf, pos, parts = self.buf, self.chunk_pos, self.chunk_parts
        while True:
            eol = buf.find(b"\r\n", pos)
            if eol < 0:
                if len(buf) - pos > 4096:
                    raise ValueError("chunk size line too long")
                break
            size_txt = bytes(buf[pos:eol]).split(b";", 1)[0].strip()
            if not size_txt or not all(c in HEXDIGITS for c in size_txt):
                raise ValueError("bad chunk size")
            size = int(size_txt, 16)
            data = eol + 2
            if size == 0:                               # last chunk, then trailers
                while True:
                    eol = buf.find(b"\r\n", data)
                    if eol < 0:
                        break
                    if eol == data:
                        return b"".join(parts), eol + 2
                    data = eol + 2
                break
            if len(buf) < data + size + 2:
                break
            if buf[data + size:data + size + 2] != b"\r\n":
                raise ValueError("missing CRLF after chunk")
            parts.append(bytes(buf[data:data + size]))
            pos = data + size + 2
        self.chunk_pos = pos
        return None

    def _maybe_continue(self, headers):
        if not self.continued and headers.get("expect", "").lower() == "100-continue":
            self.continued = True
            self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")

    # ---- writing ------------------------------------------------------------------------------

    def _head(self, status, hdrs, length, ctype, keep):
        st = self.state
        st.tick()
        return (f"HTTP/1.1 {status} {REASONS.get(status, 'Unknown')}\r\n"
                f"Date: {st.http_date}\r\nServer: llm-gateway-mock\r\n"
                f"Content-Type: {ctype}\r\nContent-Length: {length}\r\n"
                f"Connection: {'keep-alive' if keep else 'close'}\r\n{hdrs}\r\n"
                ).encode("latin-1", "replace")

    def send(self, status, hdrs, body, ctype, keep):
        """Write a whole response with one write, then go on with the next request."""
        if self.closed:
            return
        self.transport.write(self._head(status, hdrs, len(body), ctype, keep) + body)
        self.complete(keep)

    def send_head(self, status, hdrs, length, ctype, keep):
        self.transport.write(self._head(status, hdrs, length, ctype, keep))

    def complete(self, keep):
        """The current response is fully written."""
        if self.closed:
            return
        if not keep:
            self.closed = True
            self.transport.close()
            return
        self.busy = False
        if not self.processing and self.buf:
            self._process()

    def fail(self, status, message):
        """Protocol-level error: answer and close (the stream cannot be trusted any more)."""
        self.buf.clear()
        self.head = None
        self.send(status, "", dumpb({"error": {"message": message, "type": "invalid_request_error"}}),
                  JSON_CT, False)

    def reset(self):
        """Close with an RST (SO_LINGER 0) and no response."""
        self.closed = True
        try:
            sock = self.transport.get_extra_info("socket")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        except (OSError, AttributeError):
            pass
        self.transport.abort()


# =============================================================================
# 7. Command line and main loop
# =============================================================================

def parse_args(argv=None):
    p = argparse.ArgumentParser(description="Mock LLM provider for llm_gateway tests.")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0, help="0 = any free port")
    p.add_argument("--port-file", help="write the bound port to this file (atomically)")
    p.add_argument("--latency-ms", type=float, default=0, help="default latency of every answer")
    p.add_argument("--fail-first", type=int, default=0,
                   help="default fail_first: the first N requests of each key fail")
    p.add_argument("--fail-status", type=int, default=503, help="status of fail_first failures")
    p.add_argument("--retry-after", default=None, help="default retry-after of injected errors")
    p.add_argument("--quiet", action="store_true", help="no per-request log lines on stderr")
    p.add_argument("--aws-secret-access-key", default=None,
                   help="verify Bedrock SigV4 signatures with this secret (403 InvalidSignatureException)")
    p.add_argument("--tls-cert", help="serve HTTPS with this PEM certificate (needs --tls-key)")
    p.add_argument("--tls-key", help="PEM private key of --tls-cert")
    return p.parse_args(argv)


async def serve(args):
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):     # before LISTENING: no early-signal race
        loop.add_signal_handler(sig, stop.set)
    state = MockState(args, loop)
    tls = None
    if args.tls_cert:
        import ssl
        tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        tls.load_cert_chain(args.tls_cert, args.tls_key)
    server = await loop.create_server(lambda: Connection(state), args.host, args.port,
                                      backlog=4096, reuse_address=True, ssl=tls)
    port = server.sockets[0].getsockname()[1]
    if args.port_file:
        tmp = f"{args.port_file}.tmp{os.getpid()}"
        with open(tmp, "w") as f:
            f.write(f"{port}\n")
        os.replace(tmp, args.port_file)
    try:
        sys.stdout.write(f"LISTENING {port}\n")
        sys.stdout.flush()
    except (BrokenPipeError, OSError):
        pass
    await stop.wait()
    server.close()
    for conn in list(state.conns):
        conn.transport.abort()
    await asyncio.sleep(0)


def main(argv=None):
    args = parse_args(argv)
    try:
        asyncio.run(serve(args))
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())

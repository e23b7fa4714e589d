--
-- adapters: the provider adapters, driven directly with no network.
--
-- llm.adapter_parse_response() replays recorded provider answers
-- (test/fixtures, sources in test/fixtures/README.md) and a few documented
-- error shapes; llm.adapter_build_request() shows the HTTP request an
-- adapter makes from a canonical request.  Paths are relative to the
-- directory pg_regress runs in, the top of the source tree.  Unaligned
-- output keeps long JSON readable; each expected error is followed by its
-- SQLSTATE.
--
\pset format unaligned

--
-- Anthropic answers
--
\set fx `cat test/fixtures/anthropic/text.json`
SELECT jsonb_pretty(llm.adapter_parse_response('anthropic', 200, :'fx'));

\set fx `cat test/fixtures/anthropic/tool_use.json`
SELECT jsonb_pretty(llm.adapter_parse_response('anthropic', 200, :'fx'));

-- the thinking block and its signature pass through untouched
\set fx `cat test/fixtures/anthropic/thinking_tool_use.json`
SELECT jsonb_pretty(llm.adapter_parse_response('anthropic', 200, :'fx'));

-- 529 overloaded: retryable, retry-after honoured
\set fx `cat test/fixtures/anthropic/error_overloaded.json`
SELECT jsonb_pretty(llm.adapter_parse_response('anthropic', 529, :'fx',
       '{"Retry-After": "30", "request-id": "req_011CX7J5ZXp3npD8nY7VYZvm"}'));

-- the same body inside a 200 is an in-band error: retryable
SELECT jsonb_pretty(llm.adapter_parse_response('anthropic', 200, :'fx'));

-- 400: fatal, the provider's message kept
\set fx `cat test/fixtures/anthropic/error_invalid_request.json`
SELECT jsonb_pretty(llm.adapter_parse_response('anthropic', 400, :'fx'));

-- 429 rate limit (documented shape) vs a spend-limit 429, which is fatal
SELECT llm.adapter_parse_response('anthropic', 429,
       '{"type":"error","error":{"type":"rate_limit_error","message":"Number of request tokens has exceeded your per-minute rate limit"}}',
       '{"retry-after": "1.5"}');
SELECT llm.adapter_parse_response('anthropic', 429,
       '{"type":"error","error":{"type":"rate_limit_error","message":"You have reached your specified API usage limits.","details":{"error_code":"enforced_spend_limit_reached"}}}');
-- 401 refuses the credential; 402 billing is a quota error
SELECT llm.adapter_parse_response('anthropic', 401,
       '{"type":"error","error":{"type":"authentication_error","message":"invalid x-api-key"}}');
SELECT llm.adapter_parse_response('anthropic', 402,
       '{"type":"error","error":{"type":"billing_error","message":"Your credit balance is too low."}}');
-- a proxy's HTML page: the status decides, an excerpt goes to detail
SELECT llm.adapter_parse_response('anthropic', 502, '<html><body>Bad gateway</body></html>');

-- malformed 2xx answers are retryable
SELECT llm.adapter_parse_response('anthropic', 200, '{"id": "msg_1", "type": "message"');
SELECT llm.adapter_parse_response('anthropic', 200, '{"id": "msg_1", "type": "message"}');
SELECT llm.adapter_parse_response('anthropic', 200, '[]');
SELECT llm.adapter_parse_response('anthropic', 200, '');

--
-- OpenAI answers
--
\set fx `cat test/fixtures/openai/text.json`
SELECT jsonb_pretty(llm.adapter_parse_response('openai', 200, :'fx'));

\set fx `cat test/fixtures/openai/image_to_text.json`
SELECT jsonb_pretty(llm.adapter_parse_response('openai', 200, :'fx'));

-- a compatible server: empty content, one tool call
\set fx `cat test/fixtures/openai/tool_call.json`
SELECT jsonb_pretty(llm.adapter_parse_response('openai', 200, :'fx'));

-- a forced tool call ends with finish_reason stop; cached tokens leave input_tokens
\set fx `cat test/fixtures/openai/cached_forced_tool_call.json`
SELECT jsonb_pretty(llm.adapter_parse_response('openai', 200, :'fx'));

\set fx `cat test/fixtures/openai/error_unsupported_parameter.json`
SELECT jsonb_pretty(llm.adapter_parse_response('openai', 400, :'fx',
       '{"x-request-id": "req_1"}'));

\set fx `cat test/fixtures/openai/error_invalid_parameter.json`
SELECT llm.adapter_parse_response('openai', 400, :'fx');

-- Azure content filter refusal (400, fatal) through the azure_openai kind
\set fx `cat test/fixtures/azure_openai/error_content_filter.json`
SELECT jsonb_pretty(llm.adapter_parse_response('azure_openai', 400, :'fx'));

-- cache writes, refusals, content filters, lengths, odd arguments
SELECT jsonb_pretty(llm.adapter_parse_response('openai', 200, $$
{"id":"chatcmpl-1","model":"gpt-x","choices":[{"index":0,"finish_reason":"length",
  "message":{"role":"assistant","content":"partial"}}],
 "usage":{"prompt_tokens":3000,"completion_tokens":10,
          "prompt_tokens_details":{"cached_tokens":1024,"cache_write_tokens":512}}}$$));
SELECT llm.adapter_parse_response('openai', 200, $$
{"id":"chatcmpl-2","model":"gpt-x","choices":[{"index":0,"finish_reason":"stop",
  "message":{"role":"assistant","content":null,"refusal":"I can't help with that."}}],
 "usage":{"prompt_tokens":5,"completion_tokens":7}}$$);
SELECT llm.adapter_parse_response('openai', 200, $$
{"choices":[{"finish_reason":"content_filter","message":{"role":"assistant","content":""}}]}$$);
SELECT jsonb_pretty(llm.adapter_parse_response('openai', 200, $$
{"id":"chatcmpl-3","model":"llama","choices":[{"index":0,"finish_reason":"tool_calls",
  "message":{"role":"assistant","content":"Let me look.","tool_calls":[
    {"id":"call_a","type":"function","function":{"name":"f","arguments":"{not json"}},
    {"type":"function","function":{"name":"g","arguments":""}},
    {"id":"call_c","type":"function","function":{"name":"h","arguments":{"x":1}}},
    {"id":"call_d","type":"function","function":{"name":"k","arguments":"[1,2]"}}]}}]}$$));

-- errors inside a 200, and unreadable 200s
SELECT llm.adapter_parse_response('openai', 200,
       '{"error":{"code":502,"message":"Provider returned error","metadata":{"provider_name":"X"}}}');
SELECT llm.adapter_parse_response('openai', 200, '{"choices":[]}');
SELECT llm.adapter_parse_response('openai', 200, '{"choices":[{"index":0}]}');

-- error shapes of compatible servers
SELECT llm.adapter_parse_response('openai', 429,
       '{"error":{"message":"You exceeded your current quota, please check your plan and billing details.","type":"insufficient_quota","param":null,"code":"insufficient_quota"}}');
SELECT llm.adapter_parse_response('openai', 429,
       '{"error":{"message":"Rate limit reached for gpt-4o in organization org-abc on tokens per min (TPM).","type":"tokens","param":null,"code":"rate_limit_exceeded"}}',
       '{"retry-after-ms": "20", "retry-after": "1"}');
SELECT llm.adapter_parse_response('openai', 400,
       '{"object":"error","message":"This model''s maximum context length is 4096 tokens.","type":"BadRequestError","param":null,"code":400}');
SELECT llm.adapter_parse_response('openai', 503,
       '{"error":{"code":503,"message":"Loading model","type":"unavailable_error"}}');
SELECT llm.adapter_parse_response('openai', 422,
       '{"detail":[{"loc":["body","messages",0,"role"],"msg":"field required","type":"value_error.missing"},{"loc":["body","model"],"msg":"field required","type":"value_error.missing"}]}');
SELECT llm.adapter_parse_response('openai', 404, '{"error":"model \"llama9\" not found, try pulling it first"}');
-- keys echoed in provider messages are scrubbed
SELECT llm.adapter_parse_response('openai', 401,
       '{"error":{"message":"Incorrect API key provided: sk-proj-abcd1234efgh. Header was Bearer eyJhbGciOiJIUzI1NiJ9.abc","type":"invalid_request_error","param":null,"code":"invalid_api_key"}}');
-- a key-shaped token glued to a word, a short one and "bearer:" are kept
SELECT llm.adapter_parse_response('openai', 401,
       '{"error":{"message":"sk-abcdefgh1 first; xsk-abcdefgh2 glued; sk-short; BEARER abcdefgh12345678 and bearer: x; bb sk-zzzzzzzzz9 s","type":"t","code":"c"}}')->'error'->>'message' AS message;

-- status classes without a body; retry-after as an HTTP-date
SELECT s AS status, r->'error'->>'sqlstate' AS sqlstate, r->'error'->>'class' AS class,
       r->'error'->>'message' AS message
  FROM unnest(ARRAY[400, 401, 402, 403, 404, 408, 409, 413, 418, 422, 429,
                    500, 502, 503, 504, 529, 599, 302]) AS s,
       LATERAL llm.adapter_parse_response('openai', s, '') AS r;
SELECT llm.adapter_parse_response('openai', 503, '', '{"Retry-After": "Wed, 21 Oct 2015 07:28:00 GMT"}')->'error'->'retry_after_s' AS past_date;
SELECT (llm.adapter_parse_response('openai', 503, '', '{"Retry-After": "Fri, 31 Dec 2999 23:59:59 GMT"}')->'error'->>'retry_after_s')::float8 > 3e10 AS future_date;
SELECT (llm.adapter_parse_response('openai', 503, '', '{"Retry-After": "Friday, 31-Dec-99 23:59:59 GMT"}')->'error'->>'retry_after_s')::float8 = 0 AS rfc850_date;
SELECT (llm.adapter_parse_response('openai', 503, '', '{"Retry-After": "Sun Nov  6 08:49:37 1994"}')->'error'->>'retry_after_s')::float8 = 0 AS asctime_date;
SELECT h AS retry_after, llm.adapter_parse_response('openai', 429, '', jsonb_build_object('retry-after', h))->'error'->'retry_after_s' AS seconds
  FROM unnest(ARRAY['0', '2', ' 7 ', '0.25', '-1', '1e3', 'soon', '', 'Wed, 21 Oct 2015 07:28:00 GMT trailing']) AS h;

--
-- Anthropic requests
--
SELECT jsonb_pretty(llm.adapter_build_request('anthropic',
  '{"system": [{"type": "text", "text": "Be brief.", "cache_control": {"type": "ephemeral"}}],
    "messages": [{"role": "user", "content": "Hi"}],
    "max_tokens": 4000, "temperature": 0.2, "top_k": 5, "stop_sequences": ["END"],
    "metadata": {"user_id": "u-1"}, "thinking": {"type": "enabled", "budget_tokens": 2048},
    "stream": true, "timeout_ms": 5000, "tags": ["x"]}',
  'claude-sonnet-4-5', 'sk-ant-FAKE0123',
  '{"headers": {"Anthropic-Beta": "prompt-caching-2024-07-31"}}',
  '{"max_tokens": 1000}', 'https://api.anthropic.com/'));
-- without max_tokens: the route's default, else 1024; a version option; no secret
SELECT r->'body'->'max_tokens' AS max_tokens, r->'headers' AS headers
  FROM llm.adapter_build_request('anthropic', '{"messages": [{"role": "user", "content": "Hi"}]}',
       'claude-haiku-4-5', NULL, '{"anthropic_version": "2024-01-01"}', '{"default_max_tokens": 300}') AS r;
SELECT r->'body'->'max_tokens' AS max_tokens, r->>'url' AS url
  FROM llm.adapter_build_request('anthropic', '{"messages": [{"role": "user", "content": "Hi"}]}',
       'claude-haiku-4-5') AS r;
SELECT llm.adapter_build_request('anthropic', '{"messages": []}', 'm', NULL,
       '{"headers": {"x-api-key": "other"}}');
\echo :LAST_ERROR_SQLSTATE
SELECT llm.adapter_build_request('anthropic', '{"messages": []}', 'm', NULL,
       '{"headers": {"bad name": "x"}}');
\echo :LAST_ERROR_SQLSTATE
SELECT llm.adapter_build_request('anthropic', '{"messages": []}', 'm', NULL,
       '{"headers": {"x-evil": "a\r\nHost: elsewhere"}}');
\echo :LAST_ERROR_SQLSTATE
SELECT llm.adapter_build_request('anthropic', '{"messages": []}', 'm', NULL, '{}',
       '{"max_tokens": "lots"}');
\echo :LAST_ERROR_SQLSTATE

--
-- OpenAI requests
--
-- system prompt, multi-turn, images, a tool round trip, tools, the secret
SELECT jsonb_pretty(llm.adapter_build_request('openai',
  '{"system": [{"type": "text", "text": "You are terse."}, {"type": "text", "text": "Answer in French."}],
    "messages": [
      {"role": "user", "content": [{"type": "text", "text": "What is in this image?"},
                                   {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}},
                                   {"type": "image", "source": {"type": "url", "url": "https://example.com/cat.jpg"}}]},
      {"role": "assistant", "content": [{"type": "thinking", "thinking": "hmm", "signature": "sig"},
                                        {"type": "text", "text": "A cat. Let me check the weather."},
                                        {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Paris", "units": ["C"]}},
                                        {"type": "tool_use", "id": "toolu_2", "name": "get_time", "input": {}}]},
      {"role": "user", "content": [{"type": "text", "text": "Thanks."},
                                   {"type": "tool_result", "tool_use_id": "toolu_1", "content": "18 degrees"},
                                   {"type": "tool_result", "tool_use_id": "toolu_2", "content": [{"type": "text", "text": "clock"}, {"type": "text", "text": "broken"}], "is_error": true}]},
      {"role": "assistant", "content": "Anything else?"},
      {"role": "user", "content": [{"type": "text", "text": "One"}, {"type": "text", "text": "Two", "cache_control": {"type": "ephemeral"}}]}],
    "tools": [{"name": "get_weather", "description": "Weather for a city", "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}}},
              {"name": "get_time", "input_schema": {"type": "object"}}],
    "tool_choice": {"type": "auto", "disable_parallel_tool_use": true},
    "max_tokens": 500, "temperature": 0.5, "top_p": 0.9, "top_k": 3,
    "stop_sequences": ["\n\nHuman:"], "metadata": {"user_id": "user-42"},
    "thinking": {"type": "enabled", "budget_tokens": 1024}}',
  'gpt-4o', 'sk-proj-FAKE0123',
  '{"organization": "org-1", "project": "proj_1", "headers": {"X-Trace": "t-1"}}',
  '{}', 'https://api.openai.com/v1'));

-- tool_choice, each value; tool_choice is dropped without tools
SELECT c AS tool_choice, r->'body'->'tool_choice' AS sent, r->'body'->'parallel_tool_calls' AS parallel
  FROM unnest(ARRAY['{"type": "auto"}', '{"type": "any"}', '{"type": "none"}',
                    '{"type": "tool", "name": "get_weather"}',
                    '{"type": "any", "disable_parallel_tool_use": true}']::jsonb[]) AS c,
       LATERAL llm.adapter_build_request('openai',
         jsonb_build_object('messages', '[{"role": "user", "content": "Hi"}]'::jsonb,
                            'tools', '[{"name": "get_weather", "input_schema": {"type": "object"}}]'::jsonb,
                            'tool_choice', c), 'gpt-4o') AS r;
SELECT r->'body' AS body
  FROM llm.adapter_build_request('openai',
       '{"messages": [{"role": "user", "content": "Hi"}], "tool_choice": {"type": "any"}}', 'gpt-4o') AS r;

-- max_tokens: the route cap, the field name, and a cap with no request value
SELECT r->'body' AS body
  FROM llm.adapter_build_request('openai', '{"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 9000}',
       'llama3', NULL, '{"max_tokens_field": "max_tokens"}', '{"max_tokens": 2000}', 'http://localhost:8000/v1') AS r;
SELECT r->'body' AS body, r->'headers' AS headers
  FROM llm.adapter_build_request('openai', '{"messages": [{"role": "user", "content": "Hi"}]}',
       'llama3', NULL, '{}', '{"max_tokens": 2000}', 'http://localhost:11434/v1/') AS r;
SELECT llm.adapter_build_request('openai', '{"messages": []}', 'm', NULL, '{"max_tokens_field": "tokens"}');
\echo :LAST_ERROR_SQLSTATE

-- a message of only tool results needs no empty user turn after them
SELECT r->'body'->'messages' AS messages
  FROM llm.adapter_build_request('openai',
       '{"messages": [{"role": "assistant", "content": [{"type": "tool_use", "id": "c1", "name": "f", "input": {"a": 1}}]},
                      {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "c1"},
                                                   {"type": "tool_result", "tool_use_id": "c1", "is_error": true}]}]}',
       'gpt-4o') AS r;

-- Azure: deployment URL, api-version, api-key header
SELECT jsonb_pretty(llm.adapter_build_request('azure_openai',
       '{"system": "Be helpful.", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 100}',
       'gpt-4o-mini', 'azure-key-0123456789abcdef', '{}', '{}', 'https://myres.openai.azure.com'));
SELECT r->>'url' AS url
  FROM llm.adapter_build_request('azure_openai', '{"messages": []}', 'my deployment', NULL,
       '{"api_version": "2025-04-01-preview"}', '{}', 'https://myres.openai.azure.com/') AS r;

-- what Chat Completions cannot carry fails before any money is spent
SELECT llm.adapter_build_request('openai',
       '{"messages": [{"role": "user", "content": [{"type": "document", "source": {"type": "base64", "media_type": "application/pdf", "data": "JVBERi0="}}]}]}',
       'gpt-4o');
\echo :LAST_ERROR_SQLSTATE
SELECT llm.adapter_build_request('azure_openai',
       '{"messages": [{"role": "user", "content": [{"type": "tool_result", "tool_use_id": "c1", "content": [{"type": "image", "source": {"type": "url", "url": "https://x/y.png"}}]}]}]}',
       'gpt-4o');
\echo :LAST_ERROR_SQLSTATE
SELECT llm.adapter_build_request('openai',
       '{"messages": [{"role": "user", "content": "Hi"}], "tools": [{"type": "web_search_20250305", "name": "web_search"}]}',
       'gpt-4o');
\echo :LAST_ERROR_SQLSTATE
SELECT llm.adapter_build_request('openai',
       '{"messages": [{"role": "user", "content": [{"type": "image", "source": {"type": "file", "file_id": "file_1"}}]}]}',
       'gpt-4o');
\echo :LAST_ERROR_SQLSTATE

-- argument checks
SELECT llm.adapter_build_request('gemini', '{"messages": []}', 'm');
\echo :LAST_ERROR_SQLSTATE
SELECT llm.adapter_parse_response('no_such_kind', 200, '{}');
\echo :LAST_ERROR_SQLSTATE
SELECT llm.adapter_build_request('openai', '[]', 'm');
\echo :LAST_ERROR_SQLSTATE
SELECT llm.adapter_build_request('openai', '{}', NULL);
\echo :LAST_ERROR_SQLSTATE
SELECT llm.adapter_parse_response('openai', 200, '{}', '{"retry-after": true}');
\echo :LAST_ERROR_SQLSTATE

--
-- adapter_gemini: the gemini kind (Gemini API generateContent).
--
-- Recorded answers (test/fixtures/gemini, sources in test/fixtures/README.md)
-- replayed through llm.adapter_parse_response(); bodies marked "hand-written"
-- are built from the documented shapes (provider_protocols.md section 4), not
-- recordings.  Exact request bodies from llm.adapter_build_request().  Then
-- calls through the worker to the mock provider: a tool round trip and a
-- fallback from a failing gemini target to another kind.
--
\pset format unaligned

--
-- Answers: recorded
--
-- text with a thoughtSignature (kept in an empty thinking block before the
-- text); thinking tokens count as output: 28 + 244
\set fx `cat test/fixtures/gemini/text.json`
SELECT jsonb_pretty(llm.adapter_parse_response('gemini', 200, :'fx'));

-- a functionCall without id: a synthesized id from responseId + part index,
-- stop_reason tool_use although finishReason is STOP
\set fx `cat test/fixtures/gemini/tool_call.json`
SELECT jsonb_pretty(llm.adapter_parse_response('gemini', 200, :'fx'));

-- cached, tool-prompt and thinking tokens: input 19 - 3 + 63, cache read 3,
-- output 4 + 56
\set fx `cat test/fixtures/gemini/complete_usage.json`
SELECT jsonb_pretty(llm.adapter_parse_response('gemini', 200, :'fx'));

-- a blocked prompt, no candidates: LL004, fatal, the reason named
\set fx `cat test/fixtures/gemini/prompt_block.json`
SELECT jsonb_pretty(llm.adapter_parse_response('gemini', 200, :'fx'));

-- 429 with a per-minute QuotaFailure: a retryable rate limit, retryDelay kept
\set fx `cat test/fixtures/gemini/error_429_retry_info.json`
SELECT jsonb_pretty(llm.adapter_parse_response('gemini', 429, :'fx'));
-- a Retry-After header wins over the body
SELECT llm.adapter_parse_response('gemini', 429, :'fx', '{"retry-after": "5"}')->'error'->'retry_after_s' AS retry_after_s;

-- 400 INVALID_ARGUMENT: fatal, the provider's message kept
\set fx `cat test/fixtures/gemini/error_invalid_argument.json`
SELECT jsonb_pretty(llm.adapter_parse_response('gemini', 400, :'fx'));

--
-- Answers: hand-written from the documented shapes
--
-- a thought part becomes a thinking block; a functionCall with an id keeps it;
-- two calls in one answer
SELECT jsonb_pretty(llm.adapter_parse_response('gemini', 200,
  '{"candidates": [{"content": {"role": "model", "parts": [
      {"text": "Let me think.", "thought": true, "thoughtSignature": "c2ln"},
      {"text": "Checking both."},
      {"functionCall": {"id": "fc-1", "name": "get_weather", "args": {"city": "Paris"}}},
      {"functionCall": {"name": "get_weather", "args": {"city": "Tokyo"}}}]},
     "finishReason": "STOP"}],
    "usageMetadata": {"promptTokenCount": 10, "candidatesTokenCount": 5},
    "responseId": "r/1+x"}'));
-- finish reasons
SELECT r AS finish_reason,
       llm.adapter_parse_response('gemini', 200, format(
         '{"candidates": [{"content": {"parts": [{"text": "x"}]}, "finishReason": "%s"}]}', r))->>'stop_reason' AS stop_reason
  FROM unnest(ARRAY['STOP', 'MAX_TOKENS', 'SAFETY', 'RECITATION', 'LANGUAGE', 'BLOCKLIST',
                    'PROHIBITED_CONTENT', 'SPII', 'IMAGE_SAFETY', 'OTHER',
                    'FINISH_REASON_UNSPECIFIED']) AS r;
-- a safety stop with no content: an empty answer that says refusal
SELECT llm.adapter_parse_response('gemini', 200,
  '{"candidates": [{"finishReason": "SAFETY", "safetyRatings": []}]}') AS a;
-- a malformed function call: unreadable (LL006)
SELECT llm.adapter_parse_response('gemini', 200,
  '{"candidates": [{"content": {"parts": []}, "finishReason": "MALFORMED_FUNCTION_CALL"}]}') AS a;
-- an RPC error inside a 200: retryable in-band error
SELECT llm.adapter_parse_response('gemini', 200,
  '{"error": {"code": 503, "message": "The model is overloaded.", "status": "UNAVAILABLE"}}') AS a;
-- malformed answers
SELECT llm.adapter_parse_response('gemini', 200, '{"candidates": []}') AS a;
SELECT llm.adapter_parse_response('gemini', 200, '{"candidates": [') AS a;
SELECT llm.adapter_parse_response('gemini', 200, '[]') AS a;

--
-- Errors: hand-written from the documented shapes
--
-- a per-day quota is out of quota (fatal), not a rate limit
SELECT llm.adapter_parse_response('gemini', 429,
  '{"error": {"code": 429, "message": "You exceeded your current quota.", "status": "RESOURCE_EXHAUSTED",
    "details": [{"@type": "type.googleapis.com/google.rpc.QuotaFailure",
                 "violations": [{"quotaId": "GenerateRequestsPerDayPerProjectPerModel-FreeTier"}]},
                {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "3600s"}]}}') AS a;
-- an invalid API key is a 400 that refuses the credential
SELECT llm.adapter_parse_response('gemini', 400,
  '{"error": {"code": 400, "message": "API key not valid. Please pass a valid API key.", "status": "INVALID_ARGUMENT",
    "details": [{"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": "API_KEY_INVALID",
                 "domain": "googleapis.com"}]}}') AS a;
SELECT llm.adapter_parse_response('gemini', 403,
  '{"error": {"code": 403, "message": "Method doesn''t allow unregistered callers.", "status": "PERMISSION_DENIED"}}') AS a;
-- 503 UNAVAILABLE stays overloaded; an array-wrapped error is read too
SELECT llm.adapter_parse_response('gemini', 503,
  '[{"error": {"code": 503, "message": "The model is overloaded. Please try again later.", "status": "UNAVAILABLE"}}]') AS a;
-- retryDelay that is not a duration is ignored; a proxy page keeps the status
SELECT llm.adapter_parse_response('gemini', 429,
  '{"error": {"code": 429, "status": "RESOURCE_EXHAUSTED", "message": "slow down",
    "details": [{"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "-1s"}]}}')->'error'->'retry_after_s' AS retry_after_s;
SELECT llm.adapter_parse_response('gemini', 502, '<html>Bad gateway</html>') AS a;

--
-- Requests
--
-- system, multi-turn (assistant -> model), generation config, the key header
SELECT jsonb_pretty(llm.adapter_build_request('gemini',
  '{"system": [{"type": "text", "text": "Be brief."}, {"type": "text", "text": "Use French."}],
    "messages": [{"role": "user", "content": "Hi"},
                 {"role": "assistant", "content": [{"type": "text", "text": "Bonjour"}]},
                 {"role": "user", "content": [{"type": "text", "text": "And?"},
                    {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0K"}}]}],
    "max_tokens": 4000, "temperature": 0.2, "top_p": 0.9, "top_k": 5, "stop_sequences": ["END"],
    "metadata": {"user_id": "u-1"}, "stream": true, "timeout_ms": 5000}',
  'gemini-2.5-flash', 'AIzaFAKE0123', '{"headers": {"x-goog-user-project": "p1"}}',
  '{"max_tokens": 1000}', 'https://generativelanguage.googleapis.com/'));
-- nothing to configure: no generationConfig; the api_version option; model escaped
SELECT r->>'url' AS url, r->'body' AS body
  FROM llm.adapter_build_request('gemini', '{"messages": [{"role": "user", "content": "Hi"}]}',
       'tunedModels/my model', NULL, '{"api_version": "v1"}') AS r;
-- safety_settings are copied; a value that is not an array is refused
SELECT llm.adapter_build_request('gemini', '{"messages": [{"role": "user", "content": "x"}]}', 'm', NULL,
       '{"safety_settings": [{"category": "HARM_CATEGORY_HARASSMENT", "threshold": "BLOCK_ONLY_HIGH"}]}')->'body'->'safetySettings' AS safety;
SELECT llm.adapter_build_request('gemini', '{"messages": [{"role": "user", "content": "x"}]}', 'm', NULL,
       '{"safety_settings": "none"}');
\echo :LAST_ERROR_SQLSTATE
-- url images are refused; a reserved header is refused; a bad schema_mode
SELECT llm.adapter_build_request('gemini', '{"messages": [{"role": "user", "content": [
  {"type": "image", "source": {"type": "url", "url": "https://example.com/a.png"}}]}]}', 'm');
\echo :LAST_ERROR_SQLSTATE
SELECT llm.adapter_build_request('gemini', '{"messages": [{"role": "user", "content": "x"}]}', 'm', NULL,
       '{"headers": {"x-goog-api-key": "other"}}');
\echo :LAST_ERROR_SQLSTATE
SELECT llm.adapter_build_request('gemini', '{"messages": [{"role": "user", "content": "x"}]}', 'm', NULL,
       '{"schema_mode": "xml"}');
\echo :LAST_ERROR_SQLSTATE

-- tools and the schema subset: type lists -> nullable, const -> enum,
-- additionalProperties/$schema/examples dropped; a no-argument tool has no
-- parameters; tool_choice variants
\set tools '"tools": [{"name": "lookup", "description": "Look a word up", "input_schema": {"$schema": "https://json-schema.org/draft/2020-12/schema", "type": "object", "additionalProperties": false, "properties": {"query": {"type": "string", "minLength": 1, "examples": ["x"]}, "lang": {"type": ["string", "null"], "enum": ["en", "fr"]}, "kind": {"const": "word"}, "tags": {"type": "array", "items": {"type": "string"}, "uniqueItems": true}}, "required": ["query"]}}, {"name": "now", "input_schema": {"type": "object", "properties": {}}}]'
SELECT jsonb_pretty(llm.adapter_build_request('gemini',
  format('{"messages": [{"role": "user", "content": "define gateway"}], %s}', :'tools')::jsonb, 'm')->'body');
SELECT c AS tool_choice, llm.adapter_build_request('gemini',
         format('{"messages": [{"role": "user", "content": "x"}], %s, "tool_choice": %s}', :'tools', c)::jsonb,
         'm')->'body'->'toolConfig' AS tool_config
  FROM unnest(ARRAY['{"type": "auto"}', '{"type": "any"}', '{"type": "tool", "name": "lookup"}',
                    '{"type": "none"}', '{"type": "auto", "disable_parallel_tool_use": true}']) AS c;
-- tool_choice without tools is not sent
SELECT llm.adapter_build_request('gemini',
  '{"messages": [{"role": "user", "content": "x"}], "tool_choice": {"type": "any"}}', 'm')->'body' AS body;
-- refused schema keywords and server tools (SQLSTATE and message of each)
CREATE FUNCTION pg_temp.build_error(request jsonb) RETURNS text LANGUAGE plpgsql AS $$
DECLARE st text; msg text;
BEGIN
    PERFORM llm.adapter_build_request('gemini', request, 'm');
    RETURN 'no error';
EXCEPTION WHEN OTHERS THEN
    GET STACKED DIAGNOSTICS st = RETURNED_SQLSTATE, msg = MESSAGE_TEXT;
    RETURN st || ' ' || msg;
END $$;
SELECT pg_temp.build_error(format('{"messages": [{"role": "user", "content": "x"}],
  "tools": [{"name": "t", "input_schema": {"type": "object", "properties": {"a": %s}}}]}', s)::jsonb) AS error
  FROM unnest(ARRAY['{"$ref": "#/$defs/a"}', '{"oneOf": [{"type": "string"}, {"type": "integer"}]}',
                    '{"allOf": []}', '{"not": {"type": "string"}}',
                    '{"type": ["string", "integer"]}', '{"type": ["null"]}', '{"enum": [1, 2]}',
                    '{"const": 3}', '{"type": "array", "items": [{"type": "string"}]}',
                    '{"type": "object", "properties": {"b": {"type": "object", "properties": {"c": {"if": {}}}}}}',
                    'true']) AS s;
-- nesting deeper than 32 levels is refused, not recursed into
SELECT pg_temp.build_error(jsonb_build_object('messages', '[{"role": "user", "content": "x"}]'::jsonb,
  'tools', jsonb_build_array(jsonb_build_object('name', 't', 'input_schema',
    (SELECT repeat('{"type": "array", "items": ', 40) || '{"type": "string"}' || repeat('}', 40))::jsonb)))) AS error;
SELECT pg_temp.build_error('{"messages": [{"role": "user", "content": "x"}],
  "tools": [{"type": "web_search_20250305", "name": "web_search"}]}') AS error;

-- schema_mode json_schema: schemas go unchanged as parametersJsonSchema / responseJsonSchema
SELECT jsonb_pretty(llm.adapter_build_request('gemini',
  '{"messages": [{"role": "user", "content": "x"}],
    "tools": [{"name": "t", "input_schema": {"type": "object", "additionalProperties": false, "properties": {"a": {"$ref": "#/$defs/a"}}, "$defs": {"a": {"type": "string"}}}}],
    "output_config": {"format": {"type": "json_schema", "schema": {"type": "object", "properties": {"n": {"type": "integer"}}, "additionalProperties": false}}}}',
  'm', NULL, '{"schema_mode": "json_schema"}')->'body');

-- structured output: responseMimeType + responseSchema (translated)
SELECT jsonb_pretty(llm.adapter_build_request('gemini',
  '{"messages": [{"role": "user", "content": "x"}],
    "output_config": {"format": {"type": "json_schema", "schema": {"type": "object", "properties": {"n": {"type": ["integer", "null"]}}, "required": ["n"], "additionalProperties": false}}}}',
  'm')->'body'->'generationConfig');
SELECT llm.adapter_build_request('gemini', '{"messages": [{"role": "user", "content": "x"}],
  "output_config": {"format": {"type": "text"}}}', 'm');
\echo :LAST_ERROR_SQLSTATE

-- thinking: enabled -> budget + includeThoughts; disabled -> budget 0; adaptive -> dynamic
SELECT t AS thinking, llm.adapter_build_request('gemini',
         format('{"messages": [{"role": "user", "content": "x"}], "thinking": %s}', t)::jsonb,
         'm')->'body'->'generationConfig' AS generation_config
  FROM unnest(ARRAY['{"type": "enabled", "budget_tokens": 2048}', '{"type": "disabled"}',
                    '{"type": "adaptive"}']) AS t;

SELECT pg_temp.build_error('{"messages": [{"role": "user", "content": "x"}], "thinking": {"type": "enabled"}}') AS error;
SELECT pg_temp.build_error('{"messages": [{"role": "user", "content": "x"}], "thinking": {"type": "sometimes"}}') AS error;

-- tool results: the name comes from the tool_use with that id (nearest
-- earlier); an error result uses the "error" key; ids of other providers are
-- echoed; an Anthropic thinking block is dropped
SELECT jsonb_pretty(llm.adapter_build_request('gemini',
  '{"messages": [{"role": "user", "content": "weather in Paris and Tokyo?"},
     {"role": "assistant", "content": [
        {"type": "thinking", "thinking": "hmm", "signature": "EqQBCkYIAxgCIkD-anthropic"},
        {"type": "tool_use", "id": "toolu_01", "name": "get_weather", "input": {"city": "Paris"}},
        {"type": "tool_use", "id": "toolu_02", "name": "get_time", "input": {}}]},
     {"role": "user", "content": [
        {"type": "tool_result", "tool_use_id": "toolu_02", "content": [{"type": "text", "text": "noon"}]},
        {"type": "tool_result", "tool_use_id": "toolu_01", "content": "no such city", "is_error": true},
        {"type": "text", "text": "Thanks"}]}]}',
  'm')->'body'->'contents');
-- a signature with nothing after it goes back on an empty text part
SELECT llm.adapter_build_request('gemini', '{"messages": [{"role": "user", "content": "x"},
  {"role": "assistant", "content": [{"type": "text", "text": "a"}, {"type": "thinking", "thinking": "", "signature": "gemini:c2ln"}]},
  {"role": "user", "content": "y"}]}', 'm')->'body'->'contents'->1 AS model_turn;
-- a tool_result whose id matches no earlier tool_use: LL004, fatal
SELECT llm.adapter_build_request('gemini',
  '{"messages": [{"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_missing", "content": "x"}]}]}', 'm');
\echo :LAST_ERROR_SQLSTATE

-- the id round trip: the recorded tool call, sent back as history.  The
-- synthesized id is not sent to Gemini; the name is found through it; the
-- thoughtSignature goes back on the functionCall part it came with.
\set fx `cat test/fixtures/gemini/tool_call.json`
SELECT llm.adapter_parse_response('gemini', 200, :'fx')->'content' AS answer \gset
SELECT jsonb_pretty(llm.adapter_build_request('gemini',
  jsonb_build_object('messages', jsonb_build_array(
    jsonb_build_object('role', 'user', 'content', 'Weather in San Francisco?'),
    jsonb_build_object('role', 'assistant', 'content', :'answer'::jsonb),
    jsonb_build_object('role', 'user', 'content', jsonb_build_array(
      jsonb_build_object('type', 'tool_result', 'tool_use_id', :'answer'::jsonb->1->>'id',
                         'content', 'sunny, 18 C'))))),
  'gemini-3-pro-preview')->'body'->'contents');
-- the recorded text answer: its signature goes back on the text part
\set fx `cat test/fixtures/gemini/text.json`
SELECT llm.adapter_build_request('gemini',
  jsonb_build_object('messages', jsonb_build_array(
    jsonb_build_object('role', 'user', 'content', 'x'),
    jsonb_build_object('role', 'assistant', 'content',
                       llm.adapter_parse_response('gemini', 200, :'fx')->'content'),
    jsonb_build_object('role', 'user', 'content', 'y'))),
  'm')->'body'->'contents'->1 AS model_turn;

--
-- Through the worker, to the mock provider
--
\getenv mock_port MOCK_PORT
SELECT llm.add_provider('mock_gemini', 'gemini', 'http://127.0.0.1:' || :'mock_port', 'local');
SELECT llm.set_credential('mock_gemini', 'test-key-gemini');
-- the route ids later files print must not depend on this file: restored at the end
SELECT last_value AS seq_last, is_called AS seq_called FROM llm.routes_id_seq \gset
SELECT llm.add_route('gem', 'mock_gemini', 'gemini-2.0-flash') > 0 AS added;
SELECT llm_complete('gem', 'Hello there');
SELECT a->'content' AS content, a->>'stop_reason' AS stop_reason, a->>'model' AS model,
       a->'usage' AS usage, a->>'id' AS id
  FROM llm_messages('gem', '[{"role": "user", "content": "What is two plus two? [[mock:cache=4]]"}]',
                    '{"system": "Be brief.", "max_tokens": 50}') AS a;

-- a tool call and its answer, round trip through the worker
\set tools '{"tools": [{"name": "lookup", "description": "Look a word up", "input_schema": {"type": "object", "properties": {"query": {"type": "string"}}}}], "tool_choice": {"type": "any"}}'
SELECT a->'content' AS content, a->>'stop_reason' AS stop_reason
  FROM llm_messages('gem', '[{"role": "user", "content": "define gateway"}]', :'tools') AS a \gset call_
SELECT (:'call_content'::jsonb->0) - 'id' AS tool_use, :'call_content'::jsonb->0->>'id' LIKE 'gemini_mock-%' AS synthesized_id,
       :'call_stop_reason' AS stop_reason;
SELECT a->'content' AS content, a->>'stop_reason' AS stop_reason
  FROM llm_messages('gem', jsonb_build_array(
         jsonb_build_object('role', 'user', 'content', 'define gateway'),
         jsonb_build_object('role', 'assistant', 'content', :'call_content'::jsonb),
         jsonb_build_object('role', 'user', 'content', jsonb_build_array(
           jsonb_build_object('type', 'tool_result', 'tool_use_id', :'call_content'::jsonb->0->>'id',
                              'content', 'a server that routes calls')))),
       '{"tools": [{"name": "lookup", "input_schema": {"type": "object", "properties": {"query": {"type": "string"}}}}]}') AS a;
SELECT status, provider, http_status, input_tokens, output_tokens, cache_read_tokens, stop_reason
  FROM llm.requests ORDER BY id DESC LIMIT 1;

-- a failing gemini target falls over to another kind; both attempts logged
SELECT llm.add_provider('mock_gemini_bad', 'gemini', 'http://127.0.0.1:' || :'mock_port', 'local',
       '{"headers": {"x-mock": "status=503"}}');
SELECT llm.set_credential('mock_gemini_bad', 'test-key-gemini');
SELECT llm.add_provider('mock_anthropic_fb', 'anthropic', 'http://127.0.0.1:' || :'mock_port', 'local');
SELECT llm.set_credential('mock_anthropic_fb', 'test-key-anthropic');
SELECT llm.add_route('gem_fo', 'mock_gemini_bad', 'gemini-2.0-flash', 0, 1, '{"max_attempts": 1}') > 0 AS added;
SELECT llm.add_route('gem_fo', 'mock_anthropic_fb', 'claude-mock-1', 1) > 0 AS added;
SELECT a->'gateway'->>'provider' AS provider, a->'gateway'->>'attempts' AS attempts,
       a->'content'->0->>'type' AS block
  FROM llm_messages('gem_fo', '[{"role": "user", "content": "fall over please"}]') AS a;
SELECT status, provider, attempts,
       (SELECT string_agg(coalesce(e->>'http_status', '-') || ':' || (e->>'provider'), ' ')
          FROM jsonb_array_elements(attempts_detail) e) AS statuses
  FROM llm.requests ORDER BY id DESC LIMIT 1;
-- a bad key is a credential error naming the provider's message
SELECT llm.set_credential('mock_gemini', 'bad-key');
SELECT llm_complete('gem', 'Hello');
\echo :LAST_ERROR_SQLSTATE

-- leave no providers behind for the files that follow
SELECT llm.drop_provider(p) FROM unnest(ARRAY['mock_gemini', 'mock_gemini_bad', 'mock_anthropic_fb']) AS p;
SELECT setval('llm.routes_id_seq', :seq_last, :'seq_called') > 0 AS restored;

--
-- context_errors: each provider's "input longer than the context window"
-- answer is LL017 (fatal, the provider's message kept, a hint), and a
-- neighbouring 400 of the same kind stays LL004.
--
-- Recorded bodies are in test/fixtures/<kind>/ (sources in
-- test/fixtures/README.md); bodies marked "hand-written" are built from the
-- messages quoted in public issues and the providers' documented error
-- shapes (docs/design.md section 26), not recordings.
--
\pset format unaligned

CREATE FUNCTION pg_temp.err(kind text, status int, body text, headers jsonb DEFAULT '{}')
RETURNS TABLE (sqlstate text, class text, http_status int, provider_type text, message text, hint text)
LANGUAGE sql AS $$
    SELECT e->>'sqlstate', e->>'class', (e->>'http_status')::int, e->>'provider_type',
           e->>'message', e->>'hint'
    FROM (SELECT llm.adapter_parse_response(kind, status, body, headers)->'error') AS t(e)
$$;

--
-- anthropic
--
-- recorded: 400 invalid_request_error "prompt is too long: ..."
\set fx `cat test/fixtures/anthropic/error_prompt_too_long.json`
SELECT * FROM pg_temp.err('anthropic', 400, :'fx');
-- recorded neighbour: another invalid_request_error stays LL004
\set fx `cat test/fixtures/anthropic/error_invalid_request.json`
SELECT sqlstate, class, message FROM pg_temp.err('anthropic', 400, :'fx');
-- hand-written: the max_tokens variant is about the output budget: LL004
SELECT sqlstate, class, message FROM pg_temp.err('anthropic', 400,
  '{"type":"error","error":{"type":"invalid_request_error","message":"input length and `max_tokens` exceed context limit: 199759 + 8192 > 200000, decrease input length or `max_tokens` and try again"}}');
-- hand-written: the prefix elsewhere in a message does not count
SELECT sqlstate FROM pg_temp.err('anthropic', 400,
  '{"type":"error","error":{"type":"invalid_request_error","message":"messages.0: the prompt is too long to parse"}}');
-- 413 request_too_large stays what it was (LL004)
SELECT sqlstate, class, provider_type FROM pg_temp.err('anthropic', 413,
  '{"type":"error","error":{"type":"request_too_large","message":"Request exceeds the maximum allowed number of bytes."}}');

--
-- openai and azure_openai
--
-- recorded: code context_length_exceeded
\set fx `cat test/fixtures/openai/error_context_length_exceeded.json`
SELECT * FROM pg_temp.err('openai', 400, :'fx');
SELECT sqlstate, class, provider_type FROM pg_temp.err('azure_openai', 400, :'fx');
-- recorded neighbour: another invalid_request_error stays LL004
\set fx `cat test/fixtures/openai/error_unsupported_parameter.json`
SELECT sqlstate, class, provider_type FROM pg_temp.err('openai', 400, :'fx');
-- hand-written: the message alone (no code) is not enough
SELECT sqlstate FROM pg_temp.err('openai', 400,
  '{"error":{"message":"This model''s maximum context length is 8192 tokens. However, your messages resulted in 9000 tokens. Please reduce the length of the messages.","type":"invalid_request_error","param":"messages","code":null}}');

--
-- gemini and vertex
--
-- recorded: 400 INVALID_ARGUMENT "The input token count (N) exceeds ..."
\set fx `cat test/fixtures/gemini/error_input_token_count.json`
SELECT * FROM pg_temp.err('gemini', 400, :'fx');
SELECT sqlstate, class, provider_type FROM pg_temp.err('vertex', 400, :'fx');
-- recorded neighbour: another INVALID_ARGUMENT stays LL004
\set fx `cat test/fixtures/gemini/error_invalid_argument.json`
SELECT sqlstate, class, message FROM pg_temp.err('gemini', 400, :'fx');

--
-- bedrock
--
-- hand-written: ValidationException "Input is too long for requested model."
SELECT * FROM pg_temp.err('bedrock', 400, '{"message":"Input is too long for requested model."}',
  '{"x-amzn-errortype": "ValidationException:http://internal.amazon.com/coral/com.amazon.bedrock/"}');
-- hand-written: Claude on Bedrock (message as quoted in aaif-goose/goose#7504),
-- and the phrase "too many input tokens" in any case (listed by LiteLLM)
SELECT sqlstate, class, message FROM pg_temp.err('bedrock', 400,
  '{"message":"The model returned the following errors: prompt is too long: 227255 tokens > 200000 maximum"}',
  '{"x-amzn-errortype": "ValidationException"}');
SELECT sqlstate, class FROM pg_temp.err('bedrock', 400,
  '{"message":"The model returned the following errors: Too many input tokens"}',
  '{"x-amzn-errortype": "ValidationException"}');
-- recorded neighbour: another ValidationException stays LL004
\set fx `cat test/fixtures/bedrock/error_validation.json`
SELECT sqlstate, class, message FROM pg_temp.err('bedrock', 400, :'fx',
  '{"x-amzn-errortype": "ValidationException:http://internal.amazon.com/coral/com.amazon.bedrock/"}');
-- the phrase under another exception type is not a context error
SELECT sqlstate, class FROM pg_temp.err('bedrock', 500, '{"message":"Input is too long for requested model."}',
  '{"x-amzn-errortype": "InternalServerException"}');

--
-- ollama
--
-- recorded: 400 {"error": "the input length exceeds the context length"}
\set fx `cat test/fixtures/ollama/error_input_too_long.json`
SELECT * FROM pg_temp.err('ollama', 400, :'fx');
-- the same text with a 500 is a server error, not LL017
SELECT sqlstate, class FROM pg_temp.err('ollama', 500, :'fx');
-- hand-written neighbour: another 400 stays LL004
SELECT sqlstate, class, message FROM pg_temp.err('ollama', 400,
  '{"error":"registry.ollama.ai/library/llama3:latest does not support tools"}');

-- every kind's LL017 is fatal: no retry, no fallback
SELECT k.kind, llm_error.sqlstate, llm_error.class
FROM (VALUES ('anthropic'), ('openai'), ('azure_openai'), ('gemini'), ('vertex'), ('ollama')) AS k(kind),
     LATERAL pg_temp.err(k.kind, 400, CASE k.kind
        WHEN 'anthropic' THEN '{"type":"error","error":{"type":"invalid_request_error","message":"prompt is too long: 21 tokens > 20 maximum"}}'
        WHEN 'gemini' THEN '{"error":{"code":400,"message":"The input token count (21) exceeds the maximum number of tokens allowed (20).","status":"INVALID_ARGUMENT"}}'
        WHEN 'vertex' THEN '{"error":{"code":400,"message":"The input token count (21) exceeds the maximum number of tokens allowed (20).","status":"INVALID_ARGUMENT"}}'
        WHEN 'ollama' THEN '{"error":"the input length exceeds the context length"}'
        ELSE '{"error":{"message":"m","type":"invalid_request_error","param":"messages","code":"context_length_exceeded"}}' END) AS llm_error
ORDER BY k.kind;

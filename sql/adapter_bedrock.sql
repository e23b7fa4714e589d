--
-- adapter_bedrock: the bedrock (Converse + SigV4) adapter, driven directly
-- with no network.  Recorded answers are in test/fixtures/bedrock (sources
-- in test/fixtures/README.md); requests are built with
-- llm.adapter_build_request().  The signature itself depends on the clock:
-- it is checked against the published vectors by the unit suite
-- (test/unit/test_sigv4.c) and end to end by the mock, which recomputes it
-- (test/t/027_bedrock.pl); here only its shape is checked.
--
\pset format unaligned
\set cred '{"access_key_id": "AKIDEXAMPLE", "secret_access_key": "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY"}'
\set base 'https://bedrock-runtime.us-east-1.amazonaws.com'

--
-- Requests
--
-- everything the canonical request can say, in Converse terms: system,
-- text, base64 image, tool_use / tool_result (error status), inference
-- settings, tools and a named tool_choice.  The model id's ':' is encoded
-- as %3A in the path; the region comes from the base_url here.
SELECT r->>'url' AS url,
       jsonb_pretty((r->'headers') - 'authorization'::text - 'x-amz-date'::text) AS headers,
       r->'headers'->>'authorization' ~ '^AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/[0-9]{8}/us-east-1/bedrock/aws4_request, SignedHeaders=content-type;host;x-amz-date, Signature=[0-9a-f]{64}$' AS authz_ok,
       r->'headers'->>'x-amz-date' ~ '^[0-9]{8}T[0-9]{6}Z$' AS date_ok,
       position('wJalr' IN r::text) = 0 AS no_secret,
       jsonb_pretty(r->'body') AS body
  FROM llm.adapter_build_request('bedrock', '{
    "system": "Be brief.",
    "messages": [
      {"role": "user", "content": [
        {"type": "text", "text": "What is in the picture, and the weather?"},
        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}}]},
      {"role": "assistant", "content": [
        {"type": "thinking", "thinking": "Use the tool.", "signature": "sig1"},
        {"type": "tool_use", "id": "tooluse_1", "name": "weather", "input": {"city": "Paris"}}]},
      {"role": "user", "content": [
        {"type": "tool_result", "tool_use_id": "tooluse_1", "is_error": true, "content": "timeout"}]}],
    "max_tokens": 300, "temperature": 0.5, "top_p": 0.9, "stop_sequences": ["END"],
    "tools": [{"name": "weather", "description": "Weather by city",
               "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}}}],
    "tool_choice": {"type": "tool", "name": "weather"}}',
    'anthropic.claude-3-haiku-20240307-v1:0', :'cred', '{}', '{}', :'base') AS r;

-- a session token is sent and signed; an ARN model id is one path label
-- (':' -> %3A, '/' -> %2F); a base_url path prefix is kept; string content
-- and a system block array; cache_control becomes a cachePoint block after
-- its block; no max_tokens means no inferenceConfig.  The
-- diagnostic function has no region argument: provider_options.region
-- stands for the provider's region column.
SELECT r->>'url' AS url,
       r->'headers'->>'x-amz-security-token' AS token,
       r->'headers'->>'host' AS host,
       substring(r->'headers'->>'authorization' FROM 'SignedHeaders=[^,]*') AS signed,
       r->'body' AS body
  FROM llm.adapter_build_request('bedrock',
    '{"system": [{"type": "text", "text": "S1", "cache_control": {"type": "ephemeral"}}, {"type": "text", "text": "S2"}], "messages": [{"role": "user", "content": [{"type": "text", "text": "Hi", "cache_control": {"type": "ephemeral"}}]}], "tools": [{"name": "f", "input_schema": {"type": "object"}}], "tool_choice": {"type": "any"}}',
    'arn:aws:bedrock:eu-west-1:123456789012:inference-profile/eu.anthropic.claude-v2:1',
    '{"access_key_id": "ASIAEXAMPLE", "secret_access_key": "s3cr3t/key", "session_token": "FwoGZXIvYXdzEXAMPLE+token=="}',
    '{"region": "eu-west-1"}', '{}', 'http://127.0.0.1:9999/proxy/') AS r;
-- a region that could break the header is refused
SELECT llm.adapter_build_request('bedrock', '{"messages": [{"role": "user", "content": "Hi"}]}',
       'm', :'cred', '{"region": "us-east-1/x"}', '{}', :'base');
\echo :LAST_ERROR_SQLSTATE

-- no region at all (the base_url names none): a clear error
SELECT llm.adapter_build_request('bedrock', '{"messages": [{"role": "user", "content": "Hi"}]}',
       'm', :'cred', '{}', '{}', 'http://127.0.0.1:9999');
\echo :LAST_ERROR_SQLSTATE

-- malformed credentials: LL001, and the text never quotes the secret
SELECT llm.adapter_build_request('bedrock', '{"messages": [{"role": "user", "content": "Hi"}]}',
       'm', 'AKIDEXAMPLE:wJalrXUtnFEMIsecret', '{}', '{}', :'base');
\echo :LAST_ERROR_SQLSTATE
SELECT llm.adapter_build_request('bedrock', '{"messages": [{"role": "user", "content": "Hi"}]}',
       'm', '{"access_key_id": "AKIDEXAMPLE"}', '{}', '{}', :'base');
\echo :LAST_ERROR_SQLSTATE
-- a line break in the token could add a header: refused
SELECT llm.adapter_build_request('bedrock', '{"messages": [{"role": "user", "content": "Hi"}]}',
       'm', '{"access_key_id": "AKID", "secret_access_key": "x", "session_token": "a\r\nx-evil: 1"}', '{}', '{}', :'base');
\echo :LAST_ERROR_SQLSTATE

-- structured output: Converse has no schema mode, so the schema is a tool the request forces
SELECT (llm.adapter_build_request('bedrock', '{"messages": [{"role": "user", "content": "Hi"}], "output_config": {"format": {"type": "json_schema", "schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}}',
       'm', :'cred', '{}', '{}', :'base'))->'body' ->> 'toolConfig' AS forced_tool;
-- (the answer side, the forced call back to JSON text, is tested live in test/t/027_bedrock.pl)

-- what Converse cannot express
SELECT llm.adapter_build_request('bedrock', '{"messages": [{"role": "user", "content": "Hi"}], "tools": [{"name": "f", "input_schema": {"type": "object"}}], "tool_choice": {"type": "none"}}',
       'm', :'cred', '{}', '{}', :'base');
\echo :LAST_ERROR_SQLSTATE
SELECT llm.adapter_build_request('bedrock', '{"messages": [{"role": "user", "content": [{"type": "image", "source": {"type": "url", "url": "https://x/y.png"}}]}]}',
       'm', :'cred', '{}', '{}', :'base');
\echo :LAST_ERROR_SQLSTATE

--
-- Answers (recorded)
--
\set fx `cat test/fixtures/bedrock/text.json`
SELECT jsonb_pretty(llm.adapter_parse_response('bedrock', 200, :'fx'));
\set fx `cat test/fixtures/bedrock/tool_call.json`
SELECT jsonb_pretty(llm.adapter_parse_response('bedrock', 200, :'fx'));
-- reasoningContent becomes a thinking block with its signature
\set fx `cat test/fixtures/bedrock/reasoning.json`
SELECT jsonb_pretty(llm.adapter_parse_response('bedrock', 200, :'fx'));
-- guardrail_intervened is a refusal
\set fx `cat test/fixtures/bedrock/guardrail_intervened.json`
SELECT jsonb_pretty(llm.adapter_parse_response('bedrock', 200, :'fx'));

-- content_filtered, model_context_window_exceeded, cache counters
-- (hand-written from the documented Converse shape)
SELECT llm.adapter_parse_response('bedrock', 200,
       '{"output":{"message":{"role":"assistant","content":[]}},"stopReason":"content_filtered","usage":{"inputTokens":5,"outputTokens":0}}');
SELECT llm.adapter_parse_response('bedrock', 200,
       '{"output":{"message":{"role":"assistant","content":[{"text":"a"}]}},"stopReason":"model_context_window_exceeded","usage":{"inputTokens":5,"outputTokens":1,"cacheReadInputTokens":7,"cacheWriteInputTokens":3}}');
SELECT llm.adapter_parse_response('bedrock', 200,
       '{"output":{"message":{"role":"assistant","content":[{"text":"a"}]}},"stopReason":"malformed_tool_use","usage":{}}');
-- an exception body with 200, and malformed answers
SELECT llm.adapter_parse_response('bedrock', 200, '{"message":"The server encountered an internal error."}');
SELECT llm.adapter_parse_response('bedrock', 200, '{"output":{}}');
SELECT llm.adapter_parse_response('bedrock', 200, '[1');

--
-- Errors
--
\set fx `cat test/fixtures/bedrock/error_validation.json`
SELECT llm.adapter_parse_response('bedrock', 400, :'fx',
       '{"x-amzn-ErrorType": "ValidationException:http://internal.amazon.com/coral/com.amazon.bedrock/"}');
-- the documented exception bodies (hand-written: {"message"} + x-amzn-ErrorType)
SELECT llm.adapter_parse_response('bedrock', 429, '{"message":"Too many requests, please wait before trying again."}',
       '{"x-amzn-ErrorType": "ThrottlingException:http://internal.amazon.com/coral/com.amazon.bedrock/"}');
SELECT llm.adapter_parse_response('bedrock', 403, '{"message":"The request signature we calculated does not match the signature you provided. Check your AWS Secret Access Key and signing method. Consult the service documentation for details."}',
       '{"x-amzn-ErrorType": "InvalidSignatureException:http://internal.amazon.com/coral/com.amazon.coral.service/"}');
SELECT llm.adapter_parse_response('bedrock', 400, '{"message":"The security token included in the request is invalid."}',
       '{"x-amzn-ErrorType": "UnrecognizedClientException:http://internal.amazon.com/coral/com.amazon.coral.service/"}');
SELECT llm.adapter_parse_response('bedrock', 408, '{"message":"Model has timed out in processing the request."}',
       '{"x-amzn-ErrorType": "ModelTimeoutException:http://internal.amazon.com/coral/com.amazon.bedrock/"}');
SELECT llm.adapter_parse_response('bedrock', 424, '{"message":"The model returned an error.","originalStatusCode":500}',
       '{"x-amzn-ErrorType": "ModelErrorException:http://internal.amazon.com/coral/com.amazon.bedrock/"}');
SELECT llm.adapter_parse_response('bedrock', 400, '{"message":"quota exceeded"}',
       '{"x-amzn-ErrorType": "ServiceQuotaExceededException:http://internal.amazon.com/coral/com.amazon.bedrock/"}');
-- the type in the body's __type when the header is missing
SELECT llm.adapter_parse_response('bedrock', 503, '{"__type":"com.amazon.bedrock#ServiceUnavailableException","message":"Service unavailable."}');
SELECT llm.adapter_parse_response('bedrock', 502, '<html>Bad gateway</html>');

--
-- adapter_vertex: the vertex kind (Gemini generateContent on Vertex AI).
--
-- Exact URLs, headers and bodies from llm.adapter_build_request(): the
-- diagnostic passes its secret argument as the access token the worker
-- would have fetched, and provider_options.region stands for the
-- provider's region.  Answers are Gemini's: a recorded Gemini answer
-- (test/fixtures/gemini) replayed through the vertex kind reads the same.
-- The token exchange itself is tested end to end in test/t/031_vertex.pl.
--
\pset format unaligned

-- a regional endpoint: project, region and model in the path, Bearer token
SELECT jsonb_pretty(llm.adapter_build_request('vertex',
  '{"system": "Be brief.", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 100, "temperature": 0.5}',
  'gemini-2.0-flash', 'fake-vertex-access-token', '{"region": "us-central1", "project": "my-proj"}', '{}',
  'https://us-central1-aiplatform.googleapis.com'));

-- the global endpoint; api_version; a model id with characters to encode
SELECT r->>'url' AS url
  FROM llm.adapter_build_request('vertex', '{"messages": [{"role": "user", "content": "Hi"}]}',
       'gemini-2.5-pro@001', 't', '{"region": "global", "project": "p-1", "api_version": "v1beta1"}', '{}',
       'https://aiplatform.googleapis.com/') AS r;

-- tools and structured output are translated exactly as for kind gemini
SELECT (SELECT r->'body' FROM llm.adapter_build_request('vertex', q.req, 'm', 't',
            '{"region": "europe-west4", "project": "p"}') AS r)
     = (SELECT r->'body' FROM llm.adapter_build_request('gemini', q.req, 'm', 't') AS r) AS same_body
  FROM (SELECT '{"messages": [{"role": "user", "content": "weather?"}],
                 "tools": [{"name": "get_weather", "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}],
                 "tool_choice": {"type": "any"},
                 "output_config": {"format": {"type": "json_schema", "schema": {"type": "object", "properties": {"a": {"type": "integer"}}}}}}'::jsonb AS req) q;

-- refused: no region, a region that is not an id, no project, a project
-- that is not an id, no token, a reserved header
SELECT llm.adapter_build_request('vertex', '{"messages": [{"role": "user", "content": "x"}]}', 'm', 't',
       '{"project": "p"}');
\echo :LAST_ERROR_SQLSTATE
SELECT llm.adapter_build_request('vertex', '{"messages": [{"role": "user", "content": "x"}]}', 'm', 't',
       '{"project": "p", "region": "us-central1/../x"}');
\echo :LAST_ERROR_SQLSTATE
SELECT llm.adapter_build_request('vertex', '{"messages": [{"role": "user", "content": "x"}]}', 'm', 't',
       '{"region": "us-central1"}');
\echo :LAST_ERROR_SQLSTATE
SELECT llm.adapter_build_request('vertex', '{"messages": [{"role": "user", "content": "x"}]}', 'm', 't',
       '{"region": "us-central1", "project": "a/b"}');
\echo :LAST_ERROR_SQLSTATE
SELECT llm.adapter_build_request('vertex', '{"messages": [{"role": "user", "content": "x"}]}', 'm', NULL,
       '{"region": "us-central1", "project": "p"}');
\echo :LAST_ERROR_SQLSTATE
SELECT llm.adapter_build_request('vertex', '{"messages": [{"role": "user", "content": "x"}]}', 'm', 't',
       '{"region": "us-central1", "project": "p", "headers": {"Authorization": "Bearer other"}}');
\echo :LAST_ERROR_SQLSTATE

-- answers: a recorded Gemini answer reads the same through vertex
\set fx `cat test/fixtures/gemini/tool_call.json`
SELECT llm.adapter_parse_response('vertex', 200, :'fx') = llm.adapter_parse_response('gemini', 200, :'fx') AS same_answer;
SELECT llm.adapter_parse_response('vertex', 200, :'fx')->>'stop_reason' AS stop_reason;
-- Vertex's 401 for a refused token (hand-written from the documented
-- google.rpc.Status shape): LL001, credential class
SELECT jsonb_pretty(llm.adapter_parse_response('vertex', 401,
  '{"error": {"code": 401, "message": "Request had invalid authentication credentials. Expected OAuth 2 access token, login cookie or other valid authentication credential.", "status": "UNAUTHENTICATED"}}'));

-- the kind is registered; token_url is checked at input
SELECT 'vertex' = ANY (llm.provider_kinds()) AS registered;
SELECT llm.add_provider('vx_bad_token_url', 'vertex', 'https://us-central1-aiplatform.googleapis.com',
       'us-central1', '{"token_url": "file:///etc/passwd"}');
\echo :LAST_ERROR_SQLSTATE
SELECT llm.add_provider('vx_ok', 'vertex', 'https://us-central1-aiplatform.googleapis.com',
       'us-central1', '{"token_url": "https://oauth2.googleapis.com/token"}') IS NOT NULL AS added;
SELECT llm.drop_provider('vx_ok');

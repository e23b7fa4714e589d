--
-- embeddings: the embeddings adapters of openai and azure_openai driven
-- directly (no network), the route option "dimensions", and llm_embed's
-- checks made before anything is sent.  Success bodies are written inline
-- from the documented shape (provider_protocols.md §2.3: data[] with
-- index and embedding, usage.prompt_tokens), not recorded; the error body
-- is a recording (test/fixtures/README.md).
--
\pset format unaligned

-- the request: POST {base_url}/embeddings, every input, float, dimensions when asked
SELECT jsonb_pretty(llm.adapter_build_embed_request('openai', ARRAY['first text', 'second "quoted"'],
       '{"dimensions": 256, "input_type": "query"}', 'text-embedding-3-small', 'sk-secret',
       '{"organization": "org-1"}', '{}', 'https://api.openai.com/v1/'));
-- no dimensions asked: none sent (the model's own size)
SELECT llm.adapter_build_embed_request('openai', ARRAY['x'], '{}', 'text-embedding-3-small')->'body';
-- Azure: the deployment URL with api-version, the key as api-key
SELECT jsonb_pretty(llm.adapter_build_embed_request('azure_openai', ARRAY['x'], '{}', 'my-embedding-deployment',
       'azure-key', '{"api_version": "2024-06-01"}', '{}', 'https://res.openai.azure.com'));

-- an answer whose data[] is out of order is put back in input order by index
SELECT llm.adapter_parse_embed_response('openai', 200,
  '{"object":"list","data":[{"object":"embedding","index":1,"embedding":[0.5,-0.25,0.125]},
                            {"object":"embedding","index":0,"embedding":[-0.006763331,0.03919632,1e-7]}],
    "model":"text-embedding-3-small","usage":{"prompt_tokens":5,"total_tokens":5}}', 2);
-- the size asked for is checked: another size is LL016, fatal
SELECT llm.adapter_parse_embed_response('openai', 200,
  '{"data":[{"index":0,"embedding":[0.5,0.5]}],"usage":{"prompt_tokens":1}}', 1, 3);
-- malformed answers (LL006): too few vectors, a repeated index, ragged sizes, a base64 string, not JSON
SELECT llm.adapter_parse_embed_response('openai', 200, '{"data":[{"index":0,"embedding":[1]}]}', 2)->'error'->>'detail';
SELECT llm.adapter_parse_embed_response('openai', 200, '{"data":[{"index":0,"embedding":[1]},{"index":0,"embedding":[2]}]}', 2)->'error'->>'detail';
SELECT llm.adapter_parse_embed_response('openai', 200, '{"data":[{"index":0,"embedding":[1]},{"index":1,"embedding":[2,3]}]}', 2)->'error'->>'detail';
SELECT llm.adapter_parse_embed_response('openai', 200, '{"data":[{"index":0,"embedding":"AAAA"}]}', 1)->'error'->>'detail';
SELECT llm.adapter_parse_embed_response('openai', 200, '{"data":[{"index":0,"embedding":[1e39]}]}', 1)->'error'->>'detail';
SELECT llm.adapter_parse_embed_response('openai', 200, 'not json', 1)->'error'->>'sqlstate';
-- an error inside a 2xx body is an in-band error
SELECT llm.adapter_parse_embed_response('openai', 200, '{"error":{"message":"overloaded","type":"server_error"}}', 1);
-- a recorded 400 from /v1/embeddings
\set fx `cat test/fixtures/openai/embeddings_error_bad_request.json`
SELECT llm.adapter_parse_embed_response('openai', 400, :'fx', 1);

-- kinds without embeddings
SELECT llm._kind_has_embeddings('openai'), llm._kind_has_embeddings('azure_openai'),
       llm._kind_has_embeddings('anthropic'), llm._kind_has_embeddings('nope');
SELECT llm.adapter_build_embed_request('anthropic', ARRAY['x'], '{}', 'claude');
\echo :LAST_ERROR_SQLSTATE

-- route option "dimensions": an integer in 1..65536
SELECT llm._check_route_options('{"dimensions": 1536}');
SELECT llm._check_route_options('{"dimensions": 0}');
\echo :LAST_ERROR_SQLSTATE
SELECT llm._check_route_options('{"dimensions": 1.5}');
\echo :LAST_ERROR_SQLSTATE

-- llm_embed checks its options and inputs before anything is sent
SELECT llm_embed('nope', 'x', '{"max_tokens": 5}');
\echo :LAST_ERROR_SQLSTATE
SELECT llm_embed('nope', 'x', '{"input_type": "passage"}');
\echo :LAST_ERROR_SQLSTATE
SELECT llm_embed('nope', 'x', '{"dimensions": 0}');
\echo :LAST_ERROR_SQLSTATE
SELECT llm_embed('nope', 'x', '{"dimensions": "256"}');
\echo :LAST_ERROR_SQLSTATE
SELECT llm_embed('nope', NULL::text);
\echo :LAST_ERROR_SQLSTATE
SELECT * FROM llm_embed('nope', ARRAY[]::text[]);
\echo :LAST_ERROR_SQLSTATE
SELECT * FROM llm_embed('nope', ARRAY['a', NULL]);
\echo :LAST_ERROR_SQLSTATE
-- an alias with no route: the worker's error, as for chat
SELECT llm_embed('no_such_alias', 'x');
\echo :LAST_ERROR_SQLSTATE

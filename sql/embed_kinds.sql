--
-- embed_kinds: the embeddings adapters of the gemini and ollama kinds
-- driven directly (no network).  Gemini answers: one recorded success and
-- one recorded error (test/fixtures/README.md); the other Gemini and all
-- Ollama bodies are hand-written inline from the documented shapes
-- (provider_protocols.md §4 and §7, Ollama docs/api.md) and are not
-- recordings.
--
\pset format unaligned

-- gemini: POST .../models/{model}:batchEmbedContents, one request per input naming the
-- model, taskType from input_type, outputDimensionality when asked, the key as x-goog-api-key
SELECT jsonb_pretty(llm.adapter_build_embed_request('gemini', ARRAY['first text', 'second "quoted"'],
       '{"dimensions": 256, "input_type": "query"}', 'gemini-embedding-001', 'AIza-secret',
       '{"headers": {"x-goog-user-project": "p1"}}', '{}', 'https://generativelanguage.googleapis.com/'));
-- document -> RETRIEVAL_DOCUMENT; no input_type and no dimensions: neither is sent
SELECT llm.adapter_build_embed_request('gemini', ARRAY['x'], '{"input_type": "document"}', 'gemini-embedding-001')->'body';
SELECT llm.adapter_build_embed_request('gemini', ARRAY['x'], '{}', 'gemini-embedding-001')->'body';
-- the model is percent-encoded in the URL (not in the body), api_version is a provider option
SELECT llm.adapter_build_embed_request('gemini', ARRAY['x'], '{}', 'tuned/a b?', NULL,
       '{"api_version": "v1"}', '{}', 'https://g.example')->>'url';
-- a reserved header cannot be set through provider options
SELECT llm.adapter_build_embed_request('gemini', ARRAY['x'], '{}', 'm', NULL,
       '{"headers": {"x-goog-api-key": "other"}}');
\echo :LAST_ERROR_SQLSTATE

-- a recorded batchEmbedContents answer, with usageMetadata.promptTokenCount
\set fx `cat test/fixtures/gemini/embed_batch_usage.json`
SELECT llm.adapter_parse_embed_response('gemini', 200, :'fx', 2);
-- without usageMetadata (gemini-embedding-001): tokens unknown (-1); the worker estimates them
SELECT llm.adapter_parse_embed_response('gemini', 200,
  '{"embeddings":[{"values":[0.25,-0.5,0.125]}]}', 1, 3);
-- the size asked for is checked: another size is LL016
SELECT llm.adapter_parse_embed_response('gemini', 200, '{"embeddings":[{"values":[0.5,0.5]}]}', 1, 3);
-- malformed answers (LL006): too few vectors, no values, ragged, a string element, out of range,
-- not an object, not JSON
SELECT llm.adapter_parse_embed_response('gemini', 200, '{"embeddings":[{"values":[1]}]}', 2)->'error'->>'detail';
SELECT llm.adapter_parse_embed_response('gemini', 200, '{"embeddings":[{"value":[1]}]}', 1)->'error'->>'detail';
SELECT llm.adapter_parse_embed_response('gemini', 200, '{"embeddings":[{"values":[1]},{"values":[1,2]}]}', 2)->'error'->>'detail';
SELECT llm.adapter_parse_embed_response('gemini', 200, '{"embeddings":[{"values":["1"]}]}', 1)->'error'->>'detail';
SELECT llm.adapter_parse_embed_response('gemini', 200, '{"embeddings":[{"values":[1e39]}]}', 1)->'error'->>'detail';
SELECT llm.adapter_parse_embed_response('gemini', 200, '{"embeddings":[{"values":[]}]}', 1)->'error'->>'detail';
SELECT llm.adapter_parse_embed_response('gemini', 200, '{"embedding":{"values":[1]}}', 1)->'error'->>'detail';
SELECT llm.adapter_parse_embed_response('gemini', 200, '[]', 1)->'error'->>'detail';
SELECT llm.adapter_parse_embed_response('gemini', 200, 'not json', 1)->'error'->>'sqlstate';
-- an error inside a 2xx body is an in-band error (hand-written)
SELECT llm.adapter_parse_embed_response('gemini', 200,
  '{"error":{"code":503,"message":"The model is overloaded.","status":"UNAVAILABLE"}}', 1);
-- a recorded 400: more than 100 requests in one batch (the kind's limit is 100)
\set fx `cat test/fixtures/gemini/embed_batch_limit_error.json`
SELECT llm.adapter_parse_embed_response('gemini', 400, :'fx', 1);

-- ollama: POST {base_url}/api/embed, input as an array, dimensions when asked, input_type not
-- sent; truncate and keep_alive from provider options; a secret as Authorization: Bearer
SELECT jsonb_pretty(llm.adapter_build_embed_request('ollama', ARRAY['first text', 'second "quoted"'],
       '{"dimensions": 256, "input_type": "query"}', 'nomic-embed-text', 'ollama-secret',
       '{"truncate": false, "keep_alive": "10m"}', '{}', 'http://localhost:11434/'));
SELECT llm.adapter_build_embed_request('ollama', ARRAY['x'], '{}', 'all-minilm')->'body';
SELECT llm.adapter_build_embed_request('ollama', ARRAY['x'], '{}', 'all-minilm', NULL, '{}')->'headers';
-- option types are checked
SELECT llm.adapter_build_embed_request('ollama', ARRAY['x'], '{}', 'm', NULL, '{"truncate": "no"}');
\echo :LAST_ERROR_SQLSTATE
SELECT llm.adapter_build_embed_request('ollama', ARRAY['x'], '{}', 'm', NULL, '{"keep_alive": 5}');
\echo :LAST_ERROR_SQLSTATE

-- an /api/embed answer (hand-written from docs/api.md): vectors in order, prompt_eval_count
SELECT llm.adapter_parse_embed_response('ollama', 200,
  '{"model":"all-minilm","embeddings":[[0.010071029,-0.0017594862,0.05007221],[-0.0098027075,0.06042469,0.025257962]],
    "total_duration":14143917,"load_duration":1019500,"prompt_eval_count":8}', 2);
-- no prompt_eval_count: 0 tokens; no model: null
SELECT llm.adapter_parse_embed_response('ollama', 200, '{"embeddings":[[0.5]]}', 1);
SELECT llm.adapter_parse_embed_response('ollama', 200, '{"embeddings":[[0.5,0.5]]}', 1, 3)->'error'->>'sqlstate';
-- malformed answers (LL006)
SELECT llm.adapter_parse_embed_response('ollama', 200, '{"embeddings":[[1]]}', 2)->'error'->>'detail';
SELECT llm.adapter_parse_embed_response('ollama', 200, '{"embeddings":[{"values":[1]}]}', 1)->'error'->>'detail';
SELECT llm.adapter_parse_embed_response('ollama', 200, '{"embeddings":[[1],[1,2]]}', 2)->'error'->>'detail';
SELECT llm.adapter_parse_embed_response('ollama', 200, '{"embeddings":[[null]]}', 1)->'error'->>'detail';
SELECT llm.adapter_parse_embed_response('ollama', 200, '{"embeddings":[[-1e300]]}', 1)->'error'->>'detail';
SELECT llm.adapter_parse_embed_response('ollama', 200, '{"embedding":[1]}', 1)->'error'->>'detail';
SELECT llm.adapter_parse_embed_response('ollama', 200, '"x"', 1)->'error'->>'detail';
-- {"error": "..."} with a 200 is in-band; a 404 (model not pulled) is fatal with a hint
SELECT llm.adapter_parse_embed_response('ollama', 200, '{"error":"failed to load model"}', 1);
SELECT llm.adapter_parse_embed_response('ollama', 404,
  '{"error":"model \"nomic-embed-text\" not found, try pulling it first"}', 1);
SELECT llm.adapter_parse_embed_response('ollama', 400,
  '{"error":"the input length exceeds the context length"}', 1)->'error'->>'message';

-- both kinds now have embeddings, so a "dimensions" route may target them
SELECT llm._kind_has_embeddings('gemini'), llm._kind_has_embeddings('ollama');

--
-- vertex: :predict on the model URL, the worker's access token as Bearer
--
SELECT jsonb_pretty(llm.adapter_build_embed_request('vertex', ARRAY['first', 'second'],
  '{"input_type": "query", "dimensions": 8}', 'text-embedding-005', 'ya29.token',
  '{"region": "us-central1", "project": "proj-1"}', '{}', 'https://us-central1-aiplatform.googleapis.com'));
-- no region: refused before anything is sent
SELECT llm.adapter_build_embed_request('vertex', ARRAY['x'], '{}', 'text-embedding-005', 'ya29.token',
  '{"project": "proj-1"}')->'error'->>'message';
-- the answer: vectors in order, token counts summed; without statistics the
-- worker estimates the tokens (-1 here)
SELECT llm.adapter_parse_embed_response('vertex', 200,
  '{"predictions": [{"embeddings": {"values": [0.5, -0.25], "statistics": {"token_count": 3, "truncated": false}}},
                    {"embeddings": {"values": [1, 2], "statistics": {"token_count": 4}}}]}', 2);
SELECT llm.adapter_parse_embed_response('vertex', 200,
  '{"predictions": [{"embeddings": {"values": [0.5, -0.25]}}]}', 1)->'input_tokens';
-- malformed: a missing prediction, no values, an error inside a 200
SELECT llm.adapter_parse_embed_response('vertex', 200, '{"predictions": [{"embeddings": {"values": [1]}}]}', 2)->'error'->>'detail';
SELECT llm.adapter_parse_embed_response('vertex', 200, '{"predictions": [{"embeddings": {}}]}', 1)->'error'->>'detail';
SELECT llm.adapter_parse_embed_response('vertex', 200, '{"error": {"code": 503, "message": "busy", "status": "UNAVAILABLE"}}', 1)->'error';
SELECT llm._kind_has_embeddings('vertex');

--
-- embed_bedrock: the bedrock kind's embeddings (InvokeModel, Titan text v2
-- and Cohere embed) driven directly with no network.  Answers are written
-- inline from the documented shapes (Titan: embedding,
-- inputTextTokenCount; Cohere: embeddings as a list or by type), not
-- recorded.  The signature depends on the clock: here only its shape; the
-- mock verifies it end to end (test/t/034_embed_bedrock.pl).
--
\pset format unaligned
\set cred '{"access_key_id": "AKIDEXAMPLE", "secret_access_key": "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY"}'
\set base 'https://bedrock-runtime.us-east-1.amazonaws.com'

SELECT llm._kind_has_embeddings('bedrock');

-- Titan v2: POST /model/{id}/invoke (":" encoded), one inputText,
-- dimensions when asked, normalize; signed like Converse
SELECT r->>'url' AS url,
       jsonb_pretty((r->'headers') - 'authorization'::text - 'x-amz-date'::text) AS headers,
       r->'headers'->>'authorization' ~ '^AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/[0-9]{8}/us-east-1/bedrock/aws4_request, SignedHeaders=content-type;host;x-amz-date, Signature=[0-9a-f]{64}$' AS authz_ok,
       position('wJalr' IN r::text) = 0 AS no_secret,
       r->'body' AS body
  FROM llm.adapter_build_embed_request('bedrock', ARRAY['hello "world"'], '{"dimensions": 256, "input_type": "query"}',
       'amazon.titan-embed-text-v2:0', :'cred', '{}', '{}', :'base') AS r;
-- no dimensions: none sent
SELECT llm.adapter_build_embed_request('bedrock', ARRAY['x'], '{}', 'amazon.titan-embed-text-v2:0',
       :'cred', '{}', '{}', :'base')->'body';
-- Titan takes one input per request: more is refused before signing
SELECT llm.adapter_build_embed_request('bedrock', ARRAY['a', 'b'], '{}', 'amazon.titan-embed-text-v2:0',
       :'cred', '{}', '{}', :'base');
\echo :LAST_ERROR_SQLSTATE

-- Cohere: every text, input_type mapped (query -> search_query,
-- document and none -> search_document), float embeddings, a session token signed
SELECT r->>'url' AS url,
       r->'headers'->>'authorization' ~ 'SignedHeaders=content-type;host;x-amz-date;x-amz-security-token, ' AS token_signed,
       r->'headers'->>'x-amz-security-token' AS token,
       r->'body' AS body
  FROM llm.adapter_build_embed_request('bedrock', ARRAY['first', 'second'], '{"input_type": "query"}',
       'cohere.embed-english-v3',
       '{"access_key_id": "AKIDEXAMPLE", "secret_access_key": "s3cr3t", "session_token": "TOKEN123"}',
       '{}', '{}', :'base') AS r;
SELECT llm.adapter_build_embed_request('bedrock', ARRAY['a'], '{"input_type": "document"}', 'cohere.embed-multilingual-v3',
       :'cred', '{}', '{}', :'base')->'body'->>'input_type' AS document,
       llm.adapter_build_embed_request('bedrock', ARRAY['a'], '{}', 'cohere.embed-multilingual-v3',
       :'cred', '{}', '{}', :'base')->'body'->>'input_type' AS absent,
       llm.adapter_build_embed_request('bedrock', ARRAY['a'], '{"dimensions": 512}', 'cohere.embed-v4:0',
       :'cred', '{}', '{}', :'base')->'body'->'output_dimension' AS v4_dimension;
-- inference-profile prefixes and ARNs are recognised by their last label
SELECT llm.adapter_build_embed_request('bedrock', ARRAY['a'], '{}', 'us.cohere.embed-v4:0',
       :'cred', '{}', '{}', :'base')->>'url';
SELECT llm.adapter_build_embed_request('bedrock', ARRAY['a'], '{}',
       'arn:aws:bedrock:us-east-1::foundation-model/amazon.titan-embed-text-v2:0',
       :'cred', '{}', '{}', :'base')->>'url';
-- other models: a clear error naming the supported families
SELECT llm.adapter_build_embed_request('bedrock', ARRAY['a'], '{}', 'amazon.titan-embed-text-v1',
       :'cred', '{}', '{}', :'base');
\echo :LAST_ERROR_SQLSTATE
SELECT llm.adapter_build_embed_request('bedrock', ARRAY['a'], '{}', 'anthropic.claude-3-haiku',
       :'cred', '{}', '{}', :'base');
\echo :LAST_ERROR_SQLSTATE
-- credential and region problems are Converse's
SELECT llm.adapter_build_embed_request('bedrock', ARRAY['a'], '{}', 'cohere.embed-english-v3', 'not json',
       '{}', '{}', :'base');
\echo :LAST_ERROR_SQLSTATE
SELECT llm.adapter_build_embed_request('bedrock', ARRAY['a'], '{}', 'cohere.embed-english-v3', :'cred',
       '{}', '{}', 'http://localhost:9');
\echo :LAST_ERROR_SQLSTATE

--
-- Answers
--
-- Titan: one vector, inputTextTokenCount
SELECT llm.adapter_parse_embed_response('bedrock', 200,
  '{"embedding":[0.0123,-0.5,1e-7],"embeddingsByType":{"float":[0.0123,-0.5,1e-7]},"inputTextTokenCount":4}', 1);
-- Cohere: a list of vectors in input order; no token count in the body
SELECT llm.adapter_parse_embed_response('bedrock', 200,
  '{"id":"e-1","embeddings":[[0.25,0.5],[-1,2]],"texts":["a","b"],"response_type":"embeddings_floats"}', 2);
-- Cohere with embedding_types: by type
SELECT llm.adapter_parse_embed_response('bedrock', 200,
  '{"id":"e-2","embeddings":{"float":[[0.5,0.25]]},"texts":["a"],"response_type":"embeddings_by_type"}', 1);
-- the size asked for is checked (LL016)
SELECT llm.adapter_parse_embed_response('bedrock', 200, '{"embedding":[1,2],"inputTextTokenCount":1}', 1, 3);
-- malformed answers (LL006)
SELECT llm.adapter_parse_embed_response('bedrock', 200, '{"embedding":[1]}', 2)->'error'->>'detail';
SELECT llm.adapter_parse_embed_response('bedrock', 200, '{"embedding":"AAAA"}', 1)->'error'->>'detail';
SELECT llm.adapter_parse_embed_response('bedrock', 200, '{"embedding":[]}', 1)->'error'->>'detail';
SELECT llm.adapter_parse_embed_response('bedrock', 200, '{"embeddings":[[1,2]]}', 2)->'error'->>'detail';
SELECT llm.adapter_parse_embed_response('bedrock', 200, '{"embeddings":[[1,2],[3]]}', 2)->'error'->>'detail';
SELECT llm.adapter_parse_embed_response('bedrock', 200, '{"embeddings":[[1,"x"]]}', 1)->'error'->>'detail';
SELECT llm.adapter_parse_embed_response('bedrock', 200, '{"embeddings":[1,2]}', 2)->'error'->>'detail';
SELECT llm.adapter_parse_embed_response('bedrock', 200, '{"embeddings":{"int8":[[1,2]]}}', 1)->'error'->>'detail';
SELECT llm.adapter_parse_embed_response('bedrock', 200, '{"embeddings":[[1e39]]}', 1)->'error'->>'detail';
SELECT llm.adapter_parse_embed_response('bedrock', 200, '{"texts":["a"]}', 1)->'error'->>'detail';
SELECT llm.adapter_parse_embed_response('bedrock', 200, '[1]', 1)->'error'->>'sqlstate';
SELECT llm.adapter_parse_embed_response('bedrock', 200, 'not json', 1)->'error'->>'sqlstate';
-- an exception body inside a 2xx is in-band (LL007, retryable)
SELECT llm.adapter_parse_embed_response('bedrock', 200, '{"message":"Too many tokens"}', 1);
-- errors: Bedrock's exception classes, as for Converse
SELECT llm.adapter_parse_embed_response('bedrock', 400,
  '{"message":"Malformed input request: #: extraneous key [bogus] is not permitted, please reformat your input and try again."}', 1);
SELECT llm.adapter_parse_embed_response('bedrock', 403,
  '{"message":"The request signature we calculated does not match the signature you provided. Check your AWS Secret Access Key and signing method. Consult the service documentation for details."}', 1);

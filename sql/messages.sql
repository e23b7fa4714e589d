--
-- messages: calls through the worker to the mock provider, both protocols.
--
\getenv mock_port MOCK_PORT
SELECT llm.add_provider('mock_anthropic', 'anthropic', 'http://127.0.0.1:' || :'mock_port', 'local');
SELECT llm.set_credential('mock_anthropic', 'test-key-anthropic');
SELECT llm.add_route('claude', 'mock_anthropic', 'claude-mock-1') > 0 AS added;
SELECT llm.add_provider('mock_openai', 'openai', 'http://127.0.0.1:' || :'mock_port' || '/v1', 'local');
SELECT llm.set_credential('mock_openai', 'test-key-openai');
SELECT llm.add_route('gpt', 'mock_openai', 'gpt-mock-1') > 0 AS added;

-- the simplest call, both protocols
SELECT llm_complete('claude', 'Hello there');
SELECT llm_complete('gpt', 'Hello there');

-- the full answer: Messages shape plus the gateway key (volatile fields removed)
SELECT jsonb_pretty(a - 'id' #- '{gateway,latency_ms}' #- '{gateway,request_id}')
  FROM llm_messages('claude', '[{"role": "user", "content": "What is two plus two?"}]') AS a;
SELECT jsonb_pretty(a - 'id' #- '{gateway,latency_ms}' #- '{gateway,request_id}')
  FROM llm_messages('gpt', '[{"role": "user", "content": "What is two plus two?"}]') AS a;

-- request_id is the log row, complete when the call returns
SELECT (a->'gateway'->>'request_id') AS request_id, a->'gateway'->>'provider' AS provider,
       a->'gateway'->>'attempts' AS attempts, (a->'gateway'->>'latency_ms')::float8 > 0 AS has_latency
  FROM llm_messages('claude', '[{"role": "user", "content": "ping"}]') AS a \gset
SELECT status, provider = :'provider' AS same_provider, attempts, http_status,
       input_tokens, output_tokens, stop_reason
  FROM llm.requests WHERE id = :request_id;

-- system prompt, multi-turn history, max_tokens, stop sequences
SELECT llm_complete('claude', 'Summarise this', '{"system": "Be brief."}');
SELECT llm_complete('gpt', 'Summarise this', '{"system": "Be brief."}');
SELECT a->'content'->0->>'text' AS text, a->>'stop_reason' AS stop_reason, a->'usage' AS usage
  FROM llm_messages('claude', '[{"role": "user", "content": "first question"},
                               {"role": "assistant", "content": "first answer"},
                               {"role": "user", "content": "second question here"}]') AS a;
SELECT a->'content'->0->>'text' AS text, a->>'stop_reason' AS stop_reason
  FROM llm_messages('claude', '[{"role": "user", "content": "one two three four five"}]',
                    '{"max_tokens": 3}') AS a;
SELECT a->'content'->0->>'text' AS text, a->>'stop_reason' AS stop_reason
  FROM llm_messages('gpt', '[{"role": "user", "content": "one two three four five"}]',
                    '{"max_tokens": 3}') AS a;
SELECT a->'content'->0->>'text' AS text, a->>'stop_reason' AS stop_reason, a->>'stop_sequence' AS stop_sequence
  FROM llm_messages('claude', '[{"role": "user", "content": "alpha beta gamma"}]',
                    '{"stop_sequences": ["beta"]}') AS a;

-- cache tokens are normalised to the Anthropic fields on both protocols
SELECT a->'usage' AS usage
  FROM llm_messages('claude', '[{"role": "user", "content": "cached [[mock:cache=7]]"}]') AS a;
SELECT a->'usage' AS usage
  FROM llm_messages('gpt', '[{"role": "user", "content": "cached [[mock:cache=7]]"}]') AS a;

-- tool use round trip, both protocols
\set tools '{"tools": [{"name": "lookup", "description": "Look a word up", "input_schema": {"type": "object", "properties": {"query": {"type": "string"}}}}], "tool_choice": {"type": "any"}}'
SELECT a->'content'->0 AS text_block, (a->'content'->1) - 'id' AS tool_use,
       a->'content'->1->>'id' LIKE 'toolu_%' AS has_id, a->>'stop_reason' AS stop_reason
  FROM llm_messages('claude', '[{"role": "user", "content": "define gateway"}]', :'tools') AS a;
SELECT jsonb_path_query(a->'content', '$[*] ? (@.type == "tool_use")') - 'id' AS tool_use,
       a->>'stop_reason' AS stop_reason
  FROM llm_messages('gpt', '[{"role": "user", "content": "define gateway"}]', :'tools') AS a;
SELECT llm_complete('claude', 'unused', '{}') IS NOT NULL AS warm;
SELECT a->'content'->0->>'text' AS text
  FROM llm_messages('claude', '[{"role": "user", "content": "define gateway"},
        {"role": "assistant", "content": [{"type": "tool_use", "id": "toolu_1", "name": "lookup", "input": {"query": "gateway"}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "content": "a way in"}]}]',
        :'tools') AS a;
SELECT a->'content'->0->>'text' AS text
  FROM llm_messages('gpt', '[{"role": "user", "content": "define gateway"},
        {"role": "assistant", "content": [{"type": "tool_use", "id": "call_1", "name": "lookup", "input": {"query": "gateway"}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "call_1", "content": "a way in"}]}]',
        :'tools') AS a;

-- what the providers received: auth headers, version, translated bodies
SELECT llm_complete('claude', 'inspect me', '{"max_tokens": 50, "temperature": 0.5}');
\set recv `python3 test/mock/mockctl.py last 1`
SELECT r->'headers'->>'x-api-key' AS x_api_key, r->'headers'->>'anthropic-version' AS version,
       r->>'path' AS path, r->'body' AS body
  FROM jsonb_array_elements(:'recv'::jsonb) AS r;
SELECT llm_complete('gpt', 'inspect me', '{"max_tokens": 50, "system": "Be terse.", "stop_sequences": ["END"]}');
\set recv `python3 test/mock/mockctl.py last 1`
SELECT r->'headers'->>'authorization' AS authorization, r->>'path' AS path, r->'body' AS body
  FROM jsonb_array_elements(:'recv'::jsonb) AS r;

-- unknown alias: 42704, logged, nothing sent
SELECT expect_error($q$SELECT llm_complete('no-such-alias', 'hi')$q$);
SELECT status, error_code, error, provider FROM llm.requests WHERE alias = 'no-such-alias';

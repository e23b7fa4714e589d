--
-- structured_output: the canonical output_config option, its translation
-- per provider kind, the forced-tool helper, the schema validator, and
-- llm_extract through the worker and the mock (docs/design.md §24).
--
\getenv mock_port MOCK_PORT
SELECT llm.add_provider('so_anthropic', 'anthropic', 'http://127.0.0.1:' || :'mock_port', 'local');
SELECT llm.set_credential('so_anthropic', 'test-key-anthropic');
SELECT llm.add_route('so_claude', 'so_anthropic', 'claude-mock-1') > 0 AS added;
SELECT llm.add_provider('so_openai', 'openai', 'http://127.0.0.1:' || :'mock_port' || '/v1', 'local');
SELECT llm.set_credential('so_openai', 'test-key-openai');
SELECT llm.add_route('so_gpt', 'so_openai', 'gpt-mock-1') > 0 AS added;
SELECT llm.add_provider('so_anthropic_tool', 'anthropic', 'http://127.0.0.1:' || :'mock_port', 'local',
                        '{"structured_output": "tool"}');
SELECT llm.set_credential('so_anthropic_tool', 'test-key-anthropic');
SELECT llm.add_route('so_tool', 'so_anthropic_tool', 'claude-mock-1') > 0 AS added;

--
-- output_config is checked before anything is sent (22023)
--
SELECT expect_error($q$SELECT llm_complete('so_claude', 'x', '{"output_config": "json"}')$q$);
SELECT expect_error($q$SELECT llm_complete('so_claude', 'x', '{"output_config": {"format": []}}')$q$);
SELECT expect_error($q$SELECT llm_complete('so_claude', 'x', '{"output_config": {"format": {"type": "json_object"}}}')$q$);
SELECT expect_error($q$SELECT llm_complete('so_claude', 'x', '{"output_config": {"format": {"schema": {}}}}')$q$);
SELECT expect_error($q$SELECT llm_complete('so_claude', 'x', '{"output_config": {"format": {"type": "json_schema"}}}')$q$);
SELECT expect_error($q$SELECT llm_complete('so_claude', 'x', '{"output_config": {"format": {"type": "json_schema", "schema": [1]}}}')$q$);

--
-- Requests per kind (no network)
--
\pset format unaligned
\set req '{"messages": [{"role": "user", "content": "Ann is 5"}], "max_tokens": 100, "output_config": {"format": {"type": "json_schema", "schema": {"type": "object", "properties": {"name": {"type": "string"}, "age": {"type": "integer"}}, "required": ["name", "age"], "additionalProperties": false}}}}'
-- anthropic: output_config is the GA Messages field, sent as it is (no beta header)
SELECT jsonb_pretty(llm.adapter_build_request('anthropic', :'req', 'claude-x', 'sk-dummy'));
-- openai: response_format json_schema, strict (every object closed, every property required)
SELECT jsonb_pretty(llm.adapter_build_request('openai', :'req', 'gpt-x', 'sk-dummy')->'body');
-- azure_openai: the same
SELECT jsonb_pretty(llm.adapter_build_request('azure_openai', :'req', 'dep-x', 'sk-dummy')->'body'->'response_format');
-- a schema strict mode does not accept (an optional property, an open nested object) goes with strict false
SELECT jsonb_pretty(llm.adapter_build_request('openai',
  '{"messages": [{"role": "user", "content": "x"}], "output_config": {"format": {"type": "json_schema", "schema": {"type": "object", "properties": {"name": {"type": "string"}, "age": {"type": "integer"}}, "required": ["name"], "additionalProperties": false}}}}',
  'gpt-x')->'body'->'response_format');
SELECT llm.adapter_build_request('openai',
  '{"messages": [{"role": "user", "content": "x"}], "output_config": {"format": {"type": "json_schema", "schema": {"type": "object", "properties": {"a": {"type": "object", "properties": {"b": {"type": "string"}}, "required": ["b"]}}, "required": ["a"], "additionalProperties": false}}}}',
  'gpt-x')->'body'->'response_format'->'json_schema'->'strict' AS nested_open_object_strict;
-- anthropic with structured_output "tool": the schema as a forced tool after the caller's tools
SELECT jsonb_pretty(llm.adapter_build_request('anthropic',
  '{"messages": [{"role": "user", "content": "Ann is 5"}], "tools": [{"name": "lookup", "input_schema": {"type": "object"}}], "tool_choice": {"type": "auto"}, "output_config": {"format": {"type": "json_schema", "schema": {"type": "object", "properties": {"name": {"type": "string"}}}}}}',
  'claude-x', 'sk-dummy', '{"structured_output": "tool"}')->'body');
-- without output_config the option changes nothing
SELECT llm.adapter_build_request('anthropic', '{"messages": [{"role": "user", "content": "x"}]}',
  'claude-x', 'sk-dummy', '{"structured_output": "tool"}')->'body' AS body;
\pset format aligned
-- what the forced tool cannot express
SELECT expect_error($q$SELECT llm.adapter_build_request('anthropic',
  '{"messages": [{"role": "user", "content": "x"}], "output_config": {"format": {"type": "json_schema", "schema": {"type": "array"}}}}',
  'claude-x', 'sk-dummy', '{"structured_output": "tool"}')$q$);
SELECT expect_error($q$SELECT llm.adapter_build_request('anthropic',
  '{"messages": [{"role": "user", "content": "x"}], "tools": [{"name": "json_output", "input_schema": {"type": "object"}}], "output_config": {"format": {"type": "json_schema", "schema": {"type": "object"}}}}',
  'claude-x', 'sk-dummy', '{"structured_output": "tool"}')$q$);
SELECT expect_error($q$SELECT llm.adapter_build_request('anthropic', '{"messages": [{"role": "user", "content": "x"}]}',
  'claude-x', 'sk-dummy', '{"structured_output": "forced"}')$q$);

--
-- The validator: NULL when the answer follows the schema, else the first violation
--
CREATE TEMP TABLE so_cases (n int, schema jsonb, answer text);
INSERT INTO so_cases VALUES
  (1, '{"type": "integer"}', '5'),
  (2, '{"type": "integer"}', '5.0'),
  (3, '{"type": "integer"}', '5.5'),
  (4, '{"type": "number"}', '5'),
  (5, '{"type": "string"}', '5'),
  (6, '{"type": ["string", "null"]}', 'null'),
  (7, '{"type": ["string", "null"]}', 'true'),
  (8, '{"type": "boolean"}', '"true"'),
  (9, '{"type": "object", "required": ["a", "b"]}', '{"a": 1}'),
  (10, '{"type": "object", "properties": {"a": {"type": "string"}}, "additionalProperties": false}', '{"a": "x", "b": 1}'),
  (11, '{"type": "object", "properties": {"a": {"type": "string"}}, "additionalProperties": {"type": "integer"}}', '{"a": "x", "b": "y"}'),
  (12, '{"enum": ["red", "green", 3]}', '"blue"'),
  (13, '{"enum": ["red", "green", 3]}', '3.0'),
  (14, '{"const": {"k": [1, 2]}}', '{"k": [1, 2]}'),
  (15, '{"const": {"k": [1, 2]}}', '{"k": [2, 1]}'),
  (16, '{"type": "array", "items": {"type": "integer"}, "minItems": 2}', '[1]'),
  (17, '{"type": "array", "items": {"type": "integer"}, "maxItems": 2}', '[1, 2, 3]'),
  (18, '{"type": "array", "items": {"type": "integer"}}', '[1, 2, "3"]'),
  (19, '{"type": "object", "properties": {"items": {"type": "array", "items": {"type": "object", "properties": {"qty": {"type": "integer"}}, "required": ["qty"]}}}}',
       '{"items": [{"qty": 1}, {"qty": 2}, {"qty": 1.5}]}'),
  (20, '{"type": "object", "properties": {"odd key": {"type": "string"}}}', '{"odd key": 1}'),
  (21, '{"type": "object", "pattern": "^x", "minimum": 3, "anyOf": [{"type": "string"}]}', '{"x": 1}'),
  (22, '{"type": "object"}', 'not json'),
  (23, '{"type": "object"}', ''),
  (24, '{"type": "object"}', '{"a": 1} trailing'),
  (25, '{}', '"anything"'),
  (26, '{"type": "object", "required": ["a"]}', E'```json\n{"a": 1}\n```'),
  (27, '{"type": "object", "required": ["a"]}', E' \n```\n{"b": 1}\n```\n'),
  (28, '{"const": "x"}', '"' || repeat('é', 40) || '"');
SELECT n, llm.json_schema_violation(schema, answer) AS violation FROM so_cases ORDER BY n;
-- hostile answers: 10,000 levels deep is a violation, not a crash
SELECT llm.json_schema_violation('{"type": "array"}', repeat('[', 10000) || repeat(']', 10000)) AS deep_answer;
SELECT llm.json_schema_violation('{"type": "object"}', repeat('{"a":', 10000) || '1' || repeat('}', 10000)) AS deep_answer;
-- 128 levels still parse (the limit); the schema walks only as deep as it goes
SELECT llm.json_schema_violation('{"type": "array", "items": {"type": "array"}}', repeat('[', 128) || repeat(']', 128)) AS at_limit;
-- hostile schemas: deeper than 64 levels is refused, however deep
SELECT expect_error($q$SELECT llm.json_schema_violation((repeat('{"items":', 65) || '{}' || repeat('}', 65))::jsonb, '[]')$q$);
SELECT expect_error($q$SELECT llm.json_schema_violation((repeat('{"items":', 10000) || '{}' || repeat('}', 10000))::jsonb, '[]')$q$) ~ '^(22023|54001)' AS deep_schema_refused;
SELECT llm.json_schema_violation((repeat('{"items":', 63) || '{"type": "string"}' || repeat('}', 63))::jsonb,
                                 repeat('[', 63) || '1' || repeat(']', 63)) AS deep_schema_checked;
SELECT expect_error($q$SELECT llm.json_schema_violation('[]', '1')$q$);

--
-- llm_extract through the worker
--
\set person '{"type": "object", "properties": {"name": {"type": "string"}, "age": {"type": "integer"}, "tags": {"type": "array", "items": {"enum": ["a", "b"]}}}, "required": ["name", "age"], "additionalProperties": false}'
SELECT llm_extract('so_claude', 'Ann is 5', :'person') AS anthropic;
\set recv `python3 test/mock/mockctl.py last 1`
SELECT (:'recv'::jsonb)->0->'body'->'output_config' AS anthropic_sent;
SELECT llm_extract('so_gpt', 'Ann is 5', :'person') AS openai;
\set recv `python3 test/mock/mockctl.py last 1`
SELECT (:'recv'::jsonb)->0->'body'->'response_format' AS openai_sent;
-- through the forced tool: the mock calls the tool with {"query": <prompt>}
SELECT llm_extract('so_tool', 'Ann is 5', '{"type": "object", "properties": {"query": {"type": "string"}}, "required": ["query"]}') AS forced_tool;
\set recv `python3 test/mock/mockctl.py last 1`
SELECT (:'recv'::jsonb)->0->'body'->'tool_choice' AS tool_choice, (:'recv'::jsonb)->0->'body' ? 'output_config' AS sent_output_config;
SELECT m->'content' AS content, m->>'stop_reason' AS stop_reason
  FROM llm_messages('so_tool', '[{"role": "user", "content": "Bo"}]',
                    '{"output_config": {"format": {"type": "json_schema", "schema": {"type": "object"}}}}') AS m;

-- a non-conforming first answer is asked again once, with the violation as feedback
SELECT llm_extract('so_claude', 'Cy is 7 [[mock:bad_json_first=1,key=so_retry]]', :'person',
                   '{"tags": {"so": "retry"}}') AS retried;
SELECT count(*) AS calls, count(*) FILTER (WHERE status = 'ok') AS ok FROM llm.requests WHERE tags->>'so' = 'retry';
\set recv `python3 test/mock/mockctl.py last 1`
SELECT jsonb_pretty((:'recv'::jsonb)->0->'body'->'messages') AS second_request;
-- two bad answers: LL015 naming the first violation
SELECT expect_error($q$SELECT llm_extract('so_gpt', 'Di is 9 [[mock:bad_json_first=2,key=so_twice]]', '{"type": "object", "properties": {"name": {"type": "string"}, "age": {"type": "integer"}}, "required": ["name", "age"], "additionalProperties": false}', '{"tags": {"so": "twice"}}')$q$);
SELECT count(*) AS calls FROM llm.requests WHERE tags->>'so' = 'twice';
-- on_error "null": NULL instead of LL015, and for a failed call
SELECT llm_extract('so_claude', 'Ed [[mock:bad_json]]', :'person', '{"on_error": "null"}') IS NULL AS mismatch_null;
SELECT llm_extract('so_claude', 'Ed [[mock:status=429]]', :'person', '{"on_error": "null"}') IS NULL AS failure_null;
SELECT expect_error($q$SELECT llm_extract('so_claude', 'Ed [[mock:status=400]]', '{"type": "object"}')$q$);
-- the retry has what is left of the call's deadline: the first answer takes
-- 300 of 450 ms, so the second (300 ms again) times out (LL009) where a
-- fresh deadline would have let it answer
SELECT expect_error($q$SELECT llm_extract('so_claude', 'Fy [[mock:bad_json_first=1,key=so_deadline,latency=300]]', '{"type": "object", "required": ["name"], "properties": {"name": {"type": "string"}}}', '{"timeout_ms": 450, "tags": {"so": "deadline"}}')$q$) ~ '^LL009' AS retry_timed_out;
SELECT wait_until($w$SELECT count(*) = 2 FROM llm.requests WHERE tags->>'so' = 'deadline' AND status <> 'pending'$w$) AS logged;
SELECT status, error_code FROM llm.requests WHERE tags->>'so' = 'deadline' ORDER BY id;

-- pipelined: one statement over many rows, retries included
CREATE TEMP TABLE so_rows (n int, prompt text);
INSERT INTO so_rows SELECT i, 'row ' || i || CASE WHEN i % 3 = 0 THEN ' [[mock:bad_json_first=1,key=so_row' || i || ']]' ELSE '' END
  FROM generate_series(1, 9) i;
SELECT n, llm_extract('so_gpt', prompt, '{"type": "object", "properties": {"name": {"type": "string"}}, "required": ["name"]}',
                      '{"tags": {"so": "rows"}}') AS answer
  FROM so_rows ORDER BY n;
SELECT count(*) AS calls FROM llm.requests WHERE tags->>'so' = 'rows';
EXPLAIN (COSTS OFF) SELECT llm_extract('so_gpt', prompt, '{"type": "object"}') FROM so_rows;

-- arguments
SELECT expect_error($q$SELECT llm_extract('so_claude', 'x', NULL)$q$);
SELECT expect_error($q$SELECT llm_extract('so_claude', 'x', '"string"')$q$);
SELECT expect_error($q$SELECT llm_extract('so_claude', 'x', '{}', '{"output_config": {}}')$q$);
SELECT expect_error($q$SELECT llm_extract('so_claude', NULL, '{}')$q$);

--
-- adapter_ollama: the ollama adapter (native POST /api/chat), and the
-- openai adapter's handling of the empty placeholders OpenAI-compatible
-- servers send.  No network: llm.adapter_build_request() shows the request,
-- llm.adapter_parse_response() reads an answer.
--
-- Recorded answers are in test/fixtures/ollama (sources in
-- test/fixtures/README.md).  Bodies written inline here are NOT recordings:
-- they are written from the documented shapes (Ollama docs/api.md,
-- ../shared/reference/provider_protocols.md section 7, and section 1 for
-- OpenAI), and say so.
--
\pset format unaligned

--
-- Requests
--
-- text, system, options, no auth header when there is no secret
SELECT jsonb_pretty(llm.adapter_build_request('ollama',
       '{"system": "Be brief.", "messages": [{"role": "user", "content": "Hi"}],
         "max_tokens": 50, "temperature": 0.2, "top_p": 0.9, "top_k": 40,
         "stop_sequences": ["END"], "metadata": {"user_id": "u1"}}',
       'llama3.2', NULL, '{}', '{}', 'http://localhost:11434/'));

-- a secret goes as a bearer token (redacted here); provider options keep_alive, num_ctx
SELECT jsonb_pretty(llm.adapter_build_request('ollama',
       '{"messages": [{"role": "user", "content": "Hi"}]}',
       'llama3.2', 'proxy-token-0123456789', '{"keep_alive": "10m", "num_ctx": 8192}'));

-- a tool round trip: tools, image, assistant tool call (arguments an
-- object), tool result with the tool's name, thinking sent back
SELECT jsonb_pretty(llm.adapter_build_request('ollama',
       '{"messages": [
          {"role": "user", "content": [{"type": "text", "text": "Weather here?"},
             {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}}]},
          {"role": "assistant", "content": [{"type": "thinking", "thinking": "Use the tool.", "signature": "s"},
             {"type": "text", "text": "Checking."},
             {"type": "tool_use", "id": "call_1", "name": "get_weather", "input": {"city": "Paris"}}]},
          {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "call_1", "content": "22 C"},
             {"type": "text", "text": "And tomorrow?"}]}],
         "tools": [{"name": "get_weather", "description": "Weather by city",
                    "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}}}],
         "tool_choice": {"type": "auto"}, "thinking": {"type": "enabled", "budget_tokens": 1024}}',
       'qwen3'));

-- tool_choice none leaves the tools out; an error result reads "Error: ..."
SELECT r->'body'->'tools' AS tools, r->'body'->'messages'->1 AS tool_message
  FROM llm.adapter_build_request('ollama',
       '{"messages": [{"role": "assistant", "content": [{"type": "tool_use", "id": "c9", "name": "f", "input": {}}]},
                      {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "c9", "content": "boom", "is_error": true}]}],
         "tools": [{"name": "f", "input_schema": {"type": "object"}}], "tool_choice": {"type": "none"}}',
       'm') AS r;

-- structured output: the canonical json_schema goes as Ollama's format
SELECT r->'body'->'format' AS format, r->'body'->'think' AS think
  FROM llm.adapter_build_request('ollama',
       '{"messages": [{"role": "user", "content": "Name a city"}],
         "output_config": {"format": {"type": "json_schema", "schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}},
         "thinking": {"type": "disabled"}}',
       'm') AS r;

-- route options cap num_predict
SELECT r->'body'->'options' AS options
  FROM llm.adapter_build_request('ollama', '{"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 5000}',
       'm', NULL, '{}', '{"max_tokens": 256}') AS r;

-- what Ollama cannot carry fails before anything is sent
SELECT llm.adapter_build_request('ollama',
       '{"messages": [{"role": "user", "content": "Hi"}], "tools": [{"name": "f"}], "tool_choice": {"type": "any"}}', 'm');
\echo :LAST_ERROR_SQLSTATE
SELECT llm.adapter_build_request('ollama',
       '{"messages": [{"role": "user", "content": [{"type": "image", "source": {"type": "url", "url": "https://x/y.png"}}]}]}', 'm');
\echo :LAST_ERROR_SQLSTATE
SELECT llm.adapter_build_request('ollama',
       '{"messages": [{"role": "user", "content": [{"type": "document", "source": {"type": "base64", "media_type": "application/pdf", "data": "JVBERi0="}}]}]}', 'm');
\echo :LAST_ERROR_SQLSTATE
SELECT llm.adapter_build_request('ollama',
       '{"messages": [{"role": "user", "content": "Hi"}], "output_config": {"format": {"type": "json_object"}}}', 'm');
\echo :LAST_ERROR_SQLSTATE
SELECT llm.adapter_build_request('ollama', '{"messages": []}', 'm', NULL, '{"num_ctx": "big"}');
\echo :LAST_ERROR_SQLSTATE
SELECT llm.adapter_build_request('ollama', '{"messages": []}', 'm', NULL, '{"headers": {"Authorization": "x"}}');
\echo :LAST_ERROR_SQLSTATE

--
-- Answers
--
-- recorded: thinking and a tool call without id or done_reason (arguments an object)
\set fx `cat test/fixtures/ollama/tool_call_thinking.json`
SELECT jsonb_pretty(llm.adapter_parse_response('ollama', 200, :'fx'));
-- the synthesised id is stable: the same answer gives the same id
SELECT llm.adapter_parse_response('ollama', 200, :'fx')->'content'->1->>'id' =
       llm.adapter_parse_response('ollama', 200, :'fx')->'content'->1->>'id' AS stable_id;

-- written from the documented shape: a plain answer with done_reason stop
SELECT jsonb_pretty(llm.adapter_parse_response('ollama', 200,
       '{"model": "llama3.2", "created_at": "2024-07-22T20:33:28.123648Z",
         "message": {"role": "assistant", "content": "Hello! How can I help?"},
         "done": true, "done_reason": "stop", "total_duration": 4883583458,
         "load_duration": 1334875, "prompt_eval_count": 26, "prompt_eval_duration": 342546000,
         "eval_count": 282, "eval_duration": 4535599000}'));

-- documented shapes: length -> max_tokens; a tool call keeps its id when the
-- server sends one; arguments sent as a JSON string are read; load -> end_turn
SELECT r->>'stop_reason' AS stop, r->'usage' AS usage
  FROM llm.adapter_parse_response('ollama', 200,
       '{"model": "m", "message": {"role": "assistant", "content": "one two"}, "done": true,
         "done_reason": "length", "prompt_eval_count": 3, "eval_count": 2}') AS r;
SELECT r->>'stop_reason' AS stop, r->'content' AS content
  FROM llm.adapter_parse_response('ollama', 200,
       '{"model": "m", "message": {"role": "assistant", "content": "",
         "tool_calls": [{"id": "call_abc", "function": {"index": 0, "name": "f", "arguments": "{\"x\": 1}"}},
                        {"function": {"name": "", "arguments": {}}}]},
         "done": true, "done_reason": "stop"}') AS r;
SELECT r->>'stop_reason' AS stop, r->'content' AS content
  FROM llm.adapter_parse_response('ollama', 200,
       '{"model": "m", "message": {"role": "assistant", "content": ""}, "done": true, "done_reason": "load"}') AS r;

-- errors (documented shape {"error": "..."}): 404 model missing is fatal with a hint
SELECT jsonb_pretty(llm.adapter_parse_response('ollama', 404,
       '{"error": "model \"llama9\" not found, try pulling it first"}'));
SELECT llm.adapter_parse_response('ollama', 400, '{"error": "invalid options: foo"}');
SELECT llm.adapter_parse_response('ollama', 502, '{"error": "upstream error"}');
-- an error line inside a 200 (mid-stream failure): retryable in-band error
SELECT llm.adapter_parse_response('ollama', 200, '{"error": "an error was encountered while running the model"}');
-- malformed answers
SELECT llm.adapter_parse_response('ollama', 200, '{"model": "m", "done": true}');
SELECT llm.adapter_parse_response('ollama', 200, '[1]');

--
-- OpenAI-compatible placeholders (bodies written from the documented Chat
-- Completions shape with the empty members such servers send; not recordings)
--
-- "function_call": {"name": "", "arguments": ""}, "refusal": "",
-- "finish_reason": "", "tool_calls": []: a plain text answer
SELECT jsonb_pretty(llm.adapter_parse_response('openai', 200,
       '{"id": "chatcmpl-1", "object": "chat.completion", "model": "local",
         "choices": [{"index": 0, "finish_reason": "",
                      "message": {"role": "assistant", "content": "Hello.", "refusal": "",
                                  "function_call": {"name": "", "arguments": ""}, "tool_calls": []}}],
         "usage": {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7}}'));
-- a real tool call next to the placeholders and empty content: one tool_use
-- block; an empty id is replaced; a placeholder call in the list is skipped
SELECT r->>'stop_reason' AS stop, r->'content' AS content
  FROM llm.adapter_parse_response('openai', 200,
       '{"id": "chatcmpl-2", "model": "local",
         "choices": [{"index": 0, "finish_reason": "",
                      "message": {"role": "assistant", "content": "", "refusal": "",
                                  "function_call": {"name": "", "arguments": ""},
                                  "tool_calls": [{"id": "", "type": "function", "function": {"name": "f", "arguments": "{\"a\":1}"}},
                                                 {"id": "", "type": "function", "function": {"name": "", "arguments": ""}}]}}]}') AS r;
-- a real legacy function_call still becomes a tool_use block
SELECT r->>'stop_reason' AS stop, r->'content' AS content
  FROM llm.adapter_parse_response('openai', 200,
       '{"id": "chatcmpl-3", "model": "local",
         "choices": [{"index": 0, "finish_reason": "function_call",
                      "message": {"role": "assistant", "content": null,
                                  "function_call": {"name": "g", "arguments": "{}"}}}]}') AS r;

--
-- Through the worker, against the mock's Ollama endpoint (no key: nothing
-- to store with llm.set_credential)
--
\getenv mock_port MOCK_PORT
SELECT 'http://127.0.0.1:' || :'mock_port' AS url \gset
-- later files print route ids: this section leaves the id sequence as it found it
SELECT last_value AS seq_last, is_called AS seq_called FROM llm.routes_id_seq \gset
SELECT llm.add_provider('o_local', 'ollama', :'url');
SELECT llm.add_route('o', 'o_local', 'llama3.2') > 0 AS added;
SELECT llm_complete('o', 'Hello there', '{"max_tokens": 20}');
-- a tool call comes back as tool_use with a synthesised id, then the result goes back
SELECT a->>'stop_reason' AS stop, a->'content'->0->>'type' AS type, a->'content'->0->>'name' AS name,
       a->'content'->0->'input' AS input, a->'content'->0->>'id' LIKE 'call_%' AS has_id
  FROM llm_messages('o', '[{"role": "user", "content": "find cats [[mock:tool]]"}]',
                    '{"tools": [{"name": "search", "input_schema": {"type": "object"}}]}') AS a;
SELECT a->'content'->0->>'text' AS text
  FROM llm_messages('o', '[{"role": "user", "content": "find cats"},
       {"role": "assistant", "content": [{"type": "tool_use", "id": "call_x", "name": "search", "input": {"query": "cats"}}]},
       {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "call_x", "content": "3 cats"}]}]',
       '{"tools": [{"name": "search", "input_schema": {"type": "object"}}]}') AS a;
SELECT status, provider, input_tokens > 0 AS counted, stop_reason, error_code
  FROM llm.requests WHERE alias = 'o' ORDER BY id;
SELECT llm.drop_route('o');
SELECT llm.drop_provider('o_local');
SELECT setval('llm.routes_id_seq', :seq_last, :'seq_called') > 0 AS restored;

--
-- validation: every user mistake is caught before anything is sent,
-- with a SQLSTATE, a message naming the field, and a hint.
--
SELECT llm.add_provider('val_mock', 'anthropic', 'http://127.0.0.1:9');
SELECT llm.add_route('val', 'val_mock', 'm');

-- history
SELECT expect_error($q$SELECT llm_messages('val', NULL)$q$);
SELECT expect_error($q$SELECT llm_messages(NULL, '[]')$q$);
SELECT expect_error($q$SELECT llm_messages('val', '{"role": "user"}')$q$);
SELECT expect_error($q$SELECT llm_messages('val', '[]')$q$);
SELECT expect_error($q$SELECT llm_messages('val', '["hello"]')$q$);
SELECT expect_error($q$SELECT llm_messages('val', '[{"role": "system", "content": "x"}]')$q$);
SELECT expect_error($q$SELECT llm_messages('val', '[{"role": 1, "content": "x"}]')$q$);
SELECT expect_error($q$SELECT llm_messages('val', '[{"role": "user"}]')$q$);
SELECT expect_error($q$SELECT llm_messages('val', '[{"role": "user", "content": 42}]')$q$);
SELECT expect_error($q$SELECT llm_messages('val', '[{"role": "user", "content": []}]')$q$);
SELECT expect_error($q$SELECT llm_messages('val', '[{"role": "user", "content": ""}, {"role": "assistant", "content": "x"}]')$q$);
SELECT expect_error($q$SELECT llm_messages('val', '[{"role": "user", "content": [{"text": "no type"}]}]')$q$);
SELECT expect_error($q$SELECT llm_messages('val', '[{"role": "user", "content": [{"type": "text"}]}]')$q$);
SELECT expect_error($q$SELECT llm_messages('val', '[{"role": "user", "content": [{"type": "video", "url": "x"}]}]')$q$);
SELECT expect_error($q$SELECT llm_messages('val', '[{"role": "user", "content": [{"type": "image", "source": {"type": "base64"}}]}]')$q$);
SELECT expect_error($q$SELECT llm_messages('val', '[{"role": "user", "content": [{"type": "tool_use", "id": "t", "name": "f", "input": {}}]}]')$q$);
SELECT expect_error($q$SELECT llm_messages('val', '[{"role": "assistant", "content": [{"type": "tool_use", "id": "t", "name": "f"}]}]')$q$);
SELECT expect_error($q$SELECT llm_messages('val', '[{"role": "user", "content": [{"type": "tool_result", "content": "x"}]}]')$q$);

-- options
SELECT expect_error($q$SELECT llm_messages('val', '[{"role": "user", "content": "x"}]', '[]')$q$);
SELECT expect_error($q$SELECT llm_messages('val', '[{"role": "user", "content": "x"}]', '{"max_token": 10}')$q$);
SELECT expect_error($q$SELECT llm_messages('val', '[{"role": "user", "content": "x"}]', '{"max_tokens": "ten"}')$q$);
SELECT expect_error($q$SELECT llm_messages('val', '[{"role": "user", "content": "x"}]', '{"max_tokens": 0}')$q$);
SELECT expect_error($q$SELECT llm_messages('val', '[{"role": "user", "content": "x"}]', '{"max_tokens": 2000000}')$q$);
SELECT expect_error($q$SELECT llm_messages('val', '[{"role": "user", "content": "x"}]', '{"max_tokens": 1.5}')$q$);
SELECT expect_error($q$SELECT llm_messages('val', '[{"role": "user", "content": "x"}]', '{"temperature": 3}')$q$);
SELECT expect_error($q$SELECT llm_messages('val', '[{"role": "user", "content": "x"}]', '{"top_p": "high"}')$q$);
SELECT expect_error($q$SELECT llm_messages('val', '[{"role": "user", "content": "x"}]', '{"system": 5}')$q$);
SELECT expect_error($q$SELECT llm_messages('val', '[{"role": "user", "content": "x"}]', '{"system": [{"type": "image"}]}')$q$);
SELECT expect_error($q$SELECT llm_messages('val', '[{"role": "user", "content": "x"}]', '{"stop_sequences": "END"}')$q$);
SELECT expect_error($q$SELECT llm_messages('val', '[{"role": "user", "content": "x"}]', '{"stop_sequences": [""]}')$q$);
SELECT expect_error($q$SELECT llm_messages('val', '[{"role": "user", "content": "x"}]', '{"tools": {}}')$q$);
SELECT expect_error($q$SELECT llm_messages('val', '[{"role": "user", "content": "x"}]', '{"tools": [{"description": "no name"}]}')$q$);
SELECT expect_error($q$SELECT llm_messages('val', '[{"role": "user", "content": "x"}]', '{"tools": [{"name": "f"}]}')$q$);
SELECT expect_error($q$SELECT llm_messages('val', '[{"role": "user", "content": "x"}]', '{"tool_choice": "auto"}')$q$);
SELECT expect_error($q$SELECT llm_messages('val', '[{"role": "user", "content": "x"}]', '{"tool_choice": {"type": "tool"}}')$q$);
SELECT expect_error($q$SELECT llm_messages('val', '[{"role": "user", "content": "x"}]', '{"tool_choice": {"type": "maybe"}}')$q$);
SELECT expect_error($q$SELECT llm_messages('val', '[{"role": "user", "content": "x"}]', '{"timeout_ms": 0}')$q$);
SELECT expect_error($q$SELECT llm_messages('val', '[{"role": "user", "content": "x"}]', '{"tags": ["a"]}')$q$);
SELECT expect_error($q$SELECT llm_messages('val', '[{"role": "user", "content": "x"}]', '{"metadata": "x"}')$q$);
SELECT expect_error($q$SELECT llm_complete('val', NULL)$q$);

-- none of these reached the worker: no log rows
SELECT count(*) AS logged FROM llm.requests WHERE alias = 'val';

SELECT llm.drop_route('val');
SELECT llm.drop_provider('val_mock');

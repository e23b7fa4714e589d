--
-- on_error: with "null" a failed call returns NULL (llm_complete) or an
-- error object (llm_messages) and the statement goes on; every failure
-- keeps its llm.requests row.  Bad arguments, cancel and statement_timeout
-- still raise.
--
-- the default is raise
SHOW llm.on_error;
SELECT expect_error($q$SELECT llm_complete('claude', 'x [[mock:status=429]]')$q$);

-- one statement over a mix of failing and answering rows
CREATE TEMP TABLE oe_rows (n int, alias text, prompt text);
INSERT INTO oe_rows VALUES
  (1, 'claude', 'first'),
  (2, 'claude', 'x [[mock:status=429]]'),
  (3, 'claude', 'third'),
  (4, 'claude', 'x [[mock:status=500]]'),
  (5, 'no_such_alias', 'fifth'),
  (6, 'gpt', 'sixth');
SELECT n, llm_complete(alias, prompt, '{"on_error": "null", "tags": {"oe": "mix"}}') AS answer
  FROM oe_rows ORDER BY n;
-- each failure has its row, with SQLSTATE and text
SELECT alias, status, error_code, http_status, error IS NOT NULL AS has_error
  FROM llm.requests WHERE tags->>'oe' = 'mix' ORDER BY id;

-- llm_messages returns the error object; its request_id is the call's row
CREATE TEMP TABLE oe_msg (tag text, m jsonb);
INSERT INTO oe_msg SELECT 'msg429',
  llm_messages('claude', '[{"role": "user", "content": "x [[mock:status=429]]"}]',
               '{"on_error": "null", "tags": {"oe": "msg429"}}');
INSERT INTO oe_msg SELECT 'msgalias',
  llm_messages('no_such_alias', '[{"role": "user", "content": "hi"}]',
               '{"on_error": "null", "tags": {"oe": "msgalias"}}');
SELECT tag, m - 'gateway' AS error, (m->'gateway') - 'request_id' AS gateway FROM oe_msg ORDER BY tag;
SELECT tag, r.status, r.error_code
  FROM oe_msg LEFT JOIN llm.requests r ON r.id = (m->'gateway'->>'request_id')::bigint AND r.tags->>'oe' = tag
 ORDER BY tag;
-- an answer is unchanged
SELECT m->'content' AS content FROM llm_messages('claude', '[{"role": "user", "content": "fine"}]',
                                                 '{"on_error": "null"}') AS m;
-- the worker's timeout is a failure of the call (curl's detail varies: not compared)
SELECT m->'error'->>'type' AS type, m->'gateway'->>'sqlstate' AS sqlstate
  FROM llm_messages('claude', '[{"role": "user", "content": "slow [[mock:latency=3000]]"}]',
                    '{"on_error": "null", "timeout_ms": 200}') AS m;

-- the GUC, and the option overriding it both ways
SET llm.on_error = 'null';
SELECT llm_complete('claude', 'x [[mock:status=429]]') IS NULL AS is_null;
SELECT llm_messages('claude', '[{"role": "user", "content": "x [[mock:status=500]]"}]')->'error' AS error;
SELECT expect_error($q$SELECT llm_complete('claude', 'x [[mock:status=429]]', '{"on_error": "raise"}')$q$);
SET llm.on_error = 'raise';
SELECT llm_complete('claude', 'x [[mock:status=429]]', '{"on_error": "null"}') IS NULL AS is_null;
SET llm.on_error = 'maybe';
RESET llm.on_error;

-- bad arguments still raise
SELECT expect_error($q$SELECT llm_complete('claude', 'x', '{"on_error": "ignore"}')$q$);
SELECT expect_error($q$SELECT llm_complete('claude', 'x', '{"on_error": true}')$q$);
SELECT expect_error($q$SELECT llm_complete('claude', 'x', '{"on_error": "null", "max_tokens": 0}')$q$);
SELECT expect_error($q$SELECT llm_complete(NULL, 'x', '{"on_error": "null"}')$q$);
-- so does a failure of the gateway rather than the call (no shared memory for the request)
SET llm.debug_fail_shm_alloc = 1;
SELECT expect_error($q$SELECT llm_complete('claude', 'x', '{"on_error": "null"}')$q$);
RESET llm.debug_fail_shm_alloc;
-- and a call whose audit row cannot be written: every NULL has its row
CREATE FUNCTION oe_discard() RETURNS trigger LANGUAGE plpgsql AS $$BEGIN RETURN NULL; END$$;
CREATE TRIGGER oe_discard BEFORE INSERT ON llm.requests FOR EACH ROW EXECUTE FUNCTION oe_discard();
SELECT expect_error($q$SELECT llm_complete('claude', 'x [[mock:status=429]]', '{"on_error": "null"}')$q$);
DROP TRIGGER oe_discard ON llm.requests;
DROP FUNCTION oe_discard();
-- on_error is not forwarded to the provider
SELECT request_body ? 'on_error' AS forwarded FROM llm.requests ORDER BY id DESC LIMIT 1;

-- statement_timeout (a cancel) still raises, and the call is logged cancelled
SET statement_timeout = '300ms';
SELECT llm_complete('claude', 'slow [[mock:latency=3000]]', '{"on_error": "null", "tags": {"oe": "cancel"}}');
RESET statement_timeout;
SELECT wait_until($q$SELECT count(*) = 1 FROM llm.requests WHERE tags->>'oe' = 'cancel' AND status <> 'pending'$q$);
SELECT status, error_code FROM llm.requests WHERE tags->>'oe' = 'cancel';

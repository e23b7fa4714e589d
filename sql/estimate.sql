--
-- estimate: llm.estimate plans a statement and reports its calls, tokens
-- and cost range without calling a provider or changing data.
--
\getenv mock_port MOCK_PORT
SELECT 'http://127.0.0.1:' || :'mock_port' AS url \gset
-- the later suites' expected output names route ids: give back the ones used here
SELECT pg_get_serial_sequence('llm.routes', 'id') AS routes_seq \gset
SELECT last_value AS routes_last, is_called AS routes_called FROM :routes_seq \gset
SELECT llm.add_provider('est_a', 'anthropic', :'url', 'us');
SELECT llm.add_provider('est_o', 'openai', :'url' || '/v1', 'eu');
-- prices in USD per million tokens: the cheap target and the dear one
SELECT llm.add_route('est', 'est_a', 'cheap', 0, 1,
                     '{"price_input": 1, "price_output": 5}') > 0 AS added;
SELECT llm.add_route('est', 'est_o', 'dear', 1, 1,
                     '{"price_input": 3, "price_output": 15, "default_max_tokens": 500}') > 0 AS added;
-- not used: disabled, or weight 0
SELECT llm.add_route('est', 'est_o', 'off', 2, 1, '{"price_input": 1000}') > 0 AS added;
UPDATE llm.routes SET enabled = false WHERE alias = 'est' AND upstream_model = 'off';
SELECT llm.add_route('est', 'est_o', 'zero', 2, 0, '{"price_input": 1000}') > 0 AS added;
-- a target without prices, one without an output bound (openai, no max_tokens)
SELECT llm.add_route('est_noprice', 'est_a', 'm') > 0 AS added;
SELECT llm.add_route('est_unbounded', 'est_o', 'm', 0, 1, '{"price_input": 2, "price_output": 2}') > 0 AS added;

-- 1,000 rows of 40 bytes ('x' * 40): pg_stats says 41 (with the length
-- header), 11 tokens by the 4-bytes rule
CREATE TABLE est_t (id int PRIMARY KEY, body text, grp int, answer text);
INSERT INTO est_t SELECT i, repeat('x', 40), i % 10, NULL FROM generate_series(1, 1000) i;
ANALYZE est_t;
SELECT avg_width FROM pg_stats WHERE tablename = 'est_t' AND attname = 'body';
SELECT count(*) AS requests_before FROM llm.requests \gset

-- SELECT: 1,000 calls; in = 11 tokens; out = 1024 (anthropic default) or 500
-- (the dear target's default_max_tokens); cost per call 1*11 + 5*1024 = 5131
-- and 3*11 + 15*500 = 7533 millionths of a dollar
SELECT * FROM llm.estimate($$SELECT id, llm_complete('est', body) FROM est_t$$);
-- the options' max_tokens and system prompt: 11 + 41 + 12 bytes = 16 tokens;
-- 100 * (1*16 + 5*100) and 100 * (3*16 + 15*100) millionths
SELECT call_site, alias, calls, input_tokens_per_call, max_output_tokens_per_call, cost_min, cost_max
  FROM llm.estimate($$SELECT llm_complete('est', 'Summarise: ' || body, '{"max_tokens": 100, "system": "Be brief!!!!"}') FROM est_t WHERE grp = 1$$);
-- exact: the planner's estimate vs the rows counted
-- llm_extract: the schema is sent too (41 + 16 bytes = 15 tokens) and its
-- options are the fourth argument (max_tokens 100)
SELECT call_site, function, calls, input_tokens_per_call, max_output_tokens_per_call, cost_min, cost_max
  FROM llm.estimate($$SELECT llm_extract('est', body, '{"type": "object"}', '{"max_tokens": 100}') FROM est_t WHERE grp = 1$$);
-- llm_embed: input only, no output tokens (100 * 1 * 11 and 100 * 3 * 11)
SELECT call_site, function, calls, input_tokens_per_call, max_output_tokens_per_call, cost_min, cost_max
  FROM llm.estimate($$SELECT llm_embed('est', body) FROM est_t WHERE grp = 1$$);
SELECT calls FROM llm.estimate($$SELECT llm_complete('est', body) FROM est_t WHERE id % 7 = 0$$);
SELECT calls FROM llm.estimate($$SELECT llm_complete('est', body) FROM est_t WHERE id % 7 = 0$$, exact => true);
-- a LIMIT bounds the calls
SELECT calls FROM llm.estimate($$SELECT llm_complete('est', body) FROM est_t ORDER BY id LIMIT 5$$, true);
-- two call sites, in the order written; a join's rows
SELECT call_site, function, alias, calls, input_tokens_per_call
  FROM llm.estimate($$SELECT llm_messages('est', jsonb_build_array(jsonb_build_object('role', 'user', 'content', a.body))),
                             llm_complete('est', b.body || b.body)
                        FROM est_t a JOIN est_t b ON b.id = a.id + 1 WHERE a.grp = 3$$, exact => true);

-- UPDATE and INSERT ... SELECT: the source rows, exactly; no row changes
SELECT calls, input_tokens, max_output_tokens, cost_min, cost_max
  FROM llm.estimate($$UPDATE est_t SET answer = llm_complete('est', body) WHERE grp < 3$$);
SELECT calls FROM llm.estimate($$UPDATE est_t SET answer = llm_complete('est', body) WHERE grp < 3$$, exact => true);
CREATE TABLE est_out (id serial, answer text);
SELECT calls, input_tokens_per_call
  FROM llm.estimate($$INSERT INTO est_out (answer) SELECT llm_complete('est', body) FROM est_t WHERE grp = 0$$, true);
SELECT calls FROM llm.estimate($$CREATE TABLE est_ctas AS SELECT llm_complete('est', body) FROM est_t WHERE id <= 20$$, true);
SELECT count(*) AS answered FROM est_t WHERE answer IS NOT NULL;
SELECT count(*) AS inserted FROM est_out;
SELECT to_regclass('est_ctas') AS ctas;

-- targets without prices, or without an output bound: cost unknown
SELECT alias, max_output_tokens_per_call, cost_min, cost_max
  FROM llm.estimate($$SELECT llm_complete('est_noprice', body) FROM est_t LIMIT 1$$);
SELECT alias, max_output_tokens_per_call, cost_min, cost_max
  FROM llm.estimate($$SELECT llm_complete('est_unbounded', body) FROM est_t LIMIT 1$$);
SELECT alias, max_output_tokens_per_call, cost_min, cost_max
  FROM llm.estimate($$SELECT llm_complete('est_unbounded', body, '{"max_tokens": 10}') FROM est_t LIMIT 1$$);
-- llm.allowed_regions leaves out the dear target
SET llm.allowed_regions = 'us';
SELECT cost_min, cost_max FROM llm.estimate($$SELECT llm_complete('est', body) FROM est_t LIMIT 1$$);
RESET llm.allowed_regions;
-- an alias that is not a constant is unknown: no cost
SELECT alias, calls, input_tokens_per_call, max_output_tokens_per_call, cost_min, cost_max
  FROM llm.estimate($$SELECT llm_complete(CASE WHEN grp = 0 THEN 'est' ELSE 'other' END, body) FROM est_t$$);
-- a call in a condition counts every row the node reads (the table's 1,000):
-- an upper bound, as conditions evaluated before it may spare rows
SELECT calls FROM llm.estimate($$SELECT id FROM est_t WHERE grp = 2 AND llm_complete('est', body) = 'yes'$$);
SELECT calls FROM llm.estimate($$SELECT id FROM est_t WHERE grp = 2 AND llm_complete('est', body) = 'yes'$$, true);
-- FOR UPDATE: counted without keeping a lock
SELECT calls FROM llm.estimate($$SELECT llm_complete('est', body) FROM est_t WHERE id <= 4 FOR UPDATE$$, true);
-- other shapes: an aggregate's argument (once per row read), a correlated
-- subquery (one run estimated; all runs counted), a CTE, VALUES (each
-- row its own call site, once), FROM, an upper bound for MERGE (its source rows),
-- DELETE ... RETURNING, SELECT INTO, a serial plan
SELECT calls FROM llm.estimate($$SELECT grp, count(llm_complete('est', body)) FROM est_t GROUP BY grp$$);
SELECT calls FROM llm.estimate($$SELECT grp, count(llm_complete('est', body)) FROM est_t GROUP BY grp$$, true);
SELECT calls FROM llm.estimate($$SELECT (SELECT llm_complete('est', b.body) FROM est_t b WHERE b.id = a.id + 1) FROM est_t a WHERE a.id <= 10$$);
SELECT calls FROM llm.estimate($$SELECT (SELECT llm_complete('est', b.body) FROM est_t b WHERE b.id = a.id + 1) FROM est_t a WHERE a.id <= 10$$, true);
SELECT calls, input_tokens_per_call FROM llm.estimate($$WITH x AS MATERIALIZED (SELECT llm_complete('est', body) AS a FROM est_t WHERE grp = 4) SELECT * FROM x$$, true);
SELECT calls, input_tokens_per_call FROM llm.estimate($$INSERT INTO est_out (answer) VALUES (llm_complete('est', '12345678')), (llm_complete('est', 'x'))$$, true);
SELECT calls, input_tokens_per_call FROM llm.estimate($$SELECT * FROM llm_complete('est', 'from a FROM clause')$$, true);
SELECT calls FROM llm.estimate($$DELETE FROM est_t WHERE grp = 5 RETURNING llm_complete('est', body)$$, true);
SELECT calls FROM llm.estimate($$MERGE INTO est_t t USING (SELECT generate_series(1, 7) AS id) s ON t.id = s.id
                                 WHEN MATCHED THEN UPDATE SET answer = llm_complete('est', t.body)$$, true);
SELECT calls FROM llm.estimate($$SELECT llm_complete('est', body) AS a INTO est_into FROM est_t WHERE id <= 6$$, true);
SET llm.statement_concurrency = 1;
SELECT calls FROM llm.estimate($$SELECT llm_complete('est', body) FROM est_t ORDER BY id LIMIT 3$$);
RESET llm.statement_concurrency;
SELECT count(*) AS rows_kept, count(answer) AS answered FROM est_t;
SELECT to_regclass('est_into') AS select_into;
-- totals past bigint are NULL (the cost, numeric, has no such limit)
SELECT calls, input_tokens, max_output_tokens, cost_min
  FROM llm.estimate($$SELECT llm_complete('est', 'x') FROM generate_series(1, 1000000000000000000)$$);
-- no call: no row
SELECT count(*) AS call_sites FROM llm.estimate('SELECT id FROM est_t');
-- exact mode never runs a volatile function (it reads as NULL)
SELECT calls FROM llm.estimate($$SELECT llm_complete('est', body), nextval('est_out_id_seq') FROM est_t WHERE id <= 3$$, true);
SELECT last_value FROM est_out_id_seq;

-- bad input
SELECT expect_error($$SELECT * FROM llm.estimate('this is not a query')$$);
SELECT expect_error($$SELECT * FROM llm.estimate('SELECT 1; SELECT 2')$$);
SELECT expect_error($$SELECT * FROM llm.estimate('')$$);
SELECT expect_error($$SELECT * FROM llm.estimate('VACUUM est_t')$$);
SELECT expect_error($$SELECT * FROM llm.estimate('EXPLAIN SELECT 1')$$);
SELECT expect_error($$SELECT * FROM llm.estimate(NULL)$$);
SELECT expect_error($$SELECT * FROM llm.estimate('SELECT llm_complete(''est'', body) FROM no_such_table')$$);
SELECT expect_error($$SELECT * FROM llm.estimate('WITH d AS (DELETE FROM est_t RETURNING body) SELECT llm_complete(''est'', body) FROM d', true)$$);
-- an error while counting leaves the session as it was (read-write)
SELECT expect_error($$SELECT * FROM llm.estimate('SELECT llm_complete(''est'', body) FROM est_t WHERE 1 / (id - 1) > 0', true)$$);
BEGIN;
SELECT expect_error($$SELECT * FROM llm.estimate('SELECT llm_complete(''est'', body) FROM est_t WHERE 1 / (id - 1) > 0', true)$$);
SELECT calls FROM llm.estimate($$SELECT llm_complete('est', body) FROM est_t WHERE id <= 2$$, true);
INSERT INTO est_out (answer) VALUES ('written');
ROLLBACK;
SELECT count(*) AS rows_kept FROM est_t;

-- as the caller: llm_user may estimate, but only over what it may read
CREATE ROLE regress_est_user IN ROLE llm_user;
CREATE ROLE regress_est_nobody;
GRANT SELECT ON est_t TO regress_est_user;
SET ROLE regress_est_user;
SELECT calls, input_tokens_per_call, cost_min, cost_max
  FROM llm.estimate($$SELECT llm_complete('est', body) FROM est_t LIMIT 2$$, true);
SELECT expect_error($$SELECT * FROM llm.estimate('SELECT llm_complete(''est'', answer) FROM est_out')$$);
SELECT expect_error($$SELECT * FROM llm.estimate('UPDATE est_t SET answer = llm_complete(''est'', body)', true)$$);
RESET ROLE;
-- under row security the caller sees only its rows, and not the column's
-- statistics (as pg_stats hides them): text's typical 32 bytes, 8 tokens
ALTER TABLE est_t ENABLE ROW LEVEL SECURITY;
CREATE POLICY est_mine ON est_t TO regress_est_user USING (grp = 1);
SET ROLE regress_est_user;
SELECT calls, input_tokens_per_call
  FROM llm.estimate($$SELECT llm_complete('est', body) FROM est_t$$, true);
RESET ROLE;
ALTER TABLE est_t DISABLE ROW LEVEL SECURITY;
SELECT r, has_function_privilege(r, 'llm.estimate(text, boolean)', 'EXECUTE')
  FROM unnest(ARRAY['llm_user', 'llm_admin', 'regress_est_nobody']) AS r;

-- a wrapper the planner cannot see into, mislabelled STABLE, runs in the
-- exact count: its call is refused before anything is sent
CREATE FUNCTION est_hidden(t text) RETURNS text LANGUAGE plpgsql STABLE
  AS $$ BEGIN RETURN llm_complete('est', t); END $$;
SELECT expect_error($$SELECT * FROM llm.estimate('SELECT llm_complete(''est'', body), est_hidden(body) FROM est_t LIMIT 1', true)$$);
DROP FUNCTION est_hidden(text);

-- the mock saw no request: the log did not grow
SELECT count(*) - :requests_before AS new_requests FROM llm.requests;

-- the quotas the statement would exceed: its two sites of 4 calls together
-- exceed a quota of 5 requests on the alias; a roomy quota and another alias's do not
SELECT llm.set_quota('est_requests', 'requests', 5, 'day', alias => 'est');
SELECT llm.set_quota('est_roomy', 'requests', 1000000, 'day');
SELECT llm.set_quota('est_other', 'requests', 1, 'day', alias => 'est_noprice');
SELECT llm_complete('claude', 'the worker reloads the quotas') IS NOT NULL AS called;
SELECT wait_until($$SELECT count(*) = 3 FROM llm.quota_status WHERE quota LIKE 'est\_%'$$);
SELECT call_site, alias, calls, exceeds_quotas
  FROM llm.estimate($$SELECT llm_complete('est', body), llm_complete('est', body, '{"max_tokens": 2}') FROM est_t LIMIT 4$$);
SELECT call_site, alias, calls, exceeds_quotas
  FROM llm.estimate($$SELECT llm_complete('est', body) FROM est_t$$);
SELECT llm.drop_quota(q) FROM unnest(ARRAY['est_requests', 'est_roomy', 'est_other']) AS q;

DROP POLICY est_mine ON est_t;
DROP TABLE est_t, est_out;
DROP ROLE regress_est_user, regress_est_nobody;
SELECT llm.drop_route(a) FROM unnest(ARRAY['est', 'est_noprice', 'est_unbounded']) AS a;
SELECT llm.drop_provider(p) FROM unnest(ARRAY['est_a', 'est_o']) AS p;
SELECT setval(:'routes_seq', :routes_last, :'routes_called') = :routes_last AS route_ids_restored;

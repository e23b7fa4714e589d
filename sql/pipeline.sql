--
-- pipeline: which statements get an LLM Pipeline (EXPLAIN), what EXPLAIN
-- ANALYZE reports, and that a pipelined statement answers as a serial one.
--
CREATE TEMP TABLE pl (id int PRIMARY KEY, body text, grp int);
INSERT INTO pl SELECT i, 'item ' || i, i % 2 FROM generate_series(1, 6) i;
ANALYZE pl;
SHOW llm.statement_concurrency;

-- pipelined: the node sits above the node that computes the calls
EXPLAIN (COSTS OFF) SELECT id, llm_complete('claude', body) FROM pl;
EXPLAIN (COSTS OFF, VERBOSE) SELECT id, upper(llm_complete('claude', body)) FROM pl WHERE grp = 1;
EXPLAIN (COSTS OFF) SELECT id, llm_complete('claude', body) FROM pl ORDER BY id DESC LIMIT 2;
EXPLAIN (COSTS OFF) UPDATE pl SET body = llm_complete('claude', body) WHERE grp = 0;
EXPLAIN (COSTS OFF) SELECT p.id, llm_messages('claude', jsonb_build_array(jsonb_build_object('role', 'user', 'content', q.body)))
  FROM pl p JOIN pl q ON q.id = p.id + 1;

-- EXPLAIN ANALYZE: calls, failures, tokens
EXPLAIN (ANALYZE, COSTS OFF, TIMING OFF, SUMMARY OFF)
  SELECT id, llm_complete('claude', body || CASE WHEN id = 4 THEN ' [[mock:status=400]]' ELSE '' END,
                          '{"on_error": "null"}') FROM pl;

-- serial: the call is conditional, filters, aggregates, or sits beside a volatile function
EXPLAIN (COSTS OFF) SELECT CASE WHEN grp = 1 THEN llm_complete('claude', body) END FROM pl;
EXPLAIN (COSTS OFF) SELECT coalesce(body, llm_complete('claude', body)) FROM pl;
EXPLAIN (COSTS OFF) SELECT id FROM pl WHERE llm_complete('claude', body) <> '';
EXPLAIN (COSTS OFF) SELECT count(llm_complete('claude', body)) FROM pl;
EXPLAIN (COSTS OFF) SELECT llm_complete('claude', body), random() FROM pl;
EXPLAIN (COSTS OFF) SELECT llm_complete('claude', body || random()) FROM pl;
EXPLAIN (COSTS OFF) DECLARE c SCROLL CURSOR FOR SELECT llm_complete('claude', body) FROM pl;
SET llm.statement_concurrency = 1;
EXPLAIN (COSTS OFF) SELECT id, llm_complete('claude', body) FROM pl;
RESET llm.statement_concurrency;

-- a SQL function around the call is inlined by the planner, and its call pipelined
CREATE FUNCTION pl_wrap(t text) RETURNS text LANGUAGE sql AS $$ SELECT llm_complete('claude', t) $$;
EXPLAIN (COSTS OFF) SELECT pl_wrap(body) FROM pl;

-- answers, in order, as serially
SELECT id, llm_complete('claude', body) FROM pl ORDER BY id;
SELECT id, left(llm_complete('claude', body), 22) AS answer, row_number() OVER (ORDER BY id DESC) FROM pl;

-- bad arguments raise as in a serial call
SELECT expect_error($q$SELECT id, llm_complete(NULL, body) FROM pl$q$);
SELECT expect_error($q$SELECT id, llm_complete('claude', body, '{"max_tokens": -1}') FROM pl$q$);

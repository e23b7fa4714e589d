--
-- errors: provider failures reach SQL with a distinct SQLSTATE, the
-- provider's status and message, and no secret.
--
\getenv mock_port MOCK_PORT
SELECT expect_error($q$SELECT llm_complete('claude', 'x [[mock:status=400]]')$q$);
SELECT expect_error($q$SELECT llm_complete('claude', 'x [[mock:status=401]]')$q$);
SELECT expect_error($q$SELECT llm_complete('claude', 'x [[mock:status=403]]')$q$);
SELECT expect_error($q$SELECT llm_complete('claude', 'x [[mock:status=429,retry_after=3]]')$q$);
SELECT expect_error($q$SELECT llm_complete('claude', 'x [[mock:status=500]]')$q$);
SELECT expect_error($q$SELECT llm_complete('claude', 'x [[mock:status=529]]')$q$);
SELECT expect_error($q$SELECT llm_complete('claude', 'x [[mock:error200]]')$q$);
SELECT expect_error($q$SELECT llm_complete('claude', 'x [[mock:malformed]]')$q$);
SELECT expect_error($q$SELECT llm_complete('gpt', 'x [[mock:status=400]]')$q$);
SELECT expect_error($q$SELECT llm_complete('gpt', 'x [[mock:status=401]]')$q$);
SELECT expect_error($q$SELECT llm_complete('gpt', 'x [[mock:status=429]]')$q$);
SELECT expect_error($q$SELECT llm_complete('gpt', 'x [[mock:status=503]]')$q$);
SELECT expect_error($q$SELECT llm_complete('gpt', 'x [[mock:error200]]')$q$);

-- a refused key: the message never contains the key itself
SELECT llm.add_provider('bad_key', 'anthropic', 'http://127.0.0.1:' || :'mock_port');
SELECT llm.set_credential('bad_key', 'invalid-secret-value-123');
SELECT llm.add_route('bad', 'bad_key', 'm') > 0 AS added;
SELECT expect_error($q$SELECT llm_complete('bad', 'hello')$q$);
SELECT count(*) AS rows_with_secret FROM llm.requests
 WHERE coalesce(error, '') || coalesce(response_body, '') || coalesce(request_body::text, '')
       LIKE '%invalid-secret-value-123%';

-- nothing listens on port 9: a connection error
SELECT llm.add_provider('nowhere', 'openai', 'http://127.0.0.1:9/v1');
SELECT llm.add_route('nowhere', 'nowhere', 'm') > 0 AS added;
-- (curl's detail carries timings; not compared)
SELECT regexp_replace(expect_error($q$SELECT llm_complete('nowhere', 'hello')$q$), 'DETAIL: [^\n]*\n', '') AS error;

-- timeouts: the per-call option and the GUC
-- (curl's detail carries timings; not compared)
SELECT regexp_replace(expect_error($q$SELECT llm_complete('claude', 'slow [[mock:latency=3000]]', '{"timeout_ms": 200}')$q$), 'DETAIL: [^\n]*\n', '') AS error;
SET llm.request_timeout_ms = 200;
-- (curl's detail carries timings; not compared)
SELECT regexp_replace(expect_error($q$SELECT llm_complete('claude', 'slow [[mock:latency=3000]]')$q$), 'DETAIL: [^\n]*\n', '') AS error;
RESET llm.request_timeout_ms;

-- an answer larger than llm.max_response_bytes (superuser sets it for the worker)
SELECT expect_error($q$SELECT llm_complete('claude', 'big [[mock:large=2000000]]')$q$);

-- every failure above is in the log with its status and SQLSTATE
SELECT status, error_code, http_status, attempts, provider
  FROM llm.requests WHERE status <> 'ok' AND alias IN ('claude', 'gpt', 'bad', 'nowhere')
 ORDER BY id;

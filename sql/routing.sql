--
-- routing: several targets per alias, retries with backoff, fallback,
-- and the region policy.  The mock fails a provider when that provider's
-- options send it an "x-mock" header directive.
--
\getenv mock_port MOCK_PORT
SELECT 'http://127.0.0.1:' || :'mock_port' AS url \gset
SELECT llm.add_provider('r_flaky', 'anthropic', :'url', 'eu');
SELECT llm.add_provider('r_good', 'anthropic', :'url', 'us');
SELECT llm.add_provider('r_other', 'openai', :'url' || '/v1', 'us');
SELECT llm.set_credential(p, 'k') FROM unnest(ARRAY['r_flaky', 'r_good', 'r_other']) AS p;
SELECT llm.add_route('fo', 'r_flaky', 'flaky-model', 0, 1, '{"max_attempts": 1}') > 0 AS added;
SELECT llm.add_route('fo', 'r_good', 'good-model', 1) > 0 AS added;

CREATE TEMP TABLE outcome (case_name text, provider text, attempts int, statuses text, error text);
CREATE FUNCTION pg_temp.try(case_name text, alias text, prompt text, options jsonb DEFAULT '{}')
RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    a jsonb;
    st text; msg text;
BEGIN
    a := llm_messages(alias, jsonb_build_array(jsonb_build_object('role', 'user', 'content', prompt)), options);
    INSERT INTO outcome
    SELECT case_name, a->'gateway'->>'provider', (a->'gateway'->>'attempts')::int,
           (SELECT string_agg(coalesce(e->>'http_status', '-') || ':' || (e->>'provider'), ' ')
              FROM jsonb_array_elements(attempts_detail) e),
           NULL
      FROM llm.requests WHERE id = (a->'gateway'->>'request_id')::bigint;
EXCEPTION WHEN OTHERS THEN
    GET STACKED DIAGNOSTICS st = RETURNED_SQLSTATE, msg = MESSAGE_TEXT;
    INSERT INTO outcome
    SELECT case_name, provider, attempts,
           (SELECT string_agg(coalesce(e->>'http_status', '-') || ':' || (e->>'provider'), ' ')
              FROM jsonb_array_elements(attempts_detail) e),
           st || ' ' || msg
      FROM llm.requests ORDER BY id DESC LIMIT 1;
END $$;

-- every retryable status falls over to the next priority (each change of
-- the provider commits on its own, so the worker sees it on the next call)
SELECT format($$UPDATE llm.providers SET options = '{"headers": {"x-mock": "status=%s"}}' WHERE name = 'r_flaky'$$, s),
       format($$SELECT pg_temp.try('status %s', 'fo', 'fall over on %s')$$, s, s)
  FROM unnest(ARRAY[408, 409, 429, 500, 502, 503, 504, 529]) AS s \gexec
-- an error inside a 200 answer, a dead port: also retryable
UPDATE llm.providers SET options = '{"headers": {"x-mock": "error200"}}' WHERE name = 'r_flaky';
SELECT pg_temp.try('error in 200', 'fo', 'fall over on error200');
-- a 200 answer that cannot be read was done (and billed) by the provider:
-- no retry, no fallback, unless the route's retry_unreadable allows it
UPDATE llm.providers SET options = '{"headers": {"x-mock": "malformed"}}' WHERE name = 'r_flaky';
SELECT pg_temp.try('malformed', 'fo', 'no fall over on malformed');
SELECT llm.alter_route(id, options => '{"max_attempts": 1, "retry_unreadable": true}')
  FROM llm.routes WHERE alias = 'fo' AND provider = 'r_flaky';
SELECT pg_temp.try('malformed, retry_unreadable', 'fo', 'fall over on malformed');
SELECT llm.alter_route(id, options => '{"max_attempts": 1}')
  FROM llm.routes WHERE alias = 'fo' AND provider = 'r_flaky';
-- a refused key falls over to another target
UPDATE llm.providers SET options = '{"headers": {"x-mock": "status=401"}}' WHERE name = 'r_flaky';
SELECT pg_temp.try('status 401', 'fo', 'fall over on 401');
-- client errors fail at once: no fallback
SELECT format($$UPDATE llm.providers SET options = '{"headers": {"x-mock": "status=%s"}}' WHERE name = 'r_flaky'$$, s),
       format($$SELECT pg_temp.try('status %s', 'fo', 'no fallback on %s')$$, s, s)
  FROM unnest(ARRAY[400, 404, 413, 422]) AS s \gexec
SELECT case_name, provider, attempts, statuses, error FROM outcome;
TRUNCATE outcome;

-- retries on the same target: the first attempt fails, the second succeeds
UPDATE llm.providers SET options = '{"headers": {"x-mock": "fail_first=1,status=503"}}' WHERE name = 'r_flaky';
SELECT llm.add_route('retry', 'r_flaky', 'flaky-model', 0, 1, '{"max_attempts": 3}') > 0 AS added;
SELECT pg_temp.try('retry then ok', 'retry', 'retried once');
-- retry-after is honoured: at least that long before the next attempt
UPDATE llm.providers SET options = '{"headers": {"x-mock": "fail_first=1,status=429,retry_after=1"}}' WHERE name = 'r_flaky';
SELECT clock_timestamp() AS t0 \gset
SELECT pg_temp.try('retry-after 1 s', 'retry', 'waits for retry-after');
SELECT extract(epoch FROM clock_timestamp() - :'t0'::timestamptz) >= 1.0 AS waited_retry_after;
-- and so is retry-after-ms (OpenAI, Azure)
UPDATE llm.providers SET options = '{"headers": {"x-mock": "fail_first=1,status=429,retry_after_ms=700"}}' WHERE name = 'r_flaky';
SELECT clock_timestamp() AS t0 \gset
SELECT pg_temp.try('retry-after-ms 700', 'retry', 'waits for retry-after-ms');
SELECT extract(epoch FROM clock_timestamp() - :'t0'::timestamptz) >= 0.7 AS waited_retry_after_ms;
SELECT case_name, provider, attempts, statuses, error FROM outcome;
TRUNCATE outcome;

-- the call's deadline bounds everything: a retry-after past the deadline
-- is not waited for, and the call ends in time
UPDATE llm.providers SET options = '{"headers": {"x-mock": "status=503,retry_after=5"}}' WHERE name = 'r_flaky';
UPDATE llm.providers SET options = '{"headers": {"x-mock": "latency=3000"}}' WHERE name = 'r_good';
SELECT clock_timestamp() AS t0 \gset
SELECT pg_temp.try('deadline', 'retry', 'bounded by the deadline', '{"timeout_ms": 800}');
SELECT extract(epoch FROM clock_timestamp() - :'t0'::timestamptz) < 2.0 AS ended_in_time;
SELECT clock_timestamp() AS t0 \gset
SELECT pg_temp.try('slow fallback', 'fo', 'fallback too slow', '{"timeout_ms": 800}');
SELECT extract(epoch FROM clock_timestamp() - :'t0'::timestamptz) < 2.0 AS ended_in_time;
SELECT case_name, provider, attempts, statuses, error FROM outcome;
TRUNCATE outcome;
UPDATE llm.providers SET options = '{}' WHERE name IN ('r_flaky', 'r_good');

-- weights split traffic inside a priority group (3:1 over 400 calls)
SELECT llm.add_route('split', 'r_good', 'model-a', 0, 3) > 0 AS added;
SELECT llm.add_route('split', 'r_other', 'model-b', 0, 1) > 0 AS added;
SELECT count(*) FILTER (WHERE a->'gateway'->>'provider' = 'r_good') BETWEEN 260 AND 340 AS weight_3_share_ok,
       count(*) FILTER (WHERE a->'gateway'->>'provider' = 'r_other') BETWEEN 60 AND 140 AS weight_1_share_ok,
       count(*) AS calls
  FROM (SELECT llm_messages('split', '[{"role": "user", "content": "split me"}]') AS a
          FROM generate_series(1, 400)) s;

-- data residency: targets outside llm.allowed_regions are never used,
-- fallback included
SELECT llm.add_route('eu_only', 'r_flaky', 'flaky-model') > 0 AS added;
SET llm.allowed_regions = 'us';
SELECT expect_error($q$SELECT llm_complete('eu_only', 'stay in the eu')$q$);
UPDATE llm.providers SET options = '{"headers": {"x-mock": "status=503"}}' WHERE name = 'r_good';
SELECT pg_temp.try('us only', 'fo', 'only us targets');
SELECT case_name, provider, attempts, statuses, error FROM outcome;
TRUNCATE outcome;
\set recv `python3 test/mock/mockctl.py last 5`
SELECT count(*) AS eu_requests_seen
  FROM jsonb_array_elements(:'recv'::jsonb) r WHERE r->'body'->>'model' = 'flaky-model'
   AND r->'body'->'messages'->0->>'content' = 'only us targets';
SET llm.allowed_regions = 'us, eu';
UPDATE llm.providers SET options = '{}' WHERE name = 'r_good';
SELECT llm_complete('eu_only', 'eu allowed again');
RESET llm.allowed_regions;
-- a user cannot widen the policy in a session
SET ROLE llm_caller;
SELECT expect_error($q$SET llm.allowed_regions = 'anywhere'$q$);
RESET ROLE;

-- circuit breaker: after 3 consecutive failed calls the flaky target is
-- skipped; after its cool-down one probe goes through
TRUNCATE outcome;
SELECT llm.add_route('cb', 'r_flaky', 'flaky-model', 0, 1,
       '{"max_attempts": 1, "breaker_failures": 3, "breaker_cooldown_ms": 1000}') AS cb_target \gset
SELECT llm.add_route('cb', 'r_good', 'good-model', 1) > 0 AS added;
UPDATE llm.providers SET options = '{"headers": {"x-mock": "status=503"}}' WHERE name = 'r_flaky';
SELECT pg_temp.try('cb ' || i, 'cb', 'breaker call ' || i) FROM generate_series(1, 4) AS i;
SELECT state, consecutive_failures, open_until > now() AS cooling_down
  FROM llm.circuit_breakers WHERE target_id = :cb_target;
SELECT pg_sleep(1.1);	-- the cool-down itself is what is tested
SELECT pg_temp.try('probe fails', 'cb', 'probe call');
SELECT state FROM llm.circuit_breakers WHERE target_id = :cb_target;
-- after the next cool-down a successful probe closes it by itself
UPDATE llm.providers SET options = '{}' WHERE name = 'r_flaky';
SELECT pg_temp.try('still open', 'cb', 'skipped while open');
SELECT pg_sleep(1.1);	-- the cool-down again
SELECT pg_temp.try('probe succeeds', 'cb', 'probe call 2');
SELECT state, consecutive_failures FROM llm.circuit_breakers WHERE target_id = :cb_target;
-- an administrator can close a circuit at once
UPDATE llm.providers SET options = '{"headers": {"x-mock": "status=503"}}' WHERE name = 'r_flaky';
SELECT pg_temp.try('cb again ' || i, 'cb', 'breaker again ' || i) FROM generate_series(1, 3) AS i;
SELECT state FROM llm.circuit_breakers WHERE target_id = :cb_target;
SELECT llm.reset_circuit('cb') AS reset;
SELECT state FROM llm.circuit_breakers WHERE target_id = :cb_target;
UPDATE llm.providers SET options = '{}' WHERE name = 'r_flaky';
SELECT pg_temp.try('healed', 'cb', 'healed call');
SELECT case_name, provider, attempts, statuses, error FROM outcome;
SELECT state, consecutive_failures FROM llm.circuit_breakers WHERE target_id = :cb_target;
-- every target open: the call fails at once, saying so
SELECT llm.add_route('cb_one', 'r_flaky', 'flaky-model', 0, 1,
       '{"max_attempts": 1, "breaker_failures": 1, "breaker_cooldown_ms": 60000}') > 0 AS added;
UPDATE llm.providers SET options = '{"headers": {"x-mock": "status=500"}}' WHERE name = 'r_flaky';
SELECT expect_error($q$SELECT llm_complete('cb_one', 'opens the circuit')$q$) LIKE 'LL005%' AS first_fails;
SELECT expect_error($q$SELECT llm_complete('cb_one', 'skipped')$q$);
UPDATE llm.providers SET options = '{}' WHERE name = 'r_flaky';
SELECT llm.reset_circuit('cb_one') AS reset;
SELECT llm_complete('cb_one', 'closed again');

-- route management: change, disable, drop; visible in llm.route_targets
SELECT alias, priority, weight, enabled, provider, region, upstream_model, circuit
  FROM llm.route_targets WHERE alias = 'fo';
SELECT llm.alter_route(target_id, enabled => false) FROM llm.route_targets
 WHERE alias = 'fo' AND provider = 'r_flaky';
SELECT a->'gateway'->>'provider' AS provider, a->'gateway'->>'attempts' AS attempts
  FROM llm_messages('fo', '[{"role": "user", "content": "flaky disabled"}]') AS a;
SELECT llm.alter_route(target_id, priority => 5, enabled => true) FROM llm.route_targets
 WHERE alias = 'fo' AND provider = 'r_flaky';
SELECT alias, priority, enabled, provider FROM llm.route_targets WHERE alias = 'fo';
SELECT expect_error($q$SELECT llm.alter_route(-1, weight => 2)$q$);
SELECT expect_error($q$SELECT llm.alter_route(1, weight => -2)$q$);
SELECT llm.drop_target(target_id) FROM llm.route_targets WHERE alias = 'fo' AND provider = 'r_flaky';
SELECT count(*) AS targets_left FROM llm.route_targets WHERE alias = 'fo';
SELECT llm.alter_provider('r_good', options => '{"max_concurrency": 4, "requests_per_minute": 600}');
SELECT provider, region, max_concurrency, requests_per_minute FROM llm.provider_load WHERE provider = 'r_good';
SELECT expect_error($q$SELECT llm.alter_provider('nope', region => 'x')$q$);
-- a disabled provider's targets are skipped until it is enabled again
SELECT llm.alter_provider('r_other', enabled => false);
SELECT count(*) FILTER (WHERE a->'gateway'->>'provider' = 'r_good') AS to_r_good, count(*) AS calls
  FROM (SELECT llm_messages('split', '[{"role": "user", "content": "r_other is off"}]') AS a
          FROM generate_series(1, 20)) s;
SELECT alias, provider, provider_enabled FROM llm.route_targets WHERE alias = 'split';
SELECT llm.alter_provider('r_other', enabled => true);
-- a plain role can read the targets but not change them
SET ROLE llm_caller;
SELECT count(*) > 0 AS sees_targets FROM llm.route_targets;
SELECT expect_error($q$SELECT llm.alter_route(1, weight => 2)$q$);
SELECT expect_error($q$SELECT * FROM llm.provider_load$q$);
RESET ROLE;

-- prices per million tokens give each call its cost, in numeric
SELECT llm.add_route('priced', 'r_good', 'priced-model', 0, 1,
       '{"price_input": 3, "price_output": 15, "price_cache_read": 0.3}') > 0 AS added;
SELECT a->'usage' AS usage, a->'gateway'->'cost_usd' AS cost_usd
  FROM llm_messages('priced', '[{"role": "user", "content": "how much is this [[mock:cache=100]]"}]') AS a;
SELECT cost_usd, pg_typeof(cost_usd) FROM llm.requests ORDER BY id DESC LIMIT 1;
SELECT a->'gateway'->'cost_usd' AS unpriced_cost FROM llm_messages('cb_one', '[{"role": "user", "content": "free"}]') AS a;
-- route options are checked when set
SELECT expect_error($q$SELECT llm.add_route('bad', 'r_good', 'm', 0, 1, '{"price_input": "3"}')$q$);
SELECT expect_error($q$SELECT llm.add_route('bad', 'r_good', 'm', 0, 1, '{"max_attempts": 0}')$q$);
SELECT expect_error($q$SELECT llm.add_route('bad', 'r_good', 'm', 0, 1, '{"retries": 3}')$q$);
-- and bounded, so the worker's arithmetic on them cannot overflow
SELECT expect_error($q$SELECT llm.add_route('bad', 'r_good', 'm', 0, 1, '{"price_input": 1e131071}')$q$);
SELECT expect_error($q$SELECT llm.add_route('bad', 'r_good', 'm', 0, 1, '{"price_output": 1000001}')$q$);
SELECT expect_error($q$SELECT llm.add_route('bad', 'r_good', 'm', 0, 1, '{"price_cache_read": 0.00000000001}')$q$);
SELECT expect_error($q$SELECT llm.add_route('bad', 'r_good', 'm', 0, 1, '{"price_cache_write": -1}')$q$);
SELECT expect_error($q$SELECT llm.add_route('bad', 'r_good', 'm', 0, 1, '{"max_attempts": 101}')$q$);
SELECT expect_error($q$SELECT llm.add_route('bad', 'r_good', 'm', 0, 1, '{"breaker_failures": -1}')$q$);
SELECT expect_error($q$SELECT llm.add_route('bad', 'r_good', 'm', 0, 1, '{"breaker_cooldown_ms": 2147483648}')$q$);
SELECT expect_error($q$SELECT llm.add_route('bad', 'r_good', 'm', 0, 1, '{"max_tokens": 1e20}')$q$);
SELECT expect_error($q$SELECT llm.add_route('bad', 'r_good', 'm', 0, 1, '{"default_max_tokens": 1.5}')$q$);
SELECT expect_error($q$SELECT llm.add_route('bad', 'r_good', 'm', 0, 1, '{"retry_unreadable": "yes"}')$q$);
SELECT expect_error($q$SELECT llm.add_route('bad', 'r_good', 'm', 0, 1, '{"idempotency_header": "Authorization"}')$q$);
SELECT llm.add_route('bounds', 'r_good', 'm', 0, 1,
       '{"price_input": 1000000, "price_output": 0.0000000001, "max_attempts": 100, "breaker_failures": 0,
         "breaker_cooldown_ms": 2147483647, "max_tokens": 1048576, "retry_unreadable": true,
         "idempotency_header": "Idempotency-Key"}') > 0 AS within_bounds;
SELECT llm.drop_route('bounds');
-- the same check when llm.routes is written directly (llm_admin may)
SELECT expect_error($q$UPDATE llm.routes SET options = '{"price_input": 1e131071}' WHERE alias = 'priced'$q$);
SELECT expect_error($q$INSERT INTO llm.routes (alias, provider, upstream_model, options) VALUES ('bad', 'r_good', 'm', '{"max_attempts": 1e9}')$q$);
-- a price that got in anyway (a superuser dropped the check) fails that
-- call with 22023, and the worker goes on
SELECT worker_pid AS pid_before FROM llm.gateway_status() \gset
ALTER TABLE llm.routes DROP CONSTRAINT routes_options_valid;
UPDATE llm.routes SET options = '{"price_input": 1e131071}' WHERE alias = 'priced';
ALTER TABLE llm.routes ADD CONSTRAINT routes_options_valid CHECK (llm._check_route_options(options)) NOT VALID;
SELECT expect_error($q$SELECT llm_complete('priced', 'overpriced: eleven words or more make the price 1e131071 overflow numeric')$q$);
SELECT status, error_code, response_body LIKE '%overpriced%' AS answer_kept FROM llm.requests ORDER BY id DESC LIMIT 1;
SELECT worker_pid = :pid_before AS same_worker FROM llm.gateway_status();
UPDATE llm.routes SET options = '{"price_input": 3}' WHERE alias = 'priced';
SELECT llm_complete('priced', 'priced again');
-- the region policy per role: set by an administrator, applied at login
CREATE ROLE llm_eu_user LOGIN;
ALTER ROLE llm_eu_user SET llm.allowed_regions = 'eu';
SELECT current_user AS admin_user \gset
\c - llm_eu_user
SHOW llm.allowed_regions;
SELECT expect_error($q$SELECT llm_complete('split', 'us targets only')$q$);
SELECT llm_complete('eu_only', 'eu target');
SELECT expect_error($q$SET llm.allowed_regions = ''$q$);
\c - :admin_user
DROP ROLE llm_eu_user;

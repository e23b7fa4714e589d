--
-- request_log: one row per call, written by the worker; a caller's
-- ROLLBACK does not remove it.
--
TRUNCATE llm.requests;

BEGIN;
SELECT llm_complete('claude', 'in a transaction that rolls back');
ROLLBACK;
SELECT status, alias, provider, upstream_model, role_name = current_user AS role_is_caller, attempts, http_status,
       input_tokens, output_tokens, stop_reason, error_code,
       request_body->'messages' AS messages, response_body IS NOT NULL AS has_response,
       latency_ms > 0 AS has_latency, finished_at >= created_at AS finished
  FROM llm.requests;

-- tags travel to the log
SELECT llm_complete('claude', 'tagged', '{"tags": {"team": "support", "ticket": 42}}');
SELECT tags FROM llm.requests WHERE tags IS NOT NULL;

-- llm.log_bodies = none keeps no bodies, errors keeps them only for failures
ALTER SYSTEM SET llm.log_bodies = 'none';
SELECT pg_reload_conf();
-- the worker applies the reload asynchronously: call until a row shows it
DO $$
BEGIN
    FOR i IN 1..200 LOOP
        PERFORM llm_complete('claude', 'no bodies please');
        EXIT WHEN (SELECT request_body IS NULL FROM llm.requests ORDER BY id DESC LIMIT 1);
    END LOOP;
END $$;
SELECT status, request_body, response_body FROM llm.requests ORDER BY id DESC LIMIT 1;
ALTER SYSTEM SET llm.log_bodies = 'errors';
SELECT pg_reload_conf();
DO $$
BEGIN
    FOR i IN 1..200 LOOP
        BEGIN
            PERFORM llm_complete('claude', 'failing call [[mock:status=400]]');
        EXCEPTION WHEN OTHERS THEN NULL;
        END;
        EXIT WHEN (SELECT request_body IS NOT NULL FROM llm.requests ORDER BY id DESC LIMIT 1);
    END LOOP;
END $$;
SELECT llm_complete('claude', 'ok call, no bodies');
SELECT expect_error($q$SELECT llm_complete('claude', 'failing call [[mock:status=400]]')$q$);
SELECT status, request_body IS NOT NULL AS has_request, response_body IS NOT NULL AS has_response
  FROM llm.requests ORDER BY id DESC LIMIT 2;
ALTER SYSTEM RESET llm.log_bodies;
SELECT pg_reload_conf();

-- a role without rights can call but cannot read the log or the credentials
CREATE ROLE llm_caller;
GRANT USAGE ON SCHEMA llm TO llm_caller;
SET ROLE llm_caller;
SELECT llm_complete('claude', 'from a plain role');
SELECT expect_error($q$SELECT * FROM llm.credentials$q$);
SELECT expect_error($q$SELECT * FROM llm.requests$q$);
SELECT expect_error($q$SELECT llm.set_credential('mock_anthropic', 'x')$q$);
RESET ROLE;
SELECT role_name, status FROM llm.requests ORDER BY id DESC LIMIT 1;

SELECT * FROM llm.gateway_status() WHERE worker_pid IS NULL;
SELECT slots, slots_in_use FROM llm.gateway_status();
-- every call so far was timed through quota admission and settling
SELECT quota_checked_calls > 0 AS quota_timed, quota_check_us > 0 AS quota_time_measured
  FROM llm.gateway_status();

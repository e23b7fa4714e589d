-- Examples run by test/run-demo.sh on a fresh demo cluster.
-- psql variables: mock_port (set when the bundled mock provider runs).
\pset footer off
\set ON_ERROR_STOP 1
CREATE EXTENSION llm_gateway;

\echo
\echo '== the extension is installed'
SELECT extname, extversion, llm.version() AS library_version
  FROM pg_extension WHERE extname = 'llm_gateway';

\getenv anthropic_key ANTHROPIC_API_KEY
\getenv openai_key OPENAI_API_KEY
SELECT :'mock_port' <> '' AS use_mock,
       :{?anthropic_key} AS use_anthropic,
       :{?openai_key} AND NOT :{?anthropic_key} AS use_openai \gset

\echo
\echo '== providers and the route alias "demo"'
\if :use_mock
SELECT llm.add_provider('mock', 'anthropic', 'http://127.0.0.1:' || :'mock_port', 'local');
SELECT llm.set_credential('mock', 'demo-key');
SELECT llm.add_route('demo', 'mock', 'claude-mock') > 0 AS route_added;
\elif :use_anthropic
SELECT llm.add_provider('anthropic', 'anthropic', 'https://api.anthropic.com', 'us');
SELECT llm.set_credential('anthropic', :'anthropic_key');
SELECT llm.add_route('demo', 'anthropic', :'anthropic_model') > 0 AS route_added;
\else
SELECT llm.add_provider('openai', 'openai', 'https://api.openai.com/v1', 'us');
SELECT llm.set_credential('openai', :'openai_key');
SELECT llm.add_route('demo', 'openai', :'openai_model') > 0 AS route_added;
\endif
SELECT name, kind, base_url, region FROM llm.providers;
SELECT alias, provider, upstream_model FROM llm.routes;

\echo
\echo '== one call: llm_complete returns the text'
SELECT llm_complete('demo', 'Say hello to PostgreSQL in five words.', '{"max_tokens": 50}');

\echo
\echo '== llm_messages returns the whole Messages answer plus a gateway key'
SELECT jsonb_pretty(llm_messages('demo',
    '[{"role": "user", "content": "Name one prime number."}]',
    '{"system": "Answer with one word.", "max_tokens": 20, "tags": {"example": "demo"}}'));

\echo
\echo '== batch over table rows: one call per row'
CREATE TABLE tickets (id int PRIMARY KEY, body text);
INSERT INTO tickets VALUES
    (1, 'My invoice shows the wrong amount.'),
    (2, 'The app crashes when I upload a photo.'),
    (3, 'How do I change my password?');
SELECT id, llm_complete('demo', 'Classify this support ticket as billing, bug or account: ' || body,
                        '{"max_tokens": 60}') AS label
  FROM tickets ORDER BY id;

\if :use_mock
\echo
\echo '== routing: a failing primary is retried, then the call falls over to the next priority'
-- the mock fails every call that carries this provider's header
SELECT llm.add_provider('flaky', 'openai', 'http://127.0.0.1:' || :'mock_port' || '/v1', 'local',
                        '{"headers": {"x-mock": "status=503"}}');
SELECT llm.set_credential('flaky', 'demo-key');
SELECT llm.add_route('resilient', 'flaky', 'gpt-mock', priority => 0) > 0 AS primary_added;
SELECT llm.add_route('resilient', 'mock', 'claude-mock', priority => 1) > 0 AS fallback_added;
SELECT a->'gateway' AS gateway, a->'content'->0->>'text' AS text
  FROM llm_messages('resilient', '[{"role": "user", "content": "Are you there?"}]') AS a;
SELECT jsonb_pretty(attempts_detail) AS attempts FROM llm.requests ORDER BY id DESC LIMIT 1;
\endif

\echo
\echo '== a mistake is caught before anything is sent'
\set ON_ERROR_STOP 0
SELECT llm_complete('demo', 'hi', '{"max_tokens": "lots"}');
SELECT llm_complete('no-such-alias', 'hi');
\set ON_ERROR_STOP 1

\echo
\echo '== the audit log, written by the worker (it survives a caller''s ROLLBACK)'
BEGIN;
SELECT llm_complete('demo', 'This call is rolled back, its log row is not.', '{"max_tokens": 20}') IS NOT NULL AS answered;
ROLLBACK;
SELECT id, status, alias, provider, upstream_model, input_tokens, output_tokens,
       round(latency_ms::numeric, 1) AS latency_ms, error_code
  FROM llm.requests ORDER BY id;

\echo
\echo '== the gateway'
SELECT * FROM llm.gateway_status();

--
-- credentials: stored as AES-256-GCM ciphertext, readable by nobody but the
-- owner, managed by superusers and llm_admin, decrypted only by the worker.
-- (Wrong, missing and unsafe master key files: test/t/007_credentials.pl.)
--
\getenv mock_port MOCK_PORT
SELECT llm.add_provider('cred_p', 'anthropic', 'http://127.0.0.1:' || :'mock_port');
SELECT llm.add_route('cred', 'cred_p', 'claude-cred') > 0 AS added;
SELECT llm.master_key_id() ~ '^[0-9a-f]{16}$' AS key_id_is_hex;

-- ciphertext in the table: version 2, 29 header bytes, the secret's length, 16 tag bytes
SELECT llm.set_credential('cred_p', 'fake-cred-test-PLAINTEXT-0001');
SELECT provider, label, enabled, key_id = llm.master_key_id() AS current_key,
       get_byte(ciphertext, 0) AS version, length(ciphertext) AS bytes,
       position(convert_to('fake-cred-test-PLAINTEXT-0001', 'UTF8') IN ciphertext) AS plaintext_at
  FROM llm.credentials WHERE provider = 'cred_p';

-- the worker decrypts it for the call
SELECT llm_complete('cred', 'hello with a key');
\set recv `python3 test/mock/mockctl.py last 1`
SELECT r->'headers'->>'x-api-key' AS x_api_key FROM jsonb_array_elements(:'recv'::jsonb) AS r;

-- the same secret again: a fresh nonce, so another ciphertext
SELECT ciphertext AS first_ciphertext FROM llm.credentials WHERE provider = 'cred_p' \gset
SELECT llm.set_credential('cred_p', 'fake-cred-test-PLAINTEXT-0001');
SELECT ciphertext <> :'first_ciphertext'::bytea AS new_ciphertext FROM llm.credentials WHERE provider = 'cred_p';

-- rotation: set_credential again replaces the key of that label
SELECT llm.set_credential('cred_p', 'fake-cred-test-PLAINTEXT-0002');
SELECT count(*) AS credentials FROM llm.credentials WHERE provider = 'cred_p';
SELECT llm_complete('cred', 'after rotation');
\set recv `python3 test/mock/mockctl.py last 1`
SELECT r->'headers'->>'x-api-key' AS x_api_key FROM jsonb_array_elements(:'recv'::jsonb) AS r;

-- labels: two enabled keys are used in turn
SELECT llm.set_credential('cred_p', 'fake-cred-test-PLAINTEXT-0003', 'second');
SELECT provider, label, enabled FROM llm.credentials_info WHERE provider = 'cred_p' ORDER BY label;
SELECT llm_complete('cred', 'turn ' || i) IS NOT NULL AS answered FROM generate_series(1, 4) AS i;
\set recv `python3 test/mock/mockctl.py last 4`
SELECT r->'headers'->>'x-api-key' AS x_api_key, count(*)
  FROM jsonb_array_elements(:'recv'::jsonb) AS r GROUP BY 1 ORDER BY 1;

-- a disabled key is kept but not used
SELECT llm.set_credential_enabled('cred_p', 'second', false);
SELECT label, enabled FROM llm.credentials_info WHERE provider = 'cred_p' ORDER BY label;
SELECT llm_complete('cred', 'turn ' || i) IS NOT NULL AS answered FROM generate_series(1, 2) AS i;
\set recv `python3 test/mock/mockctl.py last 2`
SELECT DISTINCT r->'headers'->>'x-api-key' AS x_api_key FROM jsonb_array_elements(:'recv'::jsonb) AS r;
SELECT llm.drop_credential('cred_p', 'second');
SELECT expect_error($q$SELECT llm.drop_credential('cred_p', 'second')$q$);
SELECT expect_error($q$SELECT llm.set_credential_enabled('cred_p', 'second', true)$q$);

-- argument errors never echo the secret
SELECT expect_error($q$SELECT llm.set_credential('no_such_provider', 'fake-cred-test-PLAINTEXT-0009')$q$);
SELECT expect_error($q$SELECT llm.set_credential('cred_p', '')$q$);
SELECT expect_error($q$SELECT llm.set_credential('cred_p', NULL)$q$);
SELECT expect_error($q$SELECT llm.set_credential(NULL, 'fake-cred-test-PLAINTEXT-0009')$q$);
SELECT expect_error($q$SELECT llm.set_credential('cred_p', E'sk-cred-test\r\nX-Injected: 1')$q$);
SELECT expect_error($q$SELECT llm.set_credential('cred_p', 'fake-cred-test-PLAINTEXT-0009', 'no spaces')$q$);
SELECT expect_error($q$SELECT llm.drop_credential('no_such_provider')$q$);

-- from a server-side file (relative paths: the data directory); the final
-- newline COPY writes is removed
SELECT current_setting('data_directory') AS datadir \gset
\set secret_file :datadir '/cred_secret.txt'
\set empty_file :datadir '/cred_empty.txt'
COPY (SELECT 'fake-cred-test-FROMFILE-0005') TO :'secret_file';
SELECT llm.set_credential_from_file('cred_p', 'cred_secret.txt');
SELECT llm_complete('cred', 'key from a file');
\set recv `python3 test/mock/mockctl.py last 1`
SELECT r->'headers'->>'x-api-key' AS x_api_key FROM jsonb_array_elements(:'recv'::jsonb) AS r;
COPY (SELECT '') TO :'empty_file';
SELECT expect_error($q$SELECT llm.set_credential_from_file('cred_p', 'cred_empty.txt')$q$);
SELECT expect_error($q$SELECT llm.set_credential_from_file('cred_p', 'no_such_file.txt')$q$);

-- a damaged ciphertext: the call fails with 55000 before anything is sent
SELECT ciphertext AS good_ciphertext FROM llm.credentials WHERE provider = 'cred_p' \gset
\set stats `python3 test/mock/mockctl.py stats`
SELECT (:'stats'::jsonb->>'requests')::int AS requests_before \gset
-- one bit of the encrypted secret flipped: authentication fails
UPDATE llm.credentials SET ciphertext = set_byte(ciphertext, 30, get_byte(ciphertext, 30) # 1)
 WHERE provider = 'cred_p';
SELECT expect_error($q$SELECT llm_complete('cred', 'tampered')$q$);
SELECT status, error_code, error FROM llm.requests ORDER BY id DESC LIMIT 1;
-- the key id changed: reported as another master key (ids vary per run)
UPDATE llm.credentials SET ciphertext = overlay(:'good_ciphertext'::bytea PLACING '\x0102030405060708'::bytea FROM 2)
 WHERE provider = 'cred_p';
SELECT regexp_replace(expect_error($q$SELECT llm_complete('cred', 'other key id')$q$),
                      '[0-9a-f]{16}', 'KEYID', 'g') AS error;
-- the ciphertext of another provider
SELECT llm.add_provider('cred_q', 'anthropic', 'http://127.0.0.1:' || :'mock_port');
SELECT llm.set_credential('cred_q', 'fake-cred-test-PLAINTEXT-0006');
UPDATE llm.credentials SET ciphertext = (SELECT ciphertext FROM llm.credentials WHERE provider = 'cred_q')
 WHERE provider = 'cred_p';
SELECT expect_error($q$SELECT llm_complete('cred', 'copied')$q$);
-- truncated, the old format 1 (not bound to an origin), unknown version
UPDATE llm.credentials SET ciphertext = '\x02' WHERE provider = 'cred_p';
SELECT expect_error($q$SELECT llm_complete('cred', 'truncated')$q$);
UPDATE llm.credentials SET ciphertext = set_byte(:'good_ciphertext'::bytea, 0, 1) WHERE provider = 'cred_p';
SELECT expect_error($q$SELECT llm_complete('cred', 'version 1')$q$);
UPDATE llm.credentials SET ciphertext = set_byte(:'good_ciphertext'::bytea, 0, 3) WHERE provider = 'cred_p';
SELECT expect_error($q$SELECT llm_complete('cred', 'version 3')$q$);
-- keys follow base_url: another origin (the same mock, named "localhost")
-- does not get the key; nothing is sent
UPDATE llm.credentials SET ciphertext = :'good_ciphertext' WHERE provider = 'cred_p';
SELECT llm.alter_provider('cred_p', base_url => 'http://localhost:' || :'mock_port');
SELECT regexp_replace(expect_error($q$SELECT llm_complete('cred', 'other origin')$q$),
                      ':[0-9]+\)', ':PORT)') AS error;
-- the same origin written otherwise (scheme and host case) keeps the key
SELECT llm.alter_provider('cred_p', base_url => 'HTTP://127.0.0.1:' || :'mock_port');
\set stats `python3 test/mock/mockctl.py stats`
SELECT (:'stats'::jsonb->>'requests')::int - :requests_before AS requests_sent;
-- the original ciphertext works again
UPDATE llm.credentials SET ciphertext = :'good_ciphertext' WHERE provider = 'cred_p';
SELECT llm_complete('cred', 'repaired');
SELECT llm.alter_provider('cred_p', base_url => 'http://127.0.0.1:' || :'mock_port');

-- roles: llm_admin manages credentials but reads no ciphertext; llm_user
-- and others call models and see routes only
CREATE ROLE regress_cred_admin IN ROLE llm_admin;
CREATE ROLE regress_cred_user IN ROLE llm_user;
CREATE ROLE regress_cred_nobody;
SET ROLE regress_cred_admin;
SELECT llm.set_credential('cred_p', 'fake-cred-test-PLAINTEXT-0007', 'by-admin');
SELECT label, enabled, key_id = llm.master_key_id() AS current_key
  FROM llm.credentials_info WHERE provider = 'cred_p' ORDER BY label;
SELECT expect_error($q$SELECT ciphertext FROM llm.credentials$q$);
SELECT expect_error($q$UPDATE llm.credentials SET enabled = false$q$);
SELECT expect_error($q$SELECT llm.set_credential_from_file('cred_p', 'cred_secret.txt')$q$);
SELECT llm.drop_credential('cred_p', 'by-admin');
SELECT count(*) > 0 AS admin_reads_log FROM llm.requests;
SELECT count(*) > 0 AS admin_reads_health FROM llm.circuit_breakers, llm.provider_load;
RESET ROLE;
SET ROLE regress_cred_user;
SELECT llm_complete('cred', 'from llm_user');
SELECT alias, provider, upstream_model FROM llm.routes WHERE alias = 'cred';
SELECT name, kind FROM llm.providers WHERE name = 'cred_p';
SELECT expect_error($q$SELECT options FROM llm.providers$q$);
SELECT expect_error($q$SELECT llm.set_credential('cred_p', 'fake-cred-test-PLAINTEXT-0008')$q$);
SELECT expect_error($q$SELECT * FROM llm.credentials$q$);
SELECT expect_error($q$SELECT * FROM llm.credentials_info$q$);
SELECT expect_error($q$SELECT llm.drop_credential('cred_p')$q$);
SELECT expect_error($q$SELECT llm.master_key_id()$q$);
SELECT expect_error($q$INSERT INTO llm.routes (alias, provider, upstream_model) VALUES ('x', 'cred_p', 'x')$q$);
RESET ROLE;
-- a role with USAGE on the schema but neither role: EXECUTE is not granted
GRANT USAGE ON SCHEMA llm TO regress_cred_nobody;
SET ROLE regress_cred_nobody;
SELECT expect_error($q$SELECT llm.set_credential('cred_p', 'fake-cred-test-PLAINTEXT-0008')$q$);
SELECT expect_error($q$SELECT llm.set_credential_from_file('cred_p', 'cred_secret.txt')$q$);
SELECT expect_error($q$SELECT * FROM llm.routes$q$);
RESET ROLE;
REVOKE USAGE ON SCHEMA llm FROM regress_cred_nobody;
-- the last key set is still the one in use
SELECT llm_complete('cred', 'still the same key');
\set recv `python3 test/mock/mockctl.py last 1`
SELECT r->'headers'->>'x-api-key' AS x_api_key FROM jsonb_array_elements(:'recv'::jsonb) AS r;

-- no plaintext anywhere in schema llm: every table and view, searched for
-- every secret used above, as text and as hex
CREATE TEMP TABLE cred_secrets (s text);
INSERT INTO cred_secrets
SELECT 'fake-cred-test-PLAINTEXT-000' || i FROM generate_series(1, 9) AS i
UNION ALL SELECT 'fake-cred-test-FROMFILE-0005';
SELECT count(*) >= 5 AS relations_searched,
       sum((xpath('/row/n/text()',
                  query_to_xml(format($f$SELECT count(*) AS n FROM %I.%I AS t, cred_secrets s
                                         WHERE t::text LIKE '%%' || s.s || '%%'
                                            OR t::text LIKE '%%' || encode(convert_to(s.s, 'UTF8'), 'hex') || '%%'$f$,
                                      n.nspname, c.relname), false, true, '')))[1]::text::int) AS rows_with_plaintext
  FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
 WHERE n.nspname = 'llm' AND c.relkind IN ('r', 'v', 'm');

-- dropping the provider drops its credentials
SELECT llm.drop_provider('cred_q');
SELECT llm.drop_provider('cred_p');
SELECT count(*) AS credentials_left FROM llm.credentials WHERE provider IN ('cred_p', 'cred_q');
DROP ROLE regress_cred_admin, regress_cred_user, regress_cred_nobody;

--
-- log_paths: how llm.requests is written.  The worker writes through the
-- executor's simple insert/update path (the logical-replication apply
-- worker's), so whatever an administrator adds to the table is honoured:
-- indexes, triggers, defaults, generated columns, constraints.  A caller
-- finds its own finished row as soon as the call returns.
--
TRUNCATE llm.requests;

-- every row read right after its call is finished (200 calls, no exception)
DO $$
DECLARE a jsonb; s text; bad int := 0;
BEGIN
    FOR i IN 1..200 LOOP
        a := llm_messages('claude', '[{"role": "user", "content": "read my row"}]');
        SELECT status INTO s FROM llm.requests WHERE id = (a->'gateway'->>'request_id')::bigint;
        IF s IS DISTINCT FROM 'ok' THEN bad := bad + 1; END IF;
    END LOOP;
    RAISE NOTICE 'calls whose row was not finished when read: %', bad;
END $$;

-- an index an administrator adds is maintained by the worker's writes, and
-- every index holds exactly the table's rows (amcheck with heapallindexed
-- raises an error otherwise)
CREATE INDEX requests_alias_idx ON llm.requests (alias);
SELECT llm_complete('claude', 'indexed call');
CREATE EXTENSION amcheck;
SELECT c.relname AS index, bt_index_check(c.oid, true)::text = '' AS consistent
  FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid
 WHERE i.indrelid = 'llm.requests'::regclass ORDER BY 1;
SET enable_seqscan = off;
SELECT count(*) AS rows_by_alias FROM llm.requests WHERE alias = 'claude';
RESET enable_seqscan;
DROP INDEX llm.requests_alias_idx;

-- constraints an administrator adds are checked: a call whose row would
-- break one is not sent and fails with 55000; the others go on.  A call
-- that fails before it is sent (unknown alias) keeps its own error and
-- leaves no row that breaks the constraint.
DELETE FROM llm.requests WHERE provider IS NULL;
ALTER TABLE llm.requests ALTER COLUMN provider SET NOT NULL;
SELECT expect_error($q$SELECT llm_complete('no_such_alias', 'unknown alias')$q$);
SELECT count(*) AS rows_without_provider FROM llm.requests WHERE provider IS NULL;
ALTER TABLE llm.requests ALTER COLUMN provider DROP NOT NULL;
ALTER TABLE llm.requests ADD CONSTRAINT tagged CHECK (tags IS NOT NULL) NOT VALID;
SELECT expect_error($q$SELECT llm_complete('claude', 'untagged call')$q$);
SELECT llm_complete('claude', 'tagged call', '{"tags": {"k": 1}}');
SELECT count(*) AS rows_of_untagged_call FROM llm.requests
 WHERE request_body::text LIKE '%untagged call%';
ALTER TABLE llm.requests DROP CONSTRAINT tagged;

-- an AFTER ROW trigger on the log fires for the insert and the update
CREATE TABLE public.audit_copy (id bigint, status text);
-- the worker's writes, and so this trigger, run as llm_gateway_worker
GRANT INSERT ON public.audit_copy TO llm_gateway_worker;
CREATE FUNCTION public.copy_request() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO public.audit_copy VALUES (NEW.id, NEW.status);
    RETURN NEW;
END $$;
CREATE TRIGGER copy_request AFTER INSERT OR UPDATE ON llm.requests
    FOR EACH ROW EXECUTE FUNCTION public.copy_request();
SELECT (llm_messages('claude', '[{"role": "user", "content": "through a trigger"}]')->'gateway'->>'request_id')::bigint AS id \gset
SELECT status, request_body->'messages'->0->>'content' AS content FROM llm.requests WHERE id = :id;
SELECT status FROM public.audit_copy WHERE id = :id ORDER BY status DESC;

-- a column with a default: the worker fills it in as an INSERT would
ALTER TABLE llm.requests ADD COLUMN note text DEFAULT 'set by default';
SELECT (llm_messages('claude', '[{"role": "user", "content": "with a new column"}]')->'gateway'->>'request_id')::bigint AS id \gset
SELECT status, note FROM llm.requests WHERE id = :id;
-- the worker keeps parsed defaults and CHECKs between batches: a changed
-- default (same columns) and a replaced CHECK (same count) are seen at once
ALTER TABLE llm.requests ALTER COLUMN note SET DEFAULT 'changed default';
ALTER TABLE llm.requests ADD CONSTRAINT short_note CHECK (length(note) < 100) NOT VALID;
SELECT (llm_messages('claude', '[{"role": "user", "content": "with a changed default"}]')->'gateway'->>'request_id')::bigint AS id \gset
SELECT status, note FROM llm.requests WHERE id = :id;
ALTER TABLE llm.requests DROP CONSTRAINT short_note;
ALTER TABLE llm.requests ADD CONSTRAINT short_note CHECK (length(note) < 5) NOT VALID;
SELECT expect_error($q$SELECT llm_complete('claude', 'note too long now')$q$);
ALTER TABLE llm.requests DROP CONSTRAINT short_note;

-- a generated column an administrator adds is computed on insert and update
ALTER TABLE llm.requests ADD COLUMN total_tokens bigint
    GENERATED ALWAYS AS (coalesce(input_tokens, 0) + coalesce(output_tokens, 0)) STORED;
SELECT (llm_messages('claude', '[{"role": "user", "content": "four words of prompt"}]')->'gateway'->>'request_id')::bigint AS id \gset
SELECT status, input_tokens, output_tokens, total_tokens FROM llm.requests WHERE id = :id;
ALTER TABLE llm.requests DROP COLUMN total_tokens;

-- a BEFORE trigger that changes the row: the row written is the trigger's
CREATE FUNCTION public.tag_request() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    NEW.tags := coalesce(NEW.tags, '{}') || '{"by": "trigger"}';
    RETURN NEW;
END $$;
CREATE TRIGGER tag_request BEFORE INSERT ON llm.requests
    FOR EACH ROW EXECUTE FUNCTION public.tag_request();
SELECT (llm_messages('claude', '[{"role": "user", "content": "tagged by a trigger"}]')->'gateway'->>'request_id')::bigint AS id \gset
SELECT status, tags FROM llm.requests WHERE id = :id;
DROP TRIGGER tag_request ON llm.requests;
DROP FUNCTION public.tag_request();

DROP TRIGGER copy_request ON llm.requests;
ALTER TABLE llm.requests DROP COLUMN note;
DROP FUNCTION public.copy_request();
DROP TABLE public.audit_copy;
DROP EXTENSION amcheck;

SELECT llm_complete('claude', 'after the changes');
SELECT count(*) FILTER (WHERE status = 'ok') AS ok, count(*) AS calls FROM llm.requests;

--
-- setup: the extension installs, reports its version, and drops cleanly.
--
CREATE EXTENSION llm_gateway;

SELECT llm.version() = extversion AS version_matches, extversion
  FROM pg_extension WHERE extname = 'llm_gateway';

SELECT nspname FROM pg_namespace WHERE nspname = 'llm';

-- settings live under the reserved llm. prefix
SELECT current_setting('llm.database') AS database;
SET llm.database = 'elsewhere';
SET llm.no_such_setting = 1;

-- every object the extension creates carries a comment
SELECT p.oid::regprocedure AS function_without_comment
  FROM pg_proc p JOIN pg_depend d ON d.objid = p.oid AND d.classid = 'pg_proc'::regclass
 WHERE d.refobjid = (SELECT oid FROM pg_extension WHERE extname = 'llm_gateway')
   AND obj_description(p.oid, 'pg_proc') IS NULL;

DROP EXTENSION llm_gateway;
SELECT count(*) AS llm_schemas_left FROM pg_namespace WHERE nspname = 'llm';

CREATE EXTENSION llm_gateway;

-- expect_error(query): the SQLSTATE, message and hint a query fails with,
-- used by the other test files
CREATE FUNCTION public.expect_error(q text) RETURNS text LANGUAGE plpgsql AS $f$
DECLARE st text; msg text; det text; hnt text;
BEGIN
    EXECUTE q;
    RETURN 'no error';
EXCEPTION WHEN OTHERS THEN
    GET STACKED DIAGNOSTICS st = RETURNED_SQLSTATE, msg = MESSAGE_TEXT,
                            det = PG_EXCEPTION_DETAIL, hnt = PG_EXCEPTION_HINT;
    RETURN st || ': ' || msg
        || CASE WHEN det <> '' THEN E'\nDETAIL: ' || det ELSE '' END
        || CASE WHEN hnt <> '' THEN E'\nHINT: ' || hnt ELSE '' END;
END $f$;

-- wait_until(condition): wait (up to 10 s) until a boolean query is true, for
-- what the worker finishes after a statement returned (a cancelled call's row)
CREATE FUNCTION public.wait_until(q text) RETURNS boolean LANGUAGE plpgsql AS $f$
DECLARE ok boolean;
BEGIN
    FOR i IN 1..1000 LOOP
        EXECUTE q INTO ok;
        IF ok THEN RETURN true; END IF;
        PERFORM pg_sleep(0.01);
    END LOOP;
    RETURN false;
END $f$;

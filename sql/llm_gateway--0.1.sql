/* llm_gateway--0.1.sql */

\echo Use "CREATE EXTENSION llm_gateway" to load this file. \quit

CREATE SCHEMA llm;
COMMENT ON SCHEMA llm IS 'llm_gateway configuration, logs, views and admin functions';

CREATE FUNCTION llm.version() RETURNS text
    AS 'MODULE_PATHNAME', 'llm_version'
    LANGUAGE C STRICT STABLE PARALLEL SAFE;
COMMENT ON FUNCTION llm.version() IS 'version of the loaded llm_gateway library';

-----------------------------------------------------------------------------
-- Configuration tables.  Changing any of them tells the worker to reload its
-- route cache when the transaction commits (llm._config_changed()).
-----------------------------------------------------------------------------

CREATE TABLE llm.providers (
    name        text PRIMARY KEY CHECK (name ~ '^[A-Za-z0-9_.-]{1,63}$'),
    kind        text NOT NULL,
    base_url    text NOT NULL CHECK (base_url ~* '^https?://[^/]'),
    region      text,
    options     jsonb NOT NULL DEFAULT '{}' CHECK (jsonb_typeof(options) = 'object'),
    enabled     bool NOT NULL DEFAULT true,
    created_at  timestamptz NOT NULL DEFAULT now()
);
COMMENT ON TABLE llm.providers IS 'LLM providers: protocol kind, base URL, region and per-provider options';

CREATE TABLE llm.routes (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    alias           text NOT NULL CHECK (alias <> ''),
    provider        text NOT NULL REFERENCES llm.providers (name) ON DELETE CASCADE,
    upstream_model  text NOT NULL CHECK (upstream_model <> ''),
    priority        int NOT NULL DEFAULT 0,
    weight          int NOT NULL DEFAULT 1 CHECK (weight >= 0),
    options         jsonb NOT NULL DEFAULT '{}' CHECK (jsonb_typeof(options) = 'object'),
    enabled         bool NOT NULL DEFAULT true,
    created_at      timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX ON llm.routes (alias, priority);
COMMENT ON TABLE llm.routes IS 'route aliases: each alias names one or more (provider, upstream model) targets';

-----------------------------------------------------------------------------
-- The audit log: one row per call, written by the worker in its own
-- transactions, so a caller's ROLLBACK never removes it.
-----------------------------------------------------------------------------

CREATE TABLE llm.requests (
    id                  bigint GENERATED ALWAYS AS IDENTITY (CACHE 32) PRIMARY KEY,
    created_at          timestamptz NOT NULL DEFAULT now(),
    finished_at         timestamptz,
    status              text NOT NULL CHECK (status IN
                          ('pending', 'ok', 'error', 'cancelled', 'timeout', 'unknown')),
    alias               text NOT NULL,
    provider            text,
    upstream_model      text,
    role_name           text NOT NULL,
    attempts            int NOT NULL DEFAULT 0,
    http_status         int,
    input_tokens        bigint,
    output_tokens       bigint,
    cache_read_tokens   bigint,
    cache_write_tokens  bigint,
    stop_reason         text,
    cost_usd            numeric,
    latency_ms          double precision,
    error_code          text,
    error               text,
    attempts_detail     jsonb,
    tags                jsonb,
    request_body        jsonb,
    response_body       text
);
CREATE INDEX ON llm.requests (created_at);
CREATE INDEX ON llm.requests (status) WHERE status = 'pending';
COMMENT ON TABLE llm.requests IS 'audit log: one row per call, committed by the worker before the provider is contacted';
COMMENT ON COLUMN llm.requests.provider IS 'the provider of the target that answered (or was tried last)';
COMMENT ON COLUMN llm.requests.cost_usd IS 'cost from the answering target''s prices (route options price_input, price_output, price_cache_read, price_cache_write, USD per million tokens); NULL without prices';
COMMENT ON COLUMN llm.requests.attempts_detail IS 'one object per attempt: route_id, provider, model, credential (the key''s label, when the provider has keys), http_status, error_code, latency_ms';

SELECT pg_catalog.pg_extension_config_dump('llm.providers', '');
SELECT pg_catalog.pg_extension_config_dump('llm.routes', '');
SELECT pg_catalog.pg_extension_config_dump('llm.requests', '');
SELECT pg_catalog.pg_extension_config_dump('llm.routes_id_seq', '');
SELECT pg_catalog.pg_extension_config_dump('llm.requests_id_seq', '');

REVOKE ALL ON llm.providers, llm.routes, llm.requests FROM PUBLIC;

CREATE FUNCTION llm._config_changed() RETURNS trigger
    AS 'MODULE_PATHNAME', 'llm_config_changed'
    LANGUAGE C;
COMMENT ON FUNCTION llm._config_changed() IS 'trigger: makes the worker reload routes, providers and credentials at commit';

CREATE TRIGGER config_changed AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON llm.providers
    FOR EACH STATEMENT EXECUTE FUNCTION llm._config_changed();
CREATE TRIGGER config_changed AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON llm.routes
    FOR EACH STATEMENT EXECUTE FUNCTION llm._config_changed();

-----------------------------------------------------------------------------
-- Admin functions
-----------------------------------------------------------------------------

CREATE FUNCTION llm.provider_kinds() RETURNS text[]
    AS 'MODULE_PATHNAME', 'llm_provider_kinds'
    LANGUAGE C STRICT IMMUTABLE PARALLEL SAFE;
COMMENT ON FUNCTION llm.provider_kinds() IS 'provider kinds (wire protocols) this build of llm_gateway speaks';

CREATE FUNCTION llm._check_provider_args(base_url text, options jsonb, changing bool)
RETURNS void
LANGUAGE plpgsql IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    k text;
    v jsonb;
    h text;
    hv jsonb;
    lim numeric;
BEGIN
    -- changing: NULL means "keep the current value" (alter_provider)
    IF (base_url IS NULL AND NOT changing) OR base_url !~* '^https?://[^/]' THEN
        RAISE EXCEPTION 'base_url "%" is not an http or https URL', base_url
            USING ERRCODE = '22023', HINT = 'Give the provider''s base URL, e.g. https://api.anthropic.com.';
    END IF;
    -- no user info, query, fragment, blanks or backslashes: the host must be the one it reads as
    IF base_url !~* '^https?://[^/?#@\\[:space:][:cntrl:]]+(/[^?#\\[:space:][:cntrl:]]*)?$' THEN
        RAISE EXCEPTION 'base_url "%" must be scheme://host[:port][/path], without user info, query or fragment', base_url
            USING ERRCODE = '22023', HINT = 'Give the provider''s base URL, e.g. https://api.anthropic.com.';
    END IF;
    IF (options IS NULL AND NOT changing) OR jsonb_typeof(options) <> 'object' THEN
        RAISE EXCEPTION 'options must be a JSON object'
            USING ERRCODE = '22023', HINT = 'Pass ''{}'' for no options.';
    END IF;
    FOR k, v IN SELECT * FROM jsonb_each(coalesce(options, '{}')) LOOP
        IF k IN ('max_concurrency', 'requests_per_minute', 'timeout_ms', 'embed_batch_size') THEN
            lim := (jsonb_build_object('max_concurrency', 100000, 'requests_per_minute', 100000000,
                                       'timeout_ms', 86400000, 'embed_batch_size', 2048) ->> k)::numeric;
            IF jsonb_typeof(v) <> 'number' OR v::text::numeric <> trunc(v::text::numeric)
               OR v::text::numeric < 0 OR v::text::numeric > lim THEN
                RAISE EXCEPTION 'provider option "%" must be an integer from 0 to %, not %', k, lim, v
                    USING ERRCODE = '22023', HINT = '0 means no limit.';
            END IF;
        ELSIF k = 'headers' THEN
            IF jsonb_typeof(v) <> 'object' THEN
                RAISE EXCEPTION 'provider option "headers" must be an object of header names and string values'
                    USING ERRCODE = '22023', HINT = 'For example {"headers": {"OpenAI-Beta": "assistants=v2"}}.';
            END IF;
            FOR h, hv IN SELECT * FROM jsonb_each(v) LOOP
                IF h !~ '^[!#$%&''*+.^_`|~0-9A-Za-z-]+$' THEN
                    RAISE EXCEPTION 'invalid header name "%" in provider option "headers"', h
                        USING ERRCODE = '22023',
                              HINT = 'Header names are letters, digits and the characters !#$%&''*+-.^_`|~.';
                END IF;
                -- the worker refuses the same names (src/providers/provider.c)
                IF lower(h) IN ('authorization', 'x-api-key', 'api-key', 'x-goog-api-key',
                                'proxy-authorization', 'host', 'content-length', 'transfer-encoding',
                                'accept-encoding', 'connection', 'content-type', 'cookie', 'te',
                                'upgrade', 'expect', 'anthropic-version') THEN
                    RAISE EXCEPTION 'provider option "headers" cannot set reserved header "%"', lower(h)
                        USING ERRCODE = '22023',
                              DETAIL = 'Credential and framing headers are set by the gateway only.',
                              HINT = 'Store keys with llm.set_credential(); anthropic_version is an option of its own.';
                END IF;
                IF jsonb_typeof(hv) <> 'string' OR (hv #>> '{}') ~ '[\x01-\x08\x0a-\x1f\x7f]' THEN
                    RAISE EXCEPTION 'header "%" in provider option "headers" must be a single-line string', h
                        USING ERRCODE = '22023';
                END IF;
            END LOOP;
        ELSIF k = 'token_url' THEN
            -- kind vertex's OAuth token endpoint; llm.allowed_hosts applies to it at fetch time
            IF jsonb_typeof(v) <> 'string' OR (v #>> '{}') !~* '^https?://[^/?#@\\[:space:][:cntrl:]]+(/[^?#\\[:space:][:cntrl:]]*)?$' THEN
                RAISE EXCEPTION 'provider option "token_url" must be an http or https URL without user info, query or fragment, not %', v
                    USING ERRCODE = '22023';
            END IF;
        ELSIF k IN ('anthropic_version', 'organization', 'project', 'max_tokens_field', 'api_version') THEN
            IF jsonb_typeof(v) <> 'string' OR (v #>> '{}') ~ '[\x01-\x1f\x7f]' THEN
                RAISE EXCEPTION 'provider option "%" must be a single-line string, not %', k, v
                    USING ERRCODE = '22023';
            END IF;
        END IF;
    END LOOP;
END
$$;
COMMENT ON FUNCTION llm._check_provider_args(text, jsonb, bool) IS 'rejects a bad base URL, non-object options, reserved or malformed headers and out-of-range numeric options of a provider';

CREATE FUNCTION llm._check_weight(weight int, changing bool) RETURNS void
LANGUAGE plpgsql IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF (weight IS NULL AND NOT changing) OR weight < 0 THEN
        RAISE EXCEPTION 'weight must be zero or more, not %', weight
            USING ERRCODE = '22023', HINT = 'Weights split traffic inside a priority group; 0 disables the target.';
    END IF;
END
$$;
COMMENT ON FUNCTION llm._check_weight(int, bool) IS 'rejects a negative (or, for a new target, missing) weight';

CREATE FUNCTION llm.add_provider(name text, kind text, base_url text,
                                 region text DEFAULT NULL, options jsonb DEFAULT '{}')
RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF NOT (kind = ANY (llm.provider_kinds())) THEN
        RAISE EXCEPTION 'provider kind "%" is not supported', kind
            USING ERRCODE = '22023',
                  HINT = format('Use one of: %s.', array_to_string(llm.provider_kinds(), ', '));
    END IF;
    PERFORM llm._check_provider_args(base_url, options, false);
    INSERT INTO llm.providers (name, kind, base_url, region, options)
    VALUES (add_provider.name, add_provider.kind, rtrim(add_provider.base_url, '/'),
            add_provider.region, add_provider.options);
EXCEPTION WHEN unique_violation THEN
    RAISE EXCEPTION 'provider "%" already exists', add_provider.name
        USING ERRCODE = '42710', HINT = 'Drop it with llm.drop_provider() first, or choose another name.';
END
$$;
COMMENT ON FUNCTION llm.add_provider(text, text, text, text, jsonb) IS 'registers an LLM provider (kind, base URL, region, options)';

CREATE FUNCTION llm.drop_provider(name text) RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    DELETE FROM llm.providers p WHERE p.name = drop_provider.name;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'provider "%" does not exist', drop_provider.name
            USING ERRCODE = '42704', HINT = 'See llm.providers for the registered providers.';
    END IF;
END
$$;
COMMENT ON FUNCTION llm.drop_provider(text) IS 'removes a provider with its credential and routes';

CREATE FUNCTION llm._check_route_options(options jsonb) RETURNS bool
LANGUAGE plpgsql IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    k text;
    v jsonb;
    n numeric;
    lo numeric;
    hi numeric;
BEGIN
    IF options IS NULL OR jsonb_typeof(options) <> 'object' THEN
        RAISE EXCEPTION 'options must be a JSON object'
            USING ERRCODE = '22023', HINT = 'Pass ''{}'' for no options.';
    END IF;
    -- every number is bounded here, so the worker's arithmetic on them
    -- (cost, backoff, breaker) cannot overflow
    FOR k, v IN SELECT * FROM jsonb_each(options) LOOP
        IF k IN ('price_input', 'price_output', 'price_cache_read', 'price_cache_write') THEN
            IF jsonb_typeof(v) = 'number' THEN
                n := v::text::numeric;
            END IF;
            IF jsonb_typeof(v) <> 'number' OR n < 0 OR n > 1000000 OR scale(n) > 10 THEN
                RAISE EXCEPTION 'route option "%" must be a number of USD per million tokens between 0 and 1000000 with at most 10 decimal places, not %',
                                k, left(v::text, 40)
                    USING ERRCODE = '22023', HINT = 'For example {"price_input": 3, "price_output": 15}.';
            END IF;
        ELSIF k IN ('max_tokens', 'default_max_tokens', 'max_attempts', 'breaker_failures', 'breaker_cooldown_ms',
                    'context_window') THEN
            -- context_window: the model's input + output tokens, which bounds a conversation's history
            lo := CASE WHEN k LIKE 'breaker%' THEN 0 ELSE 1 END;
            hi := CASE k WHEN 'max_attempts' THEN 100
                         WHEN 'breaker_failures' THEN 1000000
                         WHEN 'breaker_cooldown_ms' THEN 2147483647
                         WHEN 'context_window' THEN 100000000
                         ELSE 1048576 END;
            IF jsonb_typeof(v) = 'number' THEN
                n := v::text::numeric;
            END IF;
            IF jsonb_typeof(v) <> 'number' OR n < lo OR n > hi OR n <> trunc(n) THEN
                RAISE EXCEPTION 'route option "%" must be an integer between % and %, not %', k, lo, hi, left(v::text, 40)
                    USING ERRCODE = '22023',
                          HINT = CASE WHEN k = 'breaker_failures' THEN 'breaker_failures 0 disables the breaker.'
                                      ELSE 'Give a whole number in that range.' END;
            END IF;
        ELSIF k = 'dimensions' THEN
            -- the embedding size the target returns; targets of one alias must agree (llm._check_embed_route)
            IF jsonb_typeof(v) = 'number' THEN
                n := v::text::numeric;
            END IF;
            IF jsonb_typeof(v) <> 'number' OR n < 1 OR n > 65536 OR n <> trunc(n) THEN
                RAISE EXCEPTION 'route option "dimensions" must be an integer between 1 and 65536, not %', left(v::text, 40)
                    USING ERRCODE = '22023', HINT = 'Give the size of the vectors the target returns, e.g. {"dimensions": 1536}.';
            END IF;
        ELSIF k = 'retry_unreadable' THEN
            IF jsonb_typeof(v) <> 'boolean' THEN
                RAISE EXCEPTION 'route option "%" must be true or false, not %', k, left(v::text, 40)
                    USING ERRCODE = '22023', HINT = 'true lets the gateway retry after an answer it could not read (the provider may bill twice).';
            END IF;
        ELSIF k = 'idempotency_header' THEN
            IF jsonb_typeof(v) <> 'string' OR v #>> '{}' !~ '^[A-Za-z][A-Za-z0-9-]{0,63}$'
               OR lower(v #>> '{}') IN ('authorization', 'x-api-key', 'api-key', 'host', 'content-length',
                                       'content-type', 'transfer-encoding', 'accept-encoding', 'connection',
                                       'anthropic-version', 'x-goog-api-key', 'expect', 'te', 'upgrade') THEN
                RAISE EXCEPTION 'route option "%" must name a header that is not set by the gateway, not %', k, left(v::text, 40)
                    USING ERRCODE = '22023', HINT = 'For example {"idempotency_header": "Idempotency-Key"}.';
            END IF;
        ELSE
            RAISE EXCEPTION 'unknown route option "%"', k
                USING ERRCODE = '22023',
                      HINT = 'Route options: price_input, price_output, price_cache_read, price_cache_write, max_tokens, default_max_tokens, max_attempts, breaker_failures, breaker_cooldown_ms, retry_unreadable, idempotency_header, dimensions, context_window.';
        END IF;
    END LOOP;
    RETURN true;
END
$$;
COMMENT ON FUNCTION llm._check_route_options(jsonb) IS 'rejects unknown, ill-typed or out-of-range route target options (raises 22023 naming the option; true otherwise)';

-- The same check on every row written, so a direct UPDATE of llm.routes
-- (llm_admin may write the table) cannot store what the functions refuse;
-- the function raises its own 22023 message rather than a bare check violation.
ALTER TABLE llm.routes ADD CONSTRAINT routes_options_valid CHECK (llm._check_route_options(options));

CREATE FUNCTION llm.add_route(alias text, provider text, upstream_model text,
                              priority int DEFAULT 0, weight int DEFAULT 1,
                              options jsonb DEFAULT '{}')
RETURNS bigint
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    new_id bigint;
BEGIN
    IF NOT EXISTS (SELECT 1 FROM llm.providers p WHERE p.name = add_route.provider) THEN
        RAISE EXCEPTION 'provider "%" does not exist', add_route.provider
            USING ERRCODE = '42704', HINT = 'Register it with llm.add_provider() first.';
    END IF;
    IF alias IS NULL OR alias = '' OR upstream_model IS NULL OR upstream_model = '' THEN
        RAISE EXCEPTION 'alias and upstream_model must not be empty'
            USING ERRCODE = '22023', HINT = 'Name the alias SQL will use and the provider''s model id.';
    END IF;
    PERFORM llm._check_weight(weight, false);
    PERFORM llm._check_route_options(options);
    INSERT INTO llm.routes (alias, provider, upstream_model, priority, weight, options)
    VALUES (add_route.alias, add_route.provider, add_route.upstream_model,
            coalesce(add_route.priority, 0), add_route.weight, add_route.options)
    RETURNING id INTO new_id;
    RETURN new_id;
END
$$;
COMMENT ON FUNCTION llm.add_route(text, text, text, int, int, jsonb) IS 'adds a target (provider, upstream model) to a route alias; returns the target id';

CREATE FUNCTION llm.drop_route(alias text) RETURNS int
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    n int;
BEGIN
    DELETE FROM llm.routes r WHERE r.alias = drop_route.alias;
    GET DIAGNOSTICS n = ROW_COUNT;
    IF n = 0 THEN
        RAISE EXCEPTION 'model alias "%" does not exist', drop_route.alias
            USING ERRCODE = '42704', HINT = 'See llm.routes for the defined aliases.';
    END IF;
    RETURN n;
END
$$;
COMMENT ON FUNCTION llm.drop_route(text) IS 'removes every target of a route alias; returns how many';

REVOKE ALL ON FUNCTION llm.add_provider(text, text, text, text, jsonb),
                       llm.drop_provider(text),
                       llm.add_route(text, text, text, int, int, jsonb),
                       llm.drop_route(text)
    FROM PUBLIC;

-----------------------------------------------------------------------------
-- User functions (in the extension's schema)
-----------------------------------------------------------------------------

CREATE FUNCTION llm_messages(model text, history jsonb, options jsonb DEFAULT '{}')
RETURNS jsonb
    AS 'MODULE_PATHNAME', 'llm_messages'
    LANGUAGE C VOLATILE PARALLEL UNSAFE;
COMMENT ON FUNCTION llm_messages(text, jsonb, jsonb) IS 'one call to the model alias with a Messages history; returns the answer message plus a gateway key';

CREATE FUNCTION llm_complete(model text, prompt text, options jsonb DEFAULT '{}')
RETURNS text
    AS 'MODULE_PATHNAME', 'llm_complete'
    LANGUAGE C VOLATILE PARALLEL UNSAFE;
COMMENT ON FUNCTION llm_complete(text, text, jsonb) IS 'one call to the model alias with a single user prompt; returns the joined text of the answer';

-- Asynchronous calls by hand: handles are session-local (1, 2, 3, ...),
-- not llm.requests ids (docs/design.md §4).
CREATE FUNCTION llm_submit(model text, history jsonb, options jsonb DEFAULT '{}')
RETURNS bigint
    AS 'MODULE_PATHNAME', 'llm_submit'
    LANGUAGE C VOLATILE PARALLEL UNSAFE;
COMMENT ON FUNCTION llm_submit(text, jsonb, jsonb) IS 'starts one call like llm_messages and returns at once with a handle of this session for llm_await, llm_await_any or llm_cancel';

CREATE FUNCTION llm_await(handle bigint, timeout_ms int DEFAULT NULL)
RETURNS jsonb
    AS 'MODULE_PATHNAME', 'llm_await'
    LANGUAGE C VOLATILE PARALLEL UNSAFE;
COMMENT ON FUNCTION llm_await(bigint, int) IS 'waits for the call of a handle and returns its answer as llm_messages does (or raises its error); a timeout raises LL009 and keeps the call';

CREATE FUNCTION llm_await_any(handles bigint[], OUT handle bigint, OUT answer jsonb)
RETURNS record
    AS 'MODULE_PATHNAME', 'llm_await_any'
    LANGUAGE C VOLATILE PARALLEL UNSAFE;
COMMENT ON FUNCTION llm_await_any(bigint[]) IS 'waits for the first of the handles to finish and returns that handle with its answer (or raises its error)';

CREATE FUNCTION llm_cancel(handle bigint)
RETURNS boolean
    AS 'MODULE_PATHNAME', 'llm_cancel'
    LANGUAGE C VOLATILE PARALLEL UNSAFE;
COMMENT ON FUNCTION llm_cancel(bigint) IS 'aborts the call of a handle (logged cancelled); true if it was still in flight';

CREATE FUNCTION llm.gateway_status(OUT worker_pid int, OUT slots int, OUT slots_in_use int,
                                   OUT submitted bigint, OUT completed bigint,
                                   OUT abandoned bigint, OUT waited_for_slot bigint,
                                   OUT flusher_pid int, OUT quota_checked_calls bigint,
                                   OUT quota_check_us double precision,
                                   OUT rolled_up_calls bigint, OUT rollup_us double precision)
    AS 'MODULE_PATHNAME', 'llm_gateway_status'
    LANGUAGE C STRICT VOLATILE PARALLEL SAFE;
COMMENT ON FUNCTION llm.gateway_status() IS 'the worker''s pid (NULL when down), the call channel''s counters, the log flusher''s pid (NULL when down), the worker CPU time quota admission and settling took per call, and the CPU time the usage rollup took per call it counted (since the server started)';
-----------------------------------------------------------------------------
-- Diagnostic adapter functions (src/adapter_sql.c).  They drive a provider
-- adapter directly, with no network and no configuration tables: what the
-- gateway would send for a request, and how it reads a provider's answer.
-- Fixture tests replay recorded provider answers through them.  Admin only:
-- a secret passed here appears in the query text, so use a dummy value.
-----------------------------------------------------------------------------

CREATE FUNCTION llm.adapter_build_request(
    kind text,
    request jsonb,
    upstream_model text,
    secret text DEFAULT NULL,
    provider_options jsonb DEFAULT '{}',
    route_options jsonb DEFAULT '{}',
    base_url text DEFAULT 'http://provider.invalid')
RETURNS jsonb
    AS 'MODULE_PATHNAME', 'llm_adapter_build_request'
    LANGUAGE C VOLATILE PARALLEL SAFE;
COMMENT ON FUNCTION llm.adapter_build_request(text, jsonb, text, text, jsonb, jsonb, text) IS
    'the HTTP request (url, headers with the secret redacted, body) a provider kind''s adapter builds from a canonical request; no network';
REVOKE ALL ON FUNCTION llm.adapter_build_request(text, jsonb, text, text, jsonb, jsonb, text) FROM PUBLIC;

CREATE FUNCTION llm.adapter_parse_response(
    kind text,
    status int,
    body text,
    headers jsonb DEFAULT '{}')
RETURNS jsonb
    AS 'MODULE_PATHNAME', 'llm_adapter_parse_response'
    LANGUAGE C STRICT VOLATILE PARALLEL SAFE;
COMMENT ON FUNCTION llm.adapter_parse_response(text, int, text, jsonb) IS
    'a provider answer (status, body, headers) read by a provider kind''s adapter: the canonical answer parts, or the error the gateway would report; no network';
REVOKE ALL ON FUNCTION llm.adapter_parse_response(text, int, text, jsonb) FROM PUBLIC;

-----------------------------------------------------------------------------
-- Route management, circuit breakers and provider load
-----------------------------------------------------------------------------

CREATE FUNCTION llm.alter_route(target_id bigint, priority int DEFAULT NULL, weight int DEFAULT NULL,
                                options jsonb DEFAULT NULL, enabled bool DEFAULT NULL)
RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    PERFORM llm._check_weight(weight, true);
    IF options IS NOT NULL THEN
        PERFORM llm._check_route_options(options);
    END IF;
    UPDATE llm.routes r
       SET priority = coalesce(alter_route.priority, r.priority),
           weight = coalesce(alter_route.weight, r.weight),
           options = coalesce(alter_route.options, r.options),
           enabled = coalesce(alter_route.enabled, r.enabled)
     WHERE r.id = alter_route.target_id;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'route target % does not exist', target_id
            USING ERRCODE = '42704', HINT = 'See llm.route_targets for the targets and their ids.';
    END IF;
END
$$;
COMMENT ON FUNCTION llm.alter_route(bigint, int, int, jsonb, bool) IS 'changes a route target''s priority, weight, options or enabled flag (NULL keeps the value); applies to the next call';

CREATE FUNCTION llm.drop_target(target_id bigint) RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    DELETE FROM llm.routes r WHERE r.id = drop_target.target_id;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'route target % does not exist', target_id
            USING ERRCODE = '42704', HINT = 'See llm.route_targets for the targets and their ids.';
    END IF;
END
$$;
COMMENT ON FUNCTION llm.drop_target(bigint) IS 'removes one target of a route alias';

CREATE FUNCTION llm.alter_provider(name text, base_url text DEFAULT NULL, region text DEFAULT NULL,
                                   options jsonb DEFAULT NULL, enabled bool DEFAULT NULL)
RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    PERFORM llm._check_provider_args(base_url, options, true);
    UPDATE llm.providers p
       SET base_url = coalesce(rtrim(alter_provider.base_url, '/'), p.base_url),
           region = coalesce(alter_provider.region, p.region),
           options = coalesce(alter_provider.options, p.options),
           enabled = coalesce(alter_provider.enabled, p.enabled)
     WHERE p.name = alter_provider.name;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'provider "%" does not exist', alter_provider.name
            USING ERRCODE = '42704', HINT = 'See llm.providers for the registered providers.';
    END IF;
END
$$;
COMMENT ON FUNCTION llm.alter_provider(text, text, text, jsonb, bool) IS 'changes a provider''s base URL, region, options or enabled flag (NULL keeps the value); a disabled provider''s targets are skipped; applies to the next call';

REVOKE ALL ON FUNCTION llm.alter_route(bigint, int, int, jsonb, bool), llm.drop_target(bigint),
                       llm.alter_provider(text, text, text, jsonb, bool) FROM PUBLIC;

CREATE FUNCTION llm._circuit_state(OUT route_id bigint, OUT state text, OUT consecutive_failures int,
                                   OUT open_until timestamptz, OUT successes bigint, OUT failures bigint,
                                   OUT last_failure_at timestamptz)
RETURNS SETOF record
    AS 'MODULE_PATHNAME', 'llm_circuit_state'
    LANGUAGE C STRICT VOLATILE;
COMMENT ON FUNCTION llm._circuit_state() IS 'circuit breaker state of every target the worker has tried (shared memory)';

CREATE FUNCTION llm._provider_load(OUT provider text, OUT in_flight int, OUT queued int,
                                   OUT max_concurrency int, OUT requests_per_minute int,
                                   OUT throttled bigint)
RETURNS SETOF record
    AS 'MODULE_PATHNAME', 'llm_provider_load'
    LANGUAGE C STRICT VOLATILE;
COMMENT ON FUNCTION llm._provider_load() IS 'calls in flight and queued per provider (shared memory)';

CREATE FUNCTION llm._reset_circuit(route_ids bigint[]) RETURNS int
    AS 'MODULE_PATHNAME', 'llm_reset_circuit'
    LANGUAGE C STRICT VOLATILE;
COMMENT ON FUNCTION llm._reset_circuit(bigint[]) IS 'closes the circuit breakers of these targets';

CREATE FUNCTION llm.reset_circuit(alias text DEFAULT NULL) RETURNS int
LANGUAGE sql
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT llm._reset_circuit(array(SELECT r.id FROM llm.routes r
                                     WHERE reset_circuit.alias IS NULL OR r.alias = reset_circuit.alias))
$$;
COMMENT ON FUNCTION llm.reset_circuit(text) IS 'closes the circuit breakers of an alias''s targets (all aliases when NULL); returns how many were tracked';

REVOKE ALL ON FUNCTION llm._reset_circuit(bigint[]), llm.reset_circuit(text) FROM PUBLIC;

CREATE VIEW llm.circuit_breakers AS
SELECT r.alias, r.id AS target_id, r.provider, r.upstream_model,
       coalesce(c.state, 'closed') AS state, coalesce(c.consecutive_failures, 0) AS consecutive_failures,
       c.open_until, coalesce(c.successes, 0) AS successes, coalesce(c.failures, 0) AS failures,
       c.last_failure_at
  FROM llm.routes r LEFT JOIN llm._circuit_state() c ON c.route_id = r.id;
COMMENT ON VIEW llm.circuit_breakers IS 'each route target''s circuit breaker: closed, open (skipped until open_until) or half-open';

CREATE VIEW llm.provider_load AS
SELECT p.name AS provider, p.region,
       nullif(p.options->>'max_concurrency', '')::int AS max_concurrency,
       nullif(p.options->>'requests_per_minute', '')::int AS requests_per_minute,
       coalesce(l.in_flight, 0) AS in_flight, coalesce(l.queued, 0) AS queued,
       coalesce(l.throttled, 0) AS throttled
  FROM llm.providers p LEFT JOIN llm._provider_load() l ON l.provider = p.name;
COMMENT ON VIEW llm.provider_load IS 'per provider: its limits, calls in flight, calls queued by the worker, and how often calls waited';

CREATE VIEW llm.route_targets AS
SELECT r.alias, r.id AS target_id, r.priority, r.weight, r.enabled, r.provider,
       p.enabled AS provider_enabled, p.kind, p.region,
       r.upstream_model, r.options, coalesce(c.state, 'closed') AS circuit,
       nullif(p.options->>'max_concurrency', '')::int AS max_concurrency,
       nullif(p.options->>'requests_per_minute', '')::int AS requests_per_minute
  FROM llm.routes r
  JOIN llm.providers p ON p.name = r.provider
  LEFT JOIN llm._circuit_state() c ON c.route_id = r.id
 ORDER BY r.alias, r.priority, r.id;
COMMENT ON VIEW llm.route_targets IS 'each alias with its targets, health and provider limits; readable by every role';

GRANT SELECT ON llm.route_targets TO PUBLIC;
REVOKE ALL ON llm.circuit_breakers, llm.provider_load FROM PUBLIC;
REVOKE ALL ON FUNCTION llm._provider_load() FROM PUBLIC;

-----------------------------------------------------------------------------
-- Credentials, encrypted at rest (src/common/credentials.c, src/backend/credentials_sql.c),
-- and the two roles.
--
-- llm.credentials holds AES-256-GCM ciphertext under the master key named by
-- llm.master_key_file; only the worker decrypts.  Several credentials per
-- provider (labels) allow key rotation without downtime and load spreading.
-- Nobody but the owner reads the table: admins see llm.credentials_info and
-- write through the functions below.
--
-- This part goes at the END of the install script: its grants cover every
-- function of schema llm defined before it.
-----------------------------------------------------------------------------

CREATE TABLE llm.credentials (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    provider    text NOT NULL REFERENCES llm.providers (name) ON DELETE CASCADE,
    label       text NOT NULL DEFAULT 'default' CHECK (label ~ '^[A-Za-z0-9_.:-]{1,63}$'),
    ciphertext  bytea NOT NULL,
    key_id      text NOT NULL CHECK (key_id ~ '^[0-9a-f]{16}$'),
    enabled     bool NOT NULL DEFAULT true,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now(),
    UNIQUE (provider, label)
);
COMMENT ON TABLE llm.credentials IS 'provider secrets as AES-256-GCM ciphertext under the master key (llm.master_key_file); readable only by the owner, decrypted only by the worker';
COMMENT ON COLUMN llm.credentials.label IS 'name of this key of the provider: several enabled keys are used in turn, and a new label allows rotation without downtime';
COMMENT ON COLUMN llm.credentials.ciphertext IS 'version 2 || key id (8) || provider id (4) || origin id (4) || nonce (12) || AES-256-GCM ciphertext || tag (16); bound to the provider and to the origin of its base_url when stored';
COMMENT ON COLUMN llm.credentials.key_id IS 'first 8 bytes (hex) of SHA-256 of the master key that encrypted the row; compare with llm.master_key_id()';
COMMENT ON COLUMN llm.credentials.enabled IS 'false keeps the credential but the worker does not use it';

SELECT pg_catalog.pg_extension_config_dump('llm.credentials', '');
SELECT pg_catalog.pg_extension_config_dump('llm.credentials_id_seq', '');
REVOKE ALL ON llm.credentials FROM PUBLIC;

CREATE TRIGGER config_changed AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON llm.credentials
    FOR EACH STATEMENT EXECUTE FUNCTION llm._config_changed();

CREATE VIEW llm.credentials_info AS
    SELECT provider, label, key_id, enabled, created_at, updated_at
      FROM llm.credentials;
COMMENT ON VIEW llm.credentials_info IS 'which credentials exist (provider, label, master key id, enabled), never the ciphertext';
REVOKE ALL ON llm.credentials_info FROM PUBLIC;

-- Not SECURITY DEFINER (inside one, current_user is the owner, so the
-- caller could not be checked): the C functions check that the caller is a
-- superuser or has the privileges of llm_admin, then write as the table
-- owner.  Their errors never copy the statement (and a secret in it) into
-- the server log (errhidestmt).
CREATE FUNCTION llm.set_credential(provider text, secret text, label text DEFAULT 'default')
RETURNS void
    AS 'MODULE_PATHNAME', 'llm_set_credential'
    LANGUAGE C VOLATILE PARALLEL UNSAFE
    SET search_path = pg_catalog, pg_temp;
COMMENT ON FUNCTION llm.set_credential(text, text, text) IS
    'encrypts and stores (or replaces) the secret the worker sends to a provider, under a label (default ''default''); superuser or llm_admin';

CREATE FUNCTION llm.set_credential_from_file(provider text, path text, label text DEFAULT 'default')
RETURNS void
    AS 'MODULE_PATHNAME', 'llm_set_credential_from_file'
    LANGUAGE C VOLATILE PARALLEL UNSAFE
    SET search_path = pg_catalog, pg_temp;
COMMENT ON FUNCTION llm.set_credential_from_file(text, text, text) IS
    'like set_credential, with the secret read from a server-side file (trailing newline removed), so it never appears in SQL text; also needs superuser or pg_read_server_files';

CREATE FUNCTION llm.drop_credential(provider text, label text DEFAULT NULL)
RETURNS int
    AS 'MODULE_PATHNAME', 'llm_drop_credential'
    LANGUAGE C VOLATILE PARALLEL UNSAFE
    SET search_path = pg_catalog, pg_temp;
COMMENT ON FUNCTION llm.drop_credential(text, text) IS
    'removes a provider''s credential of that label, or all of them when label is NULL; returns how many';

CREATE FUNCTION llm.set_credential_enabled(provider text, label text, enabled bool)
RETURNS void
    AS 'MODULE_PATHNAME', 'llm_set_credential_enabled'
    LANGUAGE C VOLATILE PARALLEL UNSAFE
    SET search_path = pg_catalog, pg_temp;
COMMENT ON FUNCTION llm.set_credential_enabled(text, text, bool) IS
    'takes a credential out of use (false) or back (true) without forgetting it';

CREATE FUNCTION llm.master_key_id() RETURNS text
    AS 'MODULE_PATHNAME', 'llm_master_key_id'
    LANGUAGE C VOLATILE PARALLEL SAFE
    SET search_path = pg_catalog, pg_temp;
COMMENT ON FUNCTION llm.master_key_id() IS
    'id of the current master key (as in llm.credentials_info.key_id); errors when llm.master_key_file is unusable';

REVOKE ALL ON FUNCTION llm.set_credential(text, text, text),
                       llm.set_credential_from_file(text, text, text),
                       llm.drop_credential(text, text),
                       llm.set_credential_enabled(text, text, bool),
                       llm.master_key_id()
    FROM PUBLIC;

-----------------------------------------------------------------------------
-- Roles.  llm_admin manages providers, routes and credentials and reads the
-- log; llm_user calls models and sees the routes.  Roles belong to the
-- cluster, so they are created only if missing and outlive DROP EXTENSION.
-- Grant them to login roles: GRANT llm_admin TO alice;
-----------------------------------------------------------------------------

DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = 'llm_admin') THEN
        CREATE ROLE llm_admin NOLOGIN;
        COMMENT ON ROLE llm_admin IS 'llm_gateway administrators: providers, routes, credentials, the request log';
    END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = 'llm_user') THEN
        CREATE ROLE llm_user NOLOGIN;
        COMMENT ON ROLE llm_user IS 'llm_gateway users: call models (llm_messages, llm_complete) and see the routes';
    END IF;
END
$$;

GRANT USAGE ON SCHEMA llm TO llm_admin, llm_user;

-- every function of schema llm defined so far: admin functions, status,
-- diagnostics (trigger functions cannot be called directly anyway)
GRANT EXECUTE ON ALL FUNCTIONS IN SCHEMA llm TO llm_admin;
GRANT SELECT, INSERT, UPDATE, DELETE ON llm.providers, llm.routes TO llm_admin;
GRANT SELECT ON llm.requests, llm.credentials_info, llm.circuit_breakers, llm.provider_load TO llm_admin;
-- no privilege on llm.credentials: not even admins read ciphertext

-- llm_messages and llm_complete stay executable by PUBLIC (every call is
-- logged with its role); to restrict calls to llm_user, REVOKE EXECUTE ON
-- them FROM PUBLIC.  Users see routes (and llm.route_targets, readable by
-- PUBLIC), and providers without options (which may hold provider-specific
-- settings an admin keeps private).
GRANT EXECUTE ON FUNCTION llm_messages(text, jsonb, jsonb), llm_complete(text, text, jsonb),
                          llm_submit(text, jsonb, jsonb), llm_await(bigint, int),
                          llm_await_any(bigint[]), llm_cancel(bigint),
                          llm.version(), llm.provider_kinds(), llm.gateway_status()
    TO llm_user;
GRANT SELECT ON llm.routes TO llm_user;
GRANT SELECT (name, kind, base_url, region, enabled, created_at) ON llm.providers TO llm_user;

-- The role the gateway worker's transactions run as (it connects as the
-- bootstrap superuser, the only role sure to exist before this script ran,
-- then drops to this one): what the worker reads and writes, nothing more,
-- so a trigger on llm.requests never runs with superuser rights.  A
-- pre-existing role of that name is accepted only if nobody can use it.
DO $$
DECLARE
    r pg_catalog.pg_roles;
BEGIN
    SELECT * INTO r FROM pg_catalog.pg_roles WHERE rolname = 'llm_gateway_worker';
    IF NOT FOUND THEN
        CREATE ROLE llm_gateway_worker NOLOGIN;
        COMMENT ON ROLE llm_gateway_worker IS 'llm_gateway: the background worker''s transactions run as this role; grant it to nobody';
    ELSIF r.rolsuper OR r.rolcanlogin OR r.rolcreaterole OR r.rolbypassrls
          OR EXISTS (SELECT 1 FROM pg_catalog.pg_auth_members m WHERE m.roleid = r.oid) THEN
        RAISE EXCEPTION 'role llm_gateway_worker exists and can be used by others'
            USING ERRCODE = 'insufficient_privilege',
                  DETAIL = 'The gateway worker runs its transactions as this role; it must be NOLOGIN, NOSUPERUSER, NOCREATEROLE, NOBYPASSRLS, with no members.',
                  HINT = 'Drop the role, or make it so, then create the extension again.';
    END IF;
END
$$;

GRANT USAGE ON SCHEMA llm TO llm_gateway_worker;
GRANT SELECT, INSERT, UPDATE ON llm.requests TO llm_gateway_worker;
GRANT USAGE, SELECT, UPDATE ON SEQUENCE llm.requests_id_seq TO llm_gateway_worker;
GRANT SELECT ON llm.providers, llm.routes, llm.credentials TO llm_gateway_worker;

-----------------------------------------------------------------------------
-- Statement progress, in the manner of pg_stat_progress_copy: one row per
-- backend whose running statement has made calls.  The function filters by
-- role (a role sees the statements of roles whose privileges it has;
-- superusers and llm_admin see all), so the view needs no other filter.
-----------------------------------------------------------------------------

CREATE FUNCTION llm._statement_progress(
    OUT pid int, OUT role text, OUT query_start timestamptz,
    OUT calls_submitted bigint, OUT calls_answered bigint, OUT calls_failed bigint,
    OUT calls_cancelled bigint, OUT calls_in_flight bigint, OUT calls_queued bigint,
    OUT input_tokens bigint, OUT output_tokens bigint, OUT cost_usd numeric,
    OUT calls_per_second float8, OUT rows_expected float8)
RETURNS SETOF record
LANGUAGE C VOLATILE STRICT
AS 'MODULE_PATHNAME', 'llm_statement_progress';
COMMENT ON FUNCTION llm._statement_progress() IS 'the figures behind llm.statement_progress, filtered by the caller''s role';

CREATE VIEW llm.statement_progress AS
SELECT p.pid, p.role, p.query_start, p.calls_submitted, p.calls_answered, p.calls_failed,
       p.calls_cancelled, p.calls_in_flight, p.calls_queued, p.input_tokens, p.output_tokens,
       p.cost_usd, p.calls_per_second, p.rows_expected
  FROM llm._statement_progress() p;
COMMENT ON VIEW llm.statement_progress IS 'each running statement that made llm_gateway calls: calls submitted, answered, failed, cancelled, in flight and queued for provider limits, tokens, cost so far, calls per second, rows the planner expected';

REVOKE ALL ON FUNCTION llm._statement_progress() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION llm._statement_progress() TO llm_admin, llm_user;
GRANT SELECT ON llm.statement_progress TO llm_admin, llm_user;

-----------------------------------------------------------------------------
-- Who sees which log rows (docs/design.md §18).  Row-level security on
-- llm.requests: a member of llm_user reads the rows of its own calls
-- (role_name is the current_user a call ran as), llm_admin reads all, the
-- worker writes, completes and expires rows; nobody else reads any.
-- Superusers and the table's owner are not subject to it (no FORCE): the
-- owner is the superuser that created the extension.
-----------------------------------------------------------------------------

ALTER TABLE llm.requests ENABLE ROW LEVEL SECURITY;
CREATE POLICY own_rows ON llm.requests FOR SELECT TO llm_user
    USING (role_name = current_user::text);
CREATE POLICY admin_all ON llm.requests FOR SELECT TO llm_admin
    USING (true);
-- the worker's own writes go through the executor directly (log_writer.c,
-- which RLS does not reach); its SQL (retention) needs this policy
CREATE POLICY worker_all ON llm.requests TO llm_gateway_worker
    USING (true) WITH CHECK (true);
GRANT SELECT ON llm.requests TO llm_user;
GRANT DELETE ON llm.requests TO llm_gateway_worker;

-----------------------------------------------------------------------------
-- Retention: the worker applies llm.log_retention in small batches
-- (src/worker/retention.c); admins purge on demand.  SECURITY DEFINER so
-- that admins can expire old rows without holding DELETE on the audit log:
-- they cannot remove chosen rows, only everything older than an age.
-----------------------------------------------------------------------------

CREATE FUNCTION llm.purge_requests(older_than interval) RETURNS bigint
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    n bigint;
BEGIN
    IF older_than IS NULL OR older_than < interval '0' THEN
        RAISE EXCEPTION 'older_than must be an interval of zero or more, not %', coalesce(older_than::text, 'NULL')
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    -- pending rows belong to calls still running (or not yet marked unknown)
    DELETE FROM llm.requests
     WHERE created_at < pg_catalog.now() - older_than AND status <> 'pending';
    GET DIAGNOSTICS n = ROW_COUNT;
    RETURN n;
END
$$;
COMMENT ON FUNCTION llm.purge_requests(interval) IS
    'deletes the rows of llm.requests created longer ago than older_than, except pending ones; returns how many';
REVOKE ALL ON FUNCTION llm.purge_requests(interval) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION llm.purge_requests(interval) TO llm_admin;
-- Quotas (docs/design.md §16).  The worker admits a call only if every
-- quota that applies can hold its worst case, and settles it with what it
-- used.  A statement trigger makes the worker reload the quotas (and
-- rebuild their figures from llm.requests) when the table changes.
-----------------------------------------------------------------------------

CREATE TABLE llm.quotas (
    name         text PRIMARY KEY CHECK (name ~ '^[A-Za-z0-9_.-]{1,63}$'),
    scope        text NOT NULL CHECK (scope IN ('role', 'alias', 'tag', 'all')),
    role_name    text CHECK (role_name <> '' AND octet_length(role_name) < 64),
    alias        text CHECK (alias <> ''),
    tag_key      text CHECK (tag_key <> ''),
    tag_value    text,
    time_window  text NOT NULL CHECK (time_window IN ('minute', 'hour', 'day', 'month')),
    metric       text NOT NULL CHECK (metric IN ('requests', 'input_tokens', 'output_tokens', 'total_tokens', 'cost_usd')),
    quota_limit  numeric NOT NULL CHECK (quota_limit >= 0 AND
                     CASE WHEN metric = 'cost_usd' THEN quota_limit <= 100000000 AND quota_limit = round(quota_limit, 10)
                          ELSE quota_limit <= 1000000000000000 AND quota_limit = trunc(quota_limit) END),
    warn_at      numeric CHECK (warn_at > 0 AND warn_at <= 1),
    created_at   timestamptz NOT NULL DEFAULT now(),
    CHECK ((scope = 'role') = (role_name IS NOT NULL)),
    CHECK ((scope = 'alias') = (alias IS NOT NULL)),
    CHECK ((scope = 'tag') = (tag_key IS NOT NULL)),
    CHECK ((scope = 'tag') = (tag_value IS NOT NULL))
);
COMMENT ON TABLE llm.quotas IS 'budgets: a limit on requests, tokens or cost (USD) of a role (with its members), a model alias, a tag value or all calls, per calendar minute, hour, day or month in llm.quota_timezone; set with llm.set_quota()';
COMMENT ON COLUMN llm.quotas.quota_limit IS 'requests or tokens (an integer), or USD (numeric, 10 decimals at most) per window';
COMMENT ON COLUMN llm.quotas.warn_at IS 'fraction of the limit at which the worker logs a warning, once per window; NULL for none';
SELECT pg_catalog.pg_extension_config_dump('llm.quotas', '');

CREATE FUNCTION llm._quotas_changed() RETURNS trigger
    AS 'MODULE_PATHNAME', 'llm_quotas_changed'
    LANGUAGE C;
COMMENT ON FUNCTION llm._quotas_changed() IS 'trigger: makes the worker reload llm.quotas at commit';
CREATE TRIGGER quotas_changed AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON llm.quotas
    FOR EACH STATEMENT EXECUTE FUNCTION llm._quotas_changed();

CREATE FUNCTION llm.set_quota(name text, metric text, quota_limit numeric, time_window text,
                              role_name text DEFAULT NULL, alias text DEFAULT NULL,
                              tag_key text DEFAULT NULL, tag_value text DEFAULT NULL,
                              warn_at numeric DEFAULT NULL)
RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    s text;
BEGIN
    IF (role_name IS NOT NULL)::int + (alias IS NOT NULL)::int + (tag_key IS NOT NULL OR tag_value IS NOT NULL)::int > 1 THEN
        RAISE EXCEPTION 'a quota has one scope: a role, an alias, a tag, or none (all calls)'
            USING ERRCODE = '22023', HINT = 'Give at most one of role_name, alias, tag_key and tag_value.';
    END IF;
    IF (tag_key IS NULL) <> (tag_value IS NULL) THEN
        RAISE EXCEPTION 'a tag quota needs both tag_key and tag_value'
            USING ERRCODE = '22023', HINT = 'E.g. tag_key => ''team'', tag_value => ''support''.';
    END IF;
    IF role_name IS NOT NULL AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_roles r WHERE r.rolname = set_quota.role_name) THEN
        RAISE EXCEPTION 'role "%" does not exist', role_name USING ERRCODE = '42704';
    END IF;
    IF NOT EXISTS (SELECT 1 FROM llm.quotas q WHERE q.name = set_quota.name)
       AND (SELECT count(*) FROM llm.quotas) >= 128 THEN
        RAISE EXCEPTION 'there are already 128 quotas, the most the worker holds'
            USING ERRCODE = '54000', HINT = 'Drop unused quotas with llm.drop_quota().';
    END IF;
    IF set_quota.metric IS NULL OR set_quota.metric NOT IN ('requests', 'input_tokens', 'output_tokens', 'total_tokens', 'cost_usd') THEN
        RAISE EXCEPTION 'unknown quota metric "%"', set_quota.metric
            USING ERRCODE = '22023', HINT = 'Use requests, input_tokens, output_tokens, total_tokens or cost_usd.';
    END IF;
    IF set_quota.time_window IS NULL OR set_quota.time_window NOT IN ('minute', 'hour', 'day', 'month') THEN
        RAISE EXCEPTION 'unknown quota window "%"', set_quota.time_window
            USING ERRCODE = '22023', HINT = 'Use minute, hour, day or month (calendar windows in llm.quota_timezone).';
    END IF;
    IF set_quota.quota_limit IS NULL OR set_quota.quota_limit < 0
       OR (set_quota.metric = 'cost_usd' AND (set_quota.quota_limit > 100000000
                                             OR set_quota.quota_limit <> round(set_quota.quota_limit, 10)))
       OR (set_quota.metric <> 'cost_usd' AND (set_quota.quota_limit > 1000000000000000
                                              OR set_quota.quota_limit <> trunc(set_quota.quota_limit))) THEN
        RAISE EXCEPTION 'quota limit % is out of range for metric %', coalesce(set_quota.quota_limit::text, 'NULL'), set_quota.metric
            USING ERRCODE = '22003',
                  HINT = 'Requests and tokens: an integer from 0 to 10^15; cost_usd: 0 to 10^8 USD with at most 10 decimals.';
    END IF;
    IF set_quota.warn_at IS NOT NULL AND (set_quota.warn_at <= 0 OR set_quota.warn_at > 1) THEN
        RAISE EXCEPTION 'warn_at % is not a fraction of the limit', set_quota.warn_at
            USING ERRCODE = '22003', HINT = 'Give warn_at above 0 and at most 1, e.g. 0.8, or NULL for no warning.';
    END IF;
    s := CASE WHEN role_name IS NOT NULL THEN 'role' WHEN alias IS NOT NULL THEN 'alias'
              WHEN tag_key IS NOT NULL THEN 'tag' ELSE 'all' END;
    INSERT INTO llm.quotas AS q (name, scope, role_name, alias, tag_key, tag_value, time_window, metric, quota_limit, warn_at)
    VALUES (set_quota.name, s, set_quota.role_name, set_quota.alias, set_quota.tag_key, set_quota.tag_value,
            set_quota.time_window, set_quota.metric, set_quota.quota_limit, set_quota.warn_at)
    ON CONFLICT ON CONSTRAINT quotas_pkey DO UPDATE
       SET scope = excluded.scope, role_name = excluded.role_name, alias = excluded.alias,
           tag_key = excluded.tag_key, tag_value = excluded.tag_value, time_window = excluded.time_window,
           metric = excluded.metric, quota_limit = excluded.quota_limit, warn_at = excluded.warn_at;
END
$$;
COMMENT ON FUNCTION llm.set_quota(text, text, numeric, text, text, text, text, text, numeric) IS
    'creates or replaces a quota: metric (requests, input_tokens, output_tokens, total_tokens, cost_usd), limit per time_window (minute, hour, day, month), scope role_name, alias, tag_key = tag_value, or all calls; warn_at a fraction of the limit; superuser or llm_admin';

CREATE FUNCTION llm.drop_quota(name text) RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    DELETE FROM llm.quotas q WHERE q.name = drop_quota.name;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'quota "%" does not exist', drop_quota.name
            USING ERRCODE = '42704', HINT = 'See llm.quotas for the defined quotas.';
    END IF;
END
$$;
COMMENT ON FUNCTION llm.drop_quota(text) IS 'removes a quota; superuser or llm_admin';

CREATE FUNCTION llm._quota_state(OUT name text, OUT window_start timestamptz, OUT window_end timestamptz,
                                 OUT used numeric, OUT reserved numeric, OUT quota_limit numeric)
RETURNS SETOF record
LANGUAGE C VOLATILE STRICT
AS 'MODULE_PATHNAME', 'llm_quota_state';
COMMENT ON FUNCTION llm._quota_state() IS 'the worker''s figures behind llm.quota_status, filtered by the caller''s role';

CREATE VIEW llm.quota_status AS
SELECT q.name AS quota, q.scope,
       CASE q.scope WHEN 'role' THEN q.role_name WHEN 'alias' THEN q.alias
                    WHEN 'tag' THEN q.tag_key || '=' || q.tag_value END AS scope_value,
       q.metric, q.time_window, s.window_start, s.window_end AS resets_at,
       s.used, s.reserved, s.quota_limit, q.warn_at
  FROM llm._quota_state() s JOIN llm.quotas q ON q.name = s.name;
COMMENT ON VIEW llm.quota_status IS 'each quota the caller may see (llm_admin: all; others: their roles'' and those not scoped to a role): current window, settled usage, reservations of calls in flight, limit';

REVOKE ALL ON llm.quotas, llm.quota_status FROM PUBLIC;
REVOKE ALL ON FUNCTION llm.set_quota(text, text, numeric, text, text, text, text, text, numeric),
                       llm.drop_quota(text), llm._quota_state()
    FROM PUBLIC;
GRANT SELECT, INSERT, UPDATE, DELETE ON llm.quotas TO llm_admin;
GRANT EXECUTE ON FUNCTION llm.set_quota(text, text, numeric, text, text, text, text, text, numeric),
                          llm.drop_quota(text) TO llm_admin;
GRANT EXECUTE ON FUNCTION llm._quota_state() TO llm_admin, llm_user;
GRANT SELECT ON llm.quota_status TO llm_admin, llm_user;
GRANT SELECT ON llm.quotas TO llm_gateway_worker;
-- Usage rollups.  The worker keeps llm.usage_hourly in the same
-- transactions that complete rows of llm.requests (one upsert per group
-- and batch), so llm.usage and llm.usage_daily never scan the log.  A
-- row counts once it leaves 'pending' (completed, or marked 'unknown' by
-- the next worker); a row completed again replaces its earlier figures
-- (they are subtracted).  Rollups are not purged with the log.
-----------------------------------------------------------------------------

CREATE TABLE llm.usage_hourly (
    hour                timestamptz NOT NULL,
    role_name           text NOT NULL,
    alias               text NOT NULL,
    provider            text,
    upstream_model      text,
    calls               bigint NOT NULL DEFAULT 0,
    ok                  bigint NOT NULL DEFAULT 0,
    errors              bigint NOT NULL DEFAULT 0,
    cancelled           bigint NOT NULL DEFAULT 0,
    timeouts            bigint NOT NULL DEFAULT 0,
    unknown             bigint NOT NULL DEFAULT 0,
    error_classes       jsonb NOT NULL DEFAULT '{}',
    input_tokens        bigint NOT NULL DEFAULT 0,
    output_tokens       bigint NOT NULL DEFAULT 0,
    cache_read_tokens   bigint NOT NULL DEFAULT 0,
    cache_write_tokens  bigint NOT NULL DEFAULT 0,
    cost_usd            numeric NOT NULL DEFAULT 0,
    latency_hist        bigint[] NOT NULL DEFAULT '{}'
);
-- the upsert's conflict target; a call that never got a target has no provider
CREATE UNIQUE INDEX usage_hourly_key ON llm.usage_hourly
    (hour, role_name, alias, provider, upstream_model) NULLS NOT DISTINCT;
-- a day of llm.usage_daily (its day = this expression) without a scan
CREATE INDEX usage_hourly_day ON llm.usage_hourly (((hour AT TIME ZONE 'UTC')::date));
COMMENT ON TABLE llm.usage_hourly IS 'usage rollup behind llm.usage and llm.usage_daily: one row per UTC hour of created_at, role, alias, provider and upstream model, kept by the worker as it completes rows of llm.requests; outlives the log''s retention';
COMMENT ON COLUMN llm.usage_hourly.hour IS 'the hour (UTC boundaries) of the calls'' created_at';
COMMENT ON COLUMN llm.usage_hourly.calls IS 'calls that left ''pending'' (ok + errors + cancelled + timeouts + unknown)';
COMMENT ON COLUMN llm.usage_hourly.unknown IS 'calls a restarted worker found pending and marked ''unknown''';
COMMENT ON COLUMN llm.usage_hourly.error_classes IS 'calls with an error_code, by SQLSTATE class (its first two characters): {"LL": 3, "57": 1}';
COMMENT ON COLUMN llm.usage_hourly.cost_usd IS 'sum of llm.requests.cost_usd (calls without prices add nothing)';
COMMENT ON COLUMN llm.usage_hourly.latency_hist IS 'latency histogram: element 1 counts calls under 1 ms, element k >= 2 those in [2^((k-2)/4), 2^((k-1)/4)) ms (4 buckets per doubling, the last open-ended); trailing empty buckets omitted';

-- element-wise sum of two histograms of any lengths (C: the worker's
-- upsert calls it once per group and batch)
CREATE FUNCTION llm._usage_hist_add(a bigint[], b bigint[]) RETURNS bigint[]
    AS 'MODULE_PATHNAME', 'llm_usage_hist_add'
    LANGUAGE C IMMUTABLE PARALLEL SAFE;
COMMENT ON FUNCTION llm._usage_hist_add(bigint[], bigint[]) IS 'sum of two latency histograms of llm.usage_hourly';

-- sum of two {key: count} objects; keys whose count is 0 are dropped
CREATE FUNCTION llm._usage_counts_add(a jsonb, b jsonb) RETURNS jsonb
    AS 'MODULE_PATHNAME', 'llm_usage_counts_add'
    LANGUAGE C IMMUTABLE PARALLEL SAFE;
COMMENT ON FUNCTION llm._usage_counts_add(jsonb, jsonb) IS 'sum of two error_classes objects of llm.usage_hourly';

CREATE AGGREGATE llm._usage_hist_sum(bigint[]) (
    SFUNC = llm._usage_hist_add, STYPE = bigint[], INITCOND = '{}', PARALLEL = SAFE);
COMMENT ON AGGREGATE llm._usage_hist_sum(bigint[]) IS 'merges latency histograms of llm.usage_hourly';
CREATE AGGREGATE llm._usage_counts_sum(jsonb) (
    SFUNC = llm._usage_counts_add, STYPE = jsonb, INITCOND = '{}', PARALLEL = SAFE);
COMMENT ON AGGREGATE llm._usage_counts_sum(jsonb) IS 'merges error_classes objects of llm.usage_hourly';

-- The q-quantile (nearest rank) of a histogram, as the geometric middle of
-- its bucket: within a factor 2^(1/8) (9.1 %) of the true value, or 0.5 ms
-- under 1 ms.  NULL for an empty histogram.
CREATE FUNCTION llm._usage_percentile(hist bigint[], q double precision) RETURNS double precision
LANGUAGE sql IMMUTABLE PARALLEL SAFE
RETURN (SELECT CASE WHEN c.k = 1 THEN 0.5
                    ELSE pg_catalog.power(2.0::double precision, (c.k - 2 + 0.5) / 4.0) END
          FROM (SELECT i AS k,
                       pg_catalog.sum(hist[i]) OVER (ORDER BY i) AS cum,
                       pg_catalog.sum(hist[i]) OVER () AS total
                  FROM pg_catalog.generate_series(1, COALESCE(pg_catalog.cardinality(hist), 0)) AS i) AS c
         WHERE c.total > 0 AND c.cum >= GREATEST(pg_catalog.ceil(q * c.total), 1)
         ORDER BY c.k LIMIT 1);
COMMENT ON FUNCTION llm._usage_percentile(bigint[], double precision) IS 'q-quantile in ms of a latency histogram of llm.usage_hourly, within a factor 2^(1/8)';

-- security_invoker: the rollup's row-level security applies to the reader
CREATE VIEW llm.usage WITH (security_invoker = true) AS
SELECT u.hour, u.role_name, u.alias, u.provider, u.upstream_model,
       u.calls, u.ok, u.errors, u.cancelled, u.timeouts, u.unknown, u.error_classes,
       u.input_tokens, u.output_tokens, u.cache_read_tokens, u.cache_write_tokens, u.cost_usd,
       llm._usage_percentile(u.latency_hist, 0.50) AS latency_p50_ms,
       llm._usage_percentile(u.latency_hist, 0.95) AS latency_p95_ms,
       llm._usage_percentile(u.latency_hist, 0.99) AS latency_p99_ms
  FROM llm.usage_hourly u;
COMMENT ON VIEW llm.usage IS 'usage per hour (UTC), role, alias, provider and upstream model: calls by outcome, errors by SQLSTATE class, tokens, cost (numeric USD), latency percentiles (within 9.1 %); a role sees its own rows, llm_admin all';

CREATE VIEW llm.usage_daily WITH (security_invoker = true) AS
SELECT (u.hour AT TIME ZONE 'UTC')::date AS day, u.role_name, u.alias, u.provider, u.upstream_model,
       pg_catalog.sum(u.calls)::bigint AS calls, pg_catalog.sum(u.ok)::bigint AS ok,
       pg_catalog.sum(u.errors)::bigint AS errors, pg_catalog.sum(u.cancelled)::bigint AS cancelled,
       pg_catalog.sum(u.timeouts)::bigint AS timeouts, pg_catalog.sum(u.unknown)::bigint AS unknown,
       llm._usage_counts_sum(u.error_classes) AS error_classes,
       pg_catalog.sum(u.input_tokens)::bigint AS input_tokens,
       pg_catalog.sum(u.output_tokens)::bigint AS output_tokens,
       pg_catalog.sum(u.cache_read_tokens)::bigint AS cache_read_tokens,
       pg_catalog.sum(u.cache_write_tokens)::bigint AS cache_write_tokens,
       pg_catalog.sum(u.cost_usd) AS cost_usd,
       llm._usage_percentile(llm._usage_hist_sum(u.latency_hist), 0.50) AS latency_p50_ms,
       llm._usage_percentile(llm._usage_hist_sum(u.latency_hist), 0.95) AS latency_p95_ms,
       llm._usage_percentile(llm._usage_hist_sum(u.latency_hist), 0.99) AS latency_p99_ms
  FROM llm.usage_hourly u
 GROUP BY 1, u.role_name, u.alias, u.provider, u.upstream_model;
COMMENT ON VIEW llm.usage_daily IS 'llm.usage per UTC day';
COMMENT ON COLUMN llm.usage.latency_p50_ms IS 'median latency in ms, from the hour''s histogram (within a factor 2^(1/8))';
COMMENT ON COLUMN llm.usage.latency_p95_ms IS '95th percentile latency in ms (within a factor 2^(1/8))';
COMMENT ON COLUMN llm.usage.latency_p99_ms IS '99th percentile latency in ms (within a factor 2^(1/8))';
COMMENT ON COLUMN llm.usage.error_classes IS 'calls with an error_code, by SQLSTATE class: {"LL": 3, "57": 1}';
COMMENT ON COLUMN llm.usage_daily.latency_p50_ms IS 'median latency in ms over the day''s merged histograms (within a factor 2^(1/8))';
COMMENT ON COLUMN llm.usage_daily.day IS 'the UTC day of the calls'' created_at';

-- A role sees its own rows; llm_admin all; the worker writes them.  Policy
-- names as on llm.requests (own_rows, admin_all).
ALTER TABLE llm.usage_hourly ENABLE ROW LEVEL SECURITY;
CREATE POLICY own_rows ON llm.usage_hourly FOR SELECT USING (role_name = current_user);
CREATE POLICY admin_all ON llm.usage_hourly FOR SELECT TO llm_admin USING (true);
CREATE POLICY worker_all ON llm.usage_hourly FOR ALL TO llm_gateway_worker USING (true) WITH CHECK (true);

REVOKE ALL ON llm.usage_hourly FROM PUBLIC;
GRANT SELECT ON llm.usage_hourly, llm.usage, llm.usage_daily TO llm_admin, llm_user;
GRANT SELECT, INSERT, UPDATE ON llm.usage_hourly TO llm_gateway_worker;
GRANT EXECUTE ON FUNCTION llm._usage_hist_add(bigint[], bigint[]), llm._usage_counts_add(jsonb, jsonb),
                          llm._usage_percentile(bigint[], double precision)
    TO llm_admin, llm_user, llm_gateway_worker;
GRANT EXECUTE ON FUNCTION llm._usage_hist_sum(bigint[]), llm._usage_counts_sum(jsonb)
    TO llm_admin, llm_user;
-- dumped like the log it summarizes
SELECT pg_catalog.pg_extension_config_dump('llm.usage_hourly', '');
-- Cost estimate: plan a statement (never run its calls) and report, per
-- call site, the calls it would make, their tokens and cost range.  Runs
-- as the caller (no SECURITY DEFINER): it plans and counts only what the
-- caller may read, and reads llm.routes with the caller's privileges.
-----------------------------------------------------------------------------

CREATE FUNCTION llm.estimate(query text, exact boolean DEFAULT false)
RETURNS TABLE (call_site int, function text, alias text, calls bigint,
               input_tokens_per_call bigint, max_output_tokens_per_call bigint,
               input_tokens bigint, max_output_tokens bigint,
               cost_min numeric, cost_max numeric, exceeds_quotas text[])
LANGUAGE C VOLATILE
AS 'MODULE_PATHNAME', 'llm_estimate';
COMMENT ON FUNCTION llm.estimate(text, boolean) IS 'plans a statement without running its calls: per call site the alias (NULL: not a constant), calls (planner estimate, or counted with exact => true by running the statement read-only with every volatile function as NULL), input tokens (bytes / 4), maximum output tokens, the cost range in USD over the alias''s targets, and the quotas (of llm.quota_status) that the statement''s calls together would exceed';

REVOKE ALL ON FUNCTION llm.estimate(text, boolean) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION llm.estimate(text, boolean) TO llm_admin, llm_user;

-----------------------------------------------------------------------------
-- Structured output: llm_extract asks for JSON following a schema
-- (output_config), checks the answer against it, asks once more on a
-- mismatch, and fails with LL015 (docs/design.md §24).
-----------------------------------------------------------------------------

CREATE FUNCTION llm_extract(model text, prompt text, schema jsonb, options jsonb DEFAULT '{}')
RETURNS jsonb
    AS 'MODULE_PATHNAME', 'llm_extract'
    LANGUAGE C VOLATILE PARALLEL UNSAFE;
COMMENT ON FUNCTION llm_extract(text, text, jsonb, jsonb) IS 'one call to the model alias asking for JSON that follows the schema (output_config); returns the parsed answer, checked against the schema (type, required, enum, const, properties, additionalProperties, items, minItems, maxItems); a non-conforming answer is asked again once, then fails with LL015';
GRANT EXECUTE ON FUNCTION llm_extract(text, text, jsonb, jsonb) TO llm_user;

CREATE FUNCTION llm.json_schema_violation(schema jsonb, answer text)
RETURNS text
    AS 'MODULE_PATHNAME', 'llm_json_schema_violation'
    LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;
COMMENT ON FUNCTION llm.json_schema_violation(jsonb, text) IS 'what llm_extract says of an answer text against a schema: the first violation as "<JSON path>: <expected>", or NULL when it follows the schema; no network';
GRANT EXECUTE ON FUNCTION llm.json_schema_violation(jsonb, text) TO llm_admin, llm_user;

-----------------------------------------------------------------------------
-- Embeddings (docs/design.md §23): llm_embed, one input (pipelined like
-- llm_complete) or an array (one call); the route rule that targets of one
-- alias agree on the dimension; diagnostics of the embeddings adapters.
-----------------------------------------------------------------------------

CREATE FUNCTION llm_embed(model text, input text, options jsonb DEFAULT '{}')
RETURNS real[]
    AS 'MODULE_PATHNAME', 'llm_embed'
    LANGUAGE C VOLATILE PARALLEL UNSAFE;
COMMENT ON FUNCTION llm_embed(text, text, jsonb) IS 'the embedding of one text through the model alias (options dimensions, input_type, timeout_ms, tags, on_error); concurrent calls to one target are sent as one provider request; cast to vector for pgvector';

CREATE FUNCTION llm_embed(model text, inputs text[], options jsonb DEFAULT '{}')
RETURNS TABLE (ordinality int, embedding real[])
    AS 'MODULE_PATHNAME', 'llm_embed_many'
    LANGUAGE C VOLATILE PARALLEL UNSAFE ROWS 100;
COMMENT ON FUNCTION llm_embed(text, text[], jsonb) IS 'the embeddings of many texts in one call (one provider request, one llm.requests row): one row per input, ordinality 1, 2, ... in input order';

GRANT EXECUTE ON FUNCTION llm_embed(text, text, jsonb), llm_embed(text, text[], jsonb) TO llm_user;

CREATE FUNCTION llm._kind_has_embeddings(kind text) RETURNS bool
    AS 'MODULE_PATHNAME', 'llm_kind_has_embeddings'
    LANGUAGE C STRICT IMMUTABLE PARALLEL SAFE;
COMMENT ON FUNCTION llm._kind_has_embeddings(text) IS 'whether this build''s adapter for a provider kind speaks an embeddings API';

-- A target with a "dimensions" route option is an embedding target: its
-- provider's kind must have embeddings, and every target of the alias that
-- declares a dimension must declare the same one (so fallback never
-- changes the vector size).  A trigger, so add_route, alter_route and a
-- direct write of llm.routes are all checked.
CREATE FUNCTION llm._check_embed_route() RETURNS trigger
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    dims int;
    kind text;
    other record;
BEGIN
    IF NEW.options IS NULL OR NOT NEW.options ? 'dimensions' THEN
        RETURN NEW;
    END IF;
    dims := (NEW.options->>'dimensions')::int;
    SELECT p.kind INTO kind FROM llm.providers p WHERE p.name = NEW.provider;
    IF kind IS NOT NULL AND NOT llm._kind_has_embeddings(kind) THEN
        RAISE EXCEPTION 'provider "%" (kind %) has no embeddings, but route option "dimensions" makes this an embedding target', NEW.provider, kind
            USING ERRCODE = '0A000',
                  HINT = 'Route embedding aliases to providers of a kind with embeddings (see README, "What each kind supports").';
    END IF;
    SELECT r.id, r.provider, r.upstream_model, (r.options->>'dimensions')::int AS d INTO other
      FROM llm.routes r
     WHERE r.alias = NEW.alias AND r.id IS DISTINCT FROM NEW.id
       AND r.options ? 'dimensions' AND (r.options->>'dimensions')::int <> dims
     LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'targets of alias "%" must agree on the embedding dimension: % here, % for target % (%/%)',
                        NEW.alias, dims, other.d, other.id, other.provider, other.upstream_model
            USING ERRCODE = 'LL016',
                  HINT = 'Give every target of an embedding alias the same "dimensions", or use another alias.';
    END IF;
    RETURN NEW;
END
$$;
COMMENT ON FUNCTION llm._check_embed_route() IS 'trigger on llm.routes: a target with route option dimensions must be of a kind with embeddings and agree with the alias''s other targets (LL016)';
CREATE TRIGGER check_embed_route BEFORE INSERT OR UPDATE ON llm.routes
    FOR EACH ROW EXECUTE FUNCTION llm._check_embed_route();

CREATE FUNCTION llm.adapter_build_embed_request(
    kind text,
    inputs text[],
    options jsonb,
    upstream_model text,
    secret text DEFAULT NULL,
    provider_options jsonb DEFAULT '{}',
    route_options jsonb DEFAULT '{}',
    base_url text DEFAULT NULL)
RETURNS jsonb
    AS 'MODULE_PATHNAME', 'llm_adapter_build_embed_request'
    LANGUAGE C VOLATILE PARALLEL SAFE;
COMMENT ON FUNCTION llm.adapter_build_embed_request(text, text[], jsonb, text, text, jsonb, jsonb, text) IS
    'the HTTP request (url, headers with the secret redacted, body) a provider kind''s embeddings adapter builds for these inputs and llm_embed options; no network';
REVOKE ALL ON FUNCTION llm.adapter_build_embed_request(text, text[], jsonb, text, text, jsonb, jsonb, text) FROM PUBLIC;

CREATE FUNCTION llm.adapter_parse_embed_response(
    kind text,
    status int,
    body text,
    ninputs int DEFAULT 1,
    dimensions int DEFAULT 0)
RETURNS jsonb
    AS 'MODULE_PATHNAME', 'llm_adapter_parse_embed_response'
    LANGUAGE C STRICT VOLATILE PARALLEL SAFE;
COMMENT ON FUNCTION llm.adapter_parse_embed_response(text, int, text, int, int) IS
    'a provider''s embeddings answer read by a kind''s adapter for a call of ninputs inputs (asking for dimensions, 0 = any): the vectors in input order, or the error the gateway would report; no network';
REVOKE ALL ON FUNCTION llm.adapter_parse_embed_response(text, int, text, int, int) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION llm.adapter_build_embed_request(text, text[], jsonb, text, text, jsonb, jsonb, text),
                          llm.adapter_parse_embed_response(text, int, text, int, int) TO llm_admin;

-----------------------------------------------------------------------------
-- Conversations (docs/design.md §27): a conversation is a row, its turns
-- are rows, and llm_chat continues it.  Users read them through row-level
-- security (own, shared with them, or all for llm_admin) and change only a
-- conversation's settings; turns, forks and shares are written by the C
-- functions, which check the caller and then write as llm_gateway_worker,
-- so a turn's request_id, tokens and cost are always the gateway's own.
-----------------------------------------------------------------------------

CREATE TABLE llm.conversations (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    owner_role      text NOT NULL,
    alias           text NOT NULL,
    system          text,
    -- the system prompt is its own column: the summary is added to it
    options         jsonb NOT NULL DEFAULT '{}'
                    CHECK (jsonb_typeof(options) = 'object' AND NOT options ? 'system'),
    context_policy  jsonb NOT NULL DEFAULT '{}' CHECK (jsonb_typeof(context_policy) = 'object'),
    title           text,
    metadata        jsonb NOT NULL DEFAULT '{}',
    forked_from     bigint REFERENCES llm.conversations (id) ON DELETE SET NULL,
    forked_at_seq   int,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX ON llm.conversations (owner_role);
COMMENT ON TABLE llm.conversations IS 'one row per conversation continued by llm_chat: its model alias, system prompt, call options, context policy; created by llm.new_conversation or llm.fork_conversation';
COMMENT ON COLUMN llm.conversations.owner_role IS 'the role that created it: it (and llm_admin, and roles it is shared with) sees and continues it';
COMMENT ON COLUMN llm.conversations.options IS 'call options of every llm_chat (as llm_messages takes them: tools, max_tokens, ...); a call''s own options override them key by key';
COMMENT ON COLUMN llm.conversations.context_policy IS 'how the history is fitted to the token budget: {"strategy": "drop_oldest" | "summarize", "budget_tokens": N, "summary_model": alias, "summary_max_tokens": N}';
COMMENT ON COLUMN llm.conversations.forked_from IS 'the conversation this one was forked from (llm.fork_conversation); its turns up to forked_at_seq are this one''s first turns; NULL once that one is deleted (the fork then holds copies of them)';
COMMENT ON COLUMN llm.conversations.updated_at IS 'last change of the settings (alias, system, options, context policy, title, metadata); the last turn''s created_at says when it was last continued';

CREATE TABLE llm.conversation_turns (
    conversation    bigint NOT NULL REFERENCES llm.conversations (id) ON DELETE CASCADE,
    seq             int NOT NULL CHECK (seq >= 1),
    role            text NOT NULL CHECK (role IN ('user', 'assistant', 'summary')),
    content         jsonb NOT NULL,
    bytes           int NOT NULL,
    starts_exchange bool NOT NULL DEFAULT false,
    tokens          bigint,
    request_id      bigint,
    input_tokens    bigint,
    cost_usd        numeric,
    stop_reason     text,
    context_first_seq   int,
    context_summary_seq int,
    context_est_tokens  bigint,
    summary_through int,
    created_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (conversation, seq)
);
COMMENT ON TABLE llm.conversation_turns IS 'the turns of each conversation in order: user and assistant messages (content in the Messages shape: a string or content blocks) and the summaries that stand for dropped turns';
COMMENT ON COLUMN llm.conversation_turns.seq IS 'position in the conversation, from 1; a fork''s own turns continue after its forked_at_seq';
COMMENT ON COLUMN llm.conversation_turns.role IS 'user, assistant, or summary (a summary of the turns up to summary_through, sent in the system prompt instead of them)';
COMMENT ON COLUMN llm.conversation_turns.bytes IS 'size of content as JSON text, what the token estimate counts';
COMMENT ON COLUMN llm.conversation_turns.starts_exchange IS 'a user turn that answers no tool call: a history sent may begin here (trimming never separates a tool_use from its tool_result)';
COMMENT ON COLUMN llm.conversation_turns.tokens IS 'assistant and summary: output tokens the provider reported; user: the estimate when it was first sent';
COMMENT ON COLUMN llm.conversation_turns.request_id IS 'the llm.requests row of the call that produced this assistant or summary turn (the user turn before an answer shares it)';
COMMENT ON COLUMN llm.conversation_turns.input_tokens IS 'assistant: input tokens the provider counted for the whole request (system, tools, the history sent)';
COMMENT ON COLUMN llm.conversation_turns.context_first_seq IS 'assistant: the first turn of the history sent (earlier ones were dropped or summarised); with context_summary_seq, llm.conversation_context() rebuilds what was sent';
COMMENT ON COLUMN llm.conversation_turns.context_summary_seq IS 'assistant: the summary turn sent in the system prompt, if any';
COMMENT ON COLUMN llm.conversation_turns.context_est_tokens IS 'assistant: the gateway''s uncorrected estimate of the request (bytes / 4); input_tokens / context_est_tokens corrects the next estimate';

CREATE TABLE llm.conversation_shares (
    conversation    bigint NOT NULL REFERENCES llm.conversations (id) ON DELETE CASCADE,
    role_name       text NOT NULL,
    can_continue    bool NOT NULL DEFAULT true,
    owner_role      text NOT NULL,
    shared_by       text NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (conversation, role_name)
);
COMMENT ON TABLE llm.conversation_shares IS 'conversations shared with other roles (llm.share_conversation): the role and its members see it, and continue it when can_continue';
COMMENT ON COLUMN llm.conversation_shares.owner_role IS 'the conversation''s owner, copied so that this table''s row security does not read llm.conversations';

CREATE TABLE llm.conversation_lineage (
    conversation    bigint NOT NULL REFERENCES llm.conversations (id) ON DELETE CASCADE,
    ancestor        bigint NOT NULL REFERENCES llm.conversations (id) ON DELETE CASCADE,
    through_seq     int NOT NULL,
    PRIMARY KEY (conversation, ancestor)
);
CREATE INDEX ON llm.conversation_lineage (ancestor);
COMMENT ON TABLE llm.conversation_lineage IS 'for each fork, every conversation whose turns it shares and up to which seq: a fork reads them in place, nothing is copied until that conversation is deleted';

SELECT pg_catalog.pg_extension_config_dump('llm.conversations', '');
SELECT pg_catalog.pg_extension_config_dump('llm.conversations_id_seq', '');
SELECT pg_catalog.pg_extension_config_dump('llm.conversation_turns', '');
SELECT pg_catalog.pg_extension_config_dump('llm.conversation_shares', '');
SELECT pg_catalog.pg_extension_config_dump('llm.conversation_lineage', '');

CREATE FUNCTION llm._conversation_touched() RETURNS trigger
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    -- forked_from may only become NULL: its conversation was deleted
    IF NEW.owner_role IS DISTINCT FROM OLD.owner_role
       OR (NEW.forked_from IS DISTINCT FROM OLD.forked_from AND NEW.forked_from IS NOT NULL)
       OR NEW.forked_at_seq IS DISTINCT FROM OLD.forked_at_seq THEN
        RAISE EXCEPTION 'a conversation''s owner and fork origin cannot change'
            USING ERRCODE = 'insufficient_privilege',
                  HINT = 'Share it with llm.share_conversation(), or fork it with llm.fork_conversation().';
    END IF;
    NEW.updated_at := now();
    RETURN NEW;
END
$$;
COMMENT ON FUNCTION llm._conversation_touched() IS 'trigger: a conversation''s updated_at follows its changes; its owner and fork origin stay';
CREATE TRIGGER touched BEFORE UPDATE ON llm.conversations
    FOR EACH ROW EXECUTE FUNCTION llm._conversation_touched();

-- A deleted conversation's turns that forks share are copied into those
-- forks first (a fork never loses its history, and whoever forked it
-- cannot keep its owner from deleting it).  SECURITY DEFINER: the forks
-- may belong to roles the deleting one cannot write for.
CREATE FUNCTION llm._conversation_deleting() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    INSERT INTO llm.conversation_turns (conversation, seq, role, content, bytes, starts_exchange, tokens,
        request_id, input_tokens, cost_usd, stop_reason, context_first_seq, context_summary_seq,
        context_est_tokens, summary_through, created_at)
    SELECT l.conversation, t.seq, t.role, t.content, t.bytes, t.starts_exchange, t.tokens, t.request_id,
           t.input_tokens, t.cost_usd, t.stop_reason, t.context_first_seq, t.context_summary_seq,
           t.context_est_tokens, t.summary_through, t.created_at
      FROM llm.conversation_lineage l
      JOIN llm.conversation_turns t ON t.conversation = l.ancestor AND t.seq <= l.through_seq
     WHERE l.ancestor = OLD.id;
    RETURN OLD;
END
$$;
COMMENT ON FUNCTION llm._conversation_deleting() IS 'trigger: before a conversation is deleted, the turns its forks share are copied into them';
REVOKE ALL ON FUNCTION llm._conversation_deleting() FROM PUBLIC;
CREATE TRIGGER deleting BEFORE DELETE ON llm.conversations
    FOR EACH ROW EXECUTE FUNCTION llm._conversation_deleting();

-- Row security.  Policies read other tables only downward (turns ->
-- lineage -> conversations -> shares), never back, so none recurses.
ALTER TABLE llm.conversations ENABLE ROW LEVEL SECURITY;
ALTER TABLE llm.conversation_turns ENABLE ROW LEVEL SECURITY;
ALTER TABLE llm.conversation_shares ENABLE ROW LEVEL SECURITY;
ALTER TABLE llm.conversation_lineage ENABLE ROW LEVEL SECURITY;

CREATE POLICY visible ON llm.conversations FOR SELECT
    USING (owner_role = current_user::text
           OR pg_catalog.pg_has_role(current_user, 'llm_admin', 'MEMBER')
           OR EXISTS (SELECT 1 FROM llm.conversation_shares s
                       JOIN pg_catalog.pg_roles r ON r.rolname = s.role_name
                      WHERE s.conversation = conversations.id
                        AND pg_catalog.pg_has_role(current_user, r.oid, 'MEMBER')));
CREATE POLICY owner_changes ON llm.conversations FOR UPDATE
    USING (owner_role = current_user::text OR pg_catalog.pg_has_role(current_user, 'llm_admin', 'MEMBER'))
    WITH CHECK (owner_role = current_user::text OR pg_catalog.pg_has_role(current_user, 'llm_admin', 'MEMBER'));
CREATE POLICY owner_deletes ON llm.conversations FOR DELETE
    USING (owner_role = current_user::text OR pg_catalog.pg_has_role(current_user, 'llm_admin', 'MEMBER'));

CREATE POLICY visible ON llm.conversation_shares FOR SELECT
    USING (owner_role = current_user::text
           OR pg_catalog.pg_has_role(current_user, 'llm_admin', 'MEMBER')
           OR EXISTS (SELECT 1 FROM pg_catalog.pg_roles r
                      WHERE r.rolname = conversation_shares.role_name
                        AND pg_catalog.pg_has_role(current_user, r.oid, 'MEMBER')));

CREATE POLICY visible ON llm.conversation_lineage FOR SELECT
    USING (EXISTS (SELECT 1 FROM llm.conversations c WHERE c.id = conversation_lineage.conversation));

-- a turn is visible with its conversation, and with every fork that shares it
CREATE POLICY visible ON llm.conversation_turns FOR SELECT
    USING (EXISTS (SELECT 1 FROM llm.conversations c WHERE c.id = conversation_turns.conversation)
           OR EXISTS (SELECT 1 FROM llm.conversation_lineage l
                      WHERE l.ancestor = conversation_turns.conversation
                        AND conversation_turns.seq <= l.through_seq));

CREATE POLICY worker_all ON llm.conversations TO llm_gateway_worker USING (true) WITH CHECK (true);
CREATE POLICY worker_all ON llm.conversation_turns TO llm_gateway_worker USING (true) WITH CHECK (true);
CREATE POLICY worker_all ON llm.conversation_shares TO llm_gateway_worker USING (true) WITH CHECK (true);
CREATE POLICY worker_all ON llm.conversation_lineage TO llm_gateway_worker USING (true) WITH CHECK (true);

REVOKE ALL ON llm.conversations, llm.conversation_turns, llm.conversation_shares,
              llm.conversation_lineage FROM PUBLIC;
GRANT SELECT, DELETE ON llm.conversations TO llm_admin, llm_user;
GRANT UPDATE (alias, system, options, context_policy, title, metadata) ON llm.conversations TO llm_admin, llm_user;
GRANT SELECT ON llm.conversation_turns, llm.conversation_shares, llm.conversation_lineage TO llm_admin, llm_user;
-- what the C functions write as llm_gateway_worker (the lock of llm_chat is
-- a FOR NO KEY UPDATE, which needs UPDATE)
GRANT SELECT, INSERT, UPDATE ON llm.conversations TO llm_gateway_worker;
GRANT SELECT, INSERT ON llm.conversation_turns, llm.conversation_lineage TO llm_gateway_worker;
GRANT SELECT, INSERT, UPDATE, DELETE ON llm.conversation_shares TO llm_gateway_worker;

CREATE FUNCTION llm.new_conversation(model text, system text DEFAULT NULL, options jsonb DEFAULT '{}')
RETURNS bigint
    AS 'MODULE_PATHNAME', 'llm_new_conversation'
    LANGUAGE C VOLATILE PARALLEL UNSAFE;
COMMENT ON FUNCTION llm.new_conversation(text, text, jsonb) IS 'creates a conversation with the model alias and system prompt, owned by the caller; options are llm_messages call options plus "context" (the context policy), "title" and "metadata"; returns its id';

CREATE FUNCTION llm_chat(conversation bigint, message text)
RETURNS text
    AS 'MODULE_PATHNAME', 'llm_chat'
    LANGUAGE C VOLATILE PARALLEL UNSAFE;
COMMENT ON FUNCTION llm_chat(bigint, text) IS 'continues a conversation: appends the user message, calls the model with the history fitted to the context budget, appends the answer and returns its text; turns are written in the caller''s transaction, and only when the call succeeds';

CREATE FUNCTION llm_chat(conversation bigint, message jsonb, options jsonb DEFAULT '{}')
RETURNS jsonb
    AS 'MODULE_PATHNAME', 'llm_chat_json'
    LANGUAGE C VOLATILE PARALLEL UNSAFE;
COMMENT ON FUNCTION llm_chat(bigint, jsonb, jsonb) IS 'continues a conversation with a user message given as content blocks (tool_result included) or a {"role": "user", "content": ...} object, and call options that override the conversation''s; returns the answer as llm_messages does';

CREATE FUNCTION llm.fork_conversation(conversation bigint, at_seq int)
RETURNS bigint
    AS 'MODULE_PATHNAME', 'llm_fork_conversation'
    LANGUAGE C VOLATILE PARALLEL UNSAFE;
COMMENT ON FUNCTION llm.fork_conversation(bigint, int) IS 'a new conversation of the caller''s that shares the turns up to at_seq (read in place, not copied) and the settings of the original; returns its id';

CREATE FUNCTION llm.share_conversation(conversation bigint, role_name text, can_continue boolean DEFAULT true)
RETURNS void
    AS 'MODULE_PATHNAME', 'llm_share_conversation'
    LANGUAGE C VOLATILE PARALLEL UNSAFE;
COMMENT ON FUNCTION llm.share_conversation(bigint, text, boolean) IS 'lets a role (and its members) see a conversation, and continue it unless can_continue is false; owner or llm_admin';

CREATE FUNCTION llm.unshare_conversation(conversation bigint, role_name text)
RETURNS boolean
    AS 'MODULE_PATHNAME', 'llm_unshare_conversation'
    LANGUAGE C VOLATILE PARALLEL UNSAFE;
COMMENT ON FUNCTION llm.unshare_conversation(bigint, text) IS 'ends a share; returns whether there was one; owner or llm_admin';

CREATE FUNCTION llm.replay_conversation(conversation bigint, model text)
RETURNS TABLE (seq int, user_turn jsonb, original jsonb, replayed jsonb,
               original_tokens bigint, replayed_tokens bigint,
               original_cost numeric, replayed_cost numeric)
    AS 'MODULE_PATHNAME', 'llm_replay_conversation'
    LANGUAGE C VOLATILE PARALLEL UNSAFE;
COMMENT ON FUNCTION llm.replay_conversation(bigint, text) IS 'sends each user turn of a conversation, in order, to another model alias with the replayed history, and returns the original and replayed answers (content blocks) side by side with their tokens (input + output) and cost; stores no turn';

CREATE FUNCTION llm.conversation_history(conversation bigint)
RETURNS SETOF llm.conversation_turns
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT t.* FROM llm.conversation_turns t WHERE t.conversation = $1
    UNION ALL
    SELECT t.* FROM llm.conversation_lineage l
      JOIN llm.conversation_turns t ON t.conversation = l.ancestor AND t.seq <= l.through_seq
     WHERE l.conversation = $1
    ORDER BY seq
$$;
COMMENT ON FUNCTION llm.conversation_history(bigint) IS 'every turn of a conversation in order, those shared with the conversation it was forked from included (their conversation column names where they are stored)';

CREATE FUNCTION llm.conversation_context(conversation bigint, seq int)
RETURNS jsonb
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
    WITH a AS (
        SELECT h.* FROM llm.conversation_history($1) h WHERE h.seq = $2 AND h.role = 'assistant'
    )
    SELECT jsonb_build_object(
        'system', (SELECT c.system FROM llm.conversations c WHERE c.id = $1),
        'summary', (SELECT s.content FROM llm.conversation_history($1) s, a
                     WHERE s.seq = a.context_summary_seq),
        'messages', (SELECT jsonb_agg(jsonb_build_object('role', h.role, 'content', h.content) ORDER BY h.seq)
                       FROM llm.conversation_history($1) h, a
                      WHERE h.seq >= a.context_first_seq AND h.seq < a.seq AND h.role <> 'summary'))
      FROM a
$$;
COMMENT ON FUNCTION llm.conversation_context(bigint, int) IS 'what was sent for the assistant turn seq: the system prompt, the summary that stood for dropped turns (if any), and the messages; NULL when seq is not an assistant turn';

GRANT EXECUTE ON FUNCTION llm.new_conversation(text, text, jsonb), llm_chat(bigint, text),
                          llm_chat(bigint, jsonb, jsonb), llm.fork_conversation(bigint, int),
                          llm.share_conversation(bigint, text, boolean),
                          llm.unshare_conversation(bigint, text),
                          llm.replay_conversation(bigint, text),
                          llm.conversation_history(bigint), llm.conversation_context(bigint, int)
    TO llm_admin, llm_user;

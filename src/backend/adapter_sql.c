/*-------------------------------------------------------------------------
 *
 * adapter_sql.c
 *	  Diagnostic SQL functions that drive a provider adapter directly, with
 *	  no network: llm.adapter_build_request() and llm.adapter_parse_response().
 *
 * runs in: backend.
 *
 * They exist for fixture tests (recorded provider answers replayed through
 * the adapters) and for an administrator who wants to see exactly what the
 * gateway would send to a provider, or how it reads an answer.  They do
 * what the worker does around an adapter call, in the same order, so a
 * fixture test exercises the same path as a real call.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "fmgr.h"
#include "utils/builtins.h"
#include "utils/float.h"
#include "utils/jsonb.h"

#include "common/json_util.h"
#include "common/llm_errors.h"
#include "llm_gateway.h"
#include "providers/adapter.h"
#include "backend/adapter_sql.h"

PG_FUNCTION_INFO_V1(llm_adapter_build_request);
PG_FUNCTION_INFO_V1(llm_adapter_parse_response);

static const LlmProvider *lookup_kind(text *kind);
static Jsonb *object_arg(FunctionCallInfo fcinfo, int argno, const char *name);
static Jsonb *empty_object(void);
static List *headers_from_jsonb(Jsonb *headers);
static void append_headers_object(StringInfo buf, List *headers, const char *secret);
static void append_answer(StringInfo buf, const LlmAnswer *answer);
static void append_error(StringInfo buf, const LlmError *err);
static void append_nullable_string(StringInfo buf, bool *first, const char *key,
								   const char *value);

/*
 * llm.adapter_build_request(kind, request, upstream_model, secret,
 *		provider_options, route_options, base_url)
 *
 * Returns {"url", "headers": {name: value}, "body"} with the secret shown
 * as [redacted].  An adapter failure is raised as the error the call would
 * have failed with.
 */
Datum
llm_adapter_build_request(PG_FUNCTION_ARGS)
{
	const LlmProvider *provider;
	LlmTarget	target;
	LlmCall		call;
	LlmHttpRequest out;
	LlmError	err;

	llm_check_preloaded();
	if (PG_ARGISNULL(0) || PG_ARGISNULL(1) || PG_ARGISNULL(2))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("kind, request and upstream_model must not be null")));

	provider = lookup_kind(PG_GETARG_TEXT_PP(0));

	adapter_sql_target(fcinfo, provider, 2, &target);

	memset(&call, 0, sizeof(call));
	call.request = object_arg(fcinfo, 1, "request");

	memset(&out, 0, sizeof(out));
	memset(&err, 0, sizeof(err));
	if (!provider->build_request(&call, &target, &out, &err))
		adapter_sql_raise(&err);
	PG_RETURN_JSONB_P(adapter_sql_request_json(&out, target.secret));
}

/*
 * The target of the diagnostic functions, from their arguments in this
 * order from model_arg: upstream_model, secret, provider_options,
 * route_options, base_url.  There is no region argument:
 * provider_options.region stands for llm.providers.region.
 */
void
adapter_sql_target(FunctionCallInfo fcinfo, const LlmProvider *provider, int model_arg,
				   LlmTarget *target)
{
	char	   *base_url;
	size_t		len;

	memset(target, 0, sizeof(*target));
	target->provider = provider;
	target->provider_name = provider->kind;
	target->upstream_model = text_to_cstring(PG_GETARG_TEXT_PP(model_arg));
	target->secret = PG_ARGISNULL(model_arg + 1) ? NULL
		: text_to_cstring(PG_GETARG_TEXT_PP(model_arg + 1));
	target->provider_options = object_arg(fcinfo, model_arg + 2, "provider_options");
	target->route_options = object_arg(fcinfo, model_arg + 3, "route_options");
	target->region = json_get_cstring(&target->provider_options->root, "region");
	base_url = PG_ARGISNULL(model_arg + 4) ? pstrdup("http://provider.invalid")
		: text_to_cstring(PG_GETARG_TEXT_PP(model_arg + 4));
	/* the worker stores base URLs without a trailing slash; so do we */
	len = strlen(base_url);
	while (len > 0 && base_url[len - 1] == '/')
		base_url[--len] = '\0';
	target->base_url = base_url;
}

/* What the worker would send: {"url", "headers": {name: value}, "body"}, the secret scrubbed. */
Jsonb *
adapter_sql_request_json(const LlmHttpRequest *out, const char *secret)
{
	StringInfoData buf;
	bool		first = true;

	initStringInfo(&buf);
	appendStringInfoChar(&buf, '{');
	json_append_key(&buf, &first, "url");
	json_append_string(&buf, out->url);
	json_append_key(&buf, &first, "headers");
	append_headers_object(&buf, out->headers, secret);
	json_append_key(&buf, &first, "body");
	appendBinaryStringInfo(&buf, out->body.data, out->body.len);
	appendStringInfoChar(&buf, '}');
	return jsonb_from_cstring(buf.data);
}

/* An adapter's failure raised as the error the call would have failed with. */
void
adapter_sql_raise(const LlmError *err)
{
	ereport(ERROR,
			(errcode(err->sqlerrcode ? err->sqlerrcode : ERRCODE_INTERNAL_ERROR),
			 errmsg("%s", err->message ? err->message : "adapter failed without a message"),
			 err->detail ? errdetail("%s", err->detail) : 0,
			 err->hint ? errhint("%s", err->hint) : 0));
}

/*
 * llm.adapter_parse_response(kind, status, body, headers)
 *
 * A 2xx answer goes through parse_response; anything else through
 * llm_error_for_status() and then parse_error, as the worker does.
 * Returns the canonical answer parts, or {"error": {...}}.
 */
Datum
llm_adapter_parse_response(PG_FUNCTION_ARGS)
{
	const LlmProvider *provider;
	int32		status = PG_GETARG_INT32(1);
	char	   *body = text_to_cstring(PG_GETARG_TEXT_PP(2));
	LlmHttpResult res;
	LlmError	err;
	StringInfoData buf;

	llm_check_preloaded();
	provider = lookup_kind(PG_GETARG_TEXT_PP(0));

	memset(&res, 0, sizeof(res));
	res.status = status;
	res.body = body;
	res.body_len = strlen(body);
	res.headers = headers_from_jsonb(object_arg(fcinfo, 3, "headers"));

	memset(&err, 0, sizeof(err));
	initStringInfo(&buf);
	if (status >= 200 && status < 300)
	{
		LlmTarget	target;
		LlmCall		call;
		LlmAnswer	answer;

		/* a target with nothing configured: the answer alone must suffice */
		memset(&target, 0, sizeof(target));
		target.provider = provider;
		target.provider_name = provider->kind;
		target.provider_options = empty_object();
		target.route_options = empty_object();
		memset(&call, 0, sizeof(call));
		call.request = empty_object();

		if (provider->parse_response(&call, &target, &res, &answer, &err))
			append_answer(&buf, &answer);
		else
			append_error(&buf, &err);
	}
	else
	{
		llm_error_for_status(status, &err);
		provider->parse_error(&res, &err);
		append_error(&buf, &err);
	}
	PG_RETURN_JSONB_P(jsonb_from_cstring(buf.data));
}

static const LlmProvider *
lookup_kind(text *kind)
{
	char	   *name = text_to_cstring(kind);
	const LlmProvider *provider = provider_lookup(name);

	if (provider == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("unknown provider kind \"%s\"", name),
				 errhint("Known kinds are: %s.", provider_kinds())));
	return provider;
}

/* A jsonb argument that must be an object; NULL means {}. */
static Jsonb *
object_arg(FunctionCallInfo fcinfo, int argno, const char *name)
{
	Jsonb	   *jb;

	if (PG_ARGISNULL(argno))
		return empty_object();
	jb = PG_GETARG_JSONB_P(argno);
	if (!JB_ROOT_IS_OBJECT(jb))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("%s must be a JSON object", name)));
	return jb;
}

static Jsonb *
empty_object(void)
{
	return jsonb_from_cstring("{}");
}

/* {"Name": "value", ...} -> List of LlmHttpHeader, names lower-cased as curl's are. */
static List *
headers_from_jsonb(Jsonb *headers)
{
	List	   *result = NIL;
	JsonbIterator *it = JsonbIteratorInit(&headers->root);
	JsonbValue	v;
	JsonbIteratorToken tok;
	char	   *name = NULL;

	while ((tok = JsonbIteratorNext(&it, &v, true)) != WJB_DONE)
	{
		if (tok == WJB_KEY)
		{
			name = pnstrdup(v.val.string.val, v.val.string.len);
			for (char *p = name; *p; p++)
				*p = pg_ascii_tolower((unsigned char) *p);
		}
		else if (tok == WJB_VALUE)
		{
			LlmHttpHeader *h = palloc(sizeof(LlmHttpHeader));

			if (v.type == jbvString)
				h->value = json_value_cstring(&v);
			else if (v.type == jbvNumeric)
				h->value = DatumGetCString(DirectFunctionCall1(numeric_out,
															   NumericGetDatum(v.val.numeric)));
			else
				ereport(ERROR,
						(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
						 errmsg("value of header \"%s\" must be a string or a number", name)));
			h->name = name;
			result = lappend(result, h);
		}
	}
	return result;
}

/* The request's "Name: value" lines as a JSON object, the secret scrubbed. */
static void
append_headers_object(StringInfo buf, List *headers, const char *secret)
{
	ListCell   *lc;
	bool		first = true;

	appendStringInfoChar(buf, '{');
	foreach(lc, headers)
	{
		char	   *line = pstrdup((char *) lfirst(lc));
		char	   *colon = strchr(line, ':');
		char	   *value = "";

		if (colon != NULL)
		{
			*colon = '\0';
			value = colon + 1;
			while (*value == ' ')
				value++;
		}
		json_append_key(buf, &first, line);
		json_append_string(buf, provider_scrub(value, secret));
	}
	appendStringInfoChar(buf, '}');
}

static void
append_count(StringInfo buf, bool *first, const char *key, int64 n)
{
	json_append_key(buf, first, key);
	appendStringInfo(buf, INT64_FORMAT, n);
}

static void
append_answer(StringInfo buf, const LlmAnswer *answer)
{
	bool		first = true;
	bool		first_usage = true;

	appendStringInfoChar(buf, '{');
	append_nullable_string(buf, &first, "id", answer->id);
	append_nullable_string(buf, &first, "model", answer->model);
	json_append_key(buf, &first, "content");
	if (answer->content.len > 0)
		appendBinaryStringInfo(buf, answer->content.data, answer->content.len);
	else
		appendStringInfoString(buf, "[]");
	append_nullable_string(buf, &first, "stop_reason", answer->stop_reason);
	append_nullable_string(buf, &first, "stop_sequence", answer->stop_sequence);
	json_append_key(buf, &first, "usage");
	appendStringInfoChar(buf, '{');
	append_count(buf, &first_usage, "input_tokens", answer->input_tokens);
	append_count(buf, &first_usage, "output_tokens", answer->output_tokens);
	append_count(buf, &first_usage, "cache_creation_input_tokens",
				 answer->cache_creation_input_tokens);
	append_count(buf, &first_usage, "cache_read_input_tokens",
				 answer->cache_read_input_tokens);
	appendStringInfoString(buf, "}}");
}

/* {"error": {...}}; detail and hint appear only when the adapter set them. */
static void
append_error(StringInfo buf, const LlmError *err)
{
	bool		first = true;

	appendStringInfoString(buf, "{\"error\":{");
	append_nullable_string(buf, &first, "sqlstate", unpack_sql_state(err->sqlerrcode));
	append_nullable_string(buf, &first, "class", llm_fail_class_name(err->fail_class));
	append_nullable_string(buf, &first, "message", err->message);
	if (err->detail != NULL)
		append_nullable_string(buf, &first, "detail", err->detail);
	if (err->hint != NULL)
		append_nullable_string(buf, &first, "hint", err->hint);
	append_nullable_string(buf, &first, "provider_type", err->provider_type);
	append_count(buf, &first, "http_status", err->http_status);
	json_append_key(buf, &first, "retry_after_s");
	if (err->retry_after_s >= 0 && !isinf(err->retry_after_s))
		appendStringInfoString(buf, float8out_internal(err->retry_after_s));
	else
		appendStringInfoString(buf, "null");
	appendStringInfoString(buf, "}}");
}

static void
append_nullable_string(StringInfo buf, bool *first, const char *key, const char *value)
{
	json_append_key(buf, first, key);
	if (value != NULL)
		json_append_string(buf, value);
	else
		appendStringInfoString(buf, "null");
}


/*-------------------------------------------------------------------------
 *
 * embed_sql.c
 *	  llm_embed: text to embedding vectors through the gateway, one input
 *	  (a call kind, so the pipeline node runs many rows' calls at once) or
 *	  an array of inputs (one call, rows in input order); and the
 *	  diagnostic adapter functions for embeddings.
 *
 * runs in: backend.
 *
 * An embedding call is a canonical request {"embed": {"input": [...],
 * "dimensions", "input_type"}} (providers/adapter.h), checked here before
 * anything is sent, and carried by the channel like a chat call.  The
 * worker answers {"embeddings": [[...], ...], "model", "usage", "gateway"}.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <math.h>

#include "catalog/pg_type.h"
#include "funcapi.h"
#include "miscadmin.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/float.h"
#include "utils/jsonb.h"
#include "utils/lsyscache.h"

#include "backend/call_result.h"
#include "backend/adapter_sql.h"
#include "backend/sql_api.h"
#include "backend/validate.h"
#include "common/json_util.h"
#include "common/llm_errors.h"
#include "llm_gateway.h"
#include "providers/adapter.h"

PG_FUNCTION_INFO_V1(llm_embed);
PG_FUNCTION_INFO_V1(llm_embed_many);
PG_FUNCTION_INFO_V1(llm_adapter_build_embed_request);
PG_FUNCTION_INFO_V1(llm_adapter_parse_embed_response);
PG_FUNCTION_INFO_V1(llm_kind_has_embeddings);

/* the most inputs one llm_embed(text[]) call may carry (OpenAI's limit) */
#define EMBED_MAX_INPUTS	2048
#define EMBED_MAX_DIMENSIONS 65536

#define EMBED_OPTION_HINT "Embedding options are dimensions, input_type, timeout_ms, tags and on_error."

static void
bad_option(const char *msg, const char *hint) pg_attribute_noreturn();

static void
bad_option(const char *msg, const char *hint)
{
	ereport(ERROR,
			(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
			 errmsg("%s", msg),
			 hint ? errhint("%s", hint) : 0));
}

/* an integer option within [min, max] */
static int
int_option(JsonbValue *v, const char *name, int min, int max, const char *hint)
{
	double		d;

	if (v->type != jbvNumeric)
		bad_option(psprintf("option \"%s\" must be an integer", name), hint);
	d = DatumGetFloat8(DirectFunctionCall1(numeric_float8_no_overflow,
										   NumericGetDatum(v->val.numeric)));
	if (d != floor(d))
		bad_option(psprintf("option \"%s\" must be an integer", name), hint);
	if (d < min || d > max)
		bad_option(psprintf("option \"%s\" is out of range: %.0f", name, d), hint);
	return (int) d;
}

/*
 * Check the inputs and options of an embedding call and build its
 * canonical request.  Unknown options are errors, as for llm_messages: a
 * typo must not silently change what is sent.
 */
static void
embed_validate(const char *alias, char **inputs, int ninputs, Jsonb *options,
			   LlmCallSpec *spec)
{
	JsonbIterator *it;
	JsonbIteratorToken tok;
	JsonbValue	key;
	JsonbValue	val;
	StringInfoData req;
	int			dimensions = 0;
	const char *input_type = NULL;
	int			i;

	if (alias[0] == '\0')
		bad_option("model alias must not be empty", "Pass the alias of a route defined with llm.add_route().");
	spec->timeout_ms = llm_request_timeout_ms;
	spec->tags = NULL;
	spec->on_error_null = (llm_on_error == LLM_ON_ERROR_NULL);
	if (!JB_ROOT_IS_OBJECT(options))
		bad_option("options must be a JSON object", "Pass e.g. '{\"dimensions\": 256}', or '{}' for none.");

	it = JsonbIteratorInit(&options->root);
	while ((tok = JsonbIteratorNext(&it, &key, false)) != WJB_DONE)
	{
		char	   *name;

		if (tok != WJB_KEY)
			continue;
		name = pnstrdup(key.val.string.val, key.val.string.len);
		tok = JsonbIteratorNext(&it, &val, true);
		if (strcmp(name, "dimensions") == 0)
			dimensions = int_option(&val, name, 1, EMBED_MAX_DIMENSIONS,
									psprintf("Give dimensions as an integer between 1 and %d.", EMBED_MAX_DIMENSIONS));
		else if (strcmp(name, "input_type") == 0)
		{
			char	   *t = json_value_cstring(&val);

			if (t == NULL || (strcmp(t, "query") != 0 && strcmp(t, "document") != 0))
				bad_option("option \"input_type\" must be \"query\" or \"document\"",
						   "Use \"query\" for search queries and \"document\" for the texts searched.");
			input_type = t;
		}
		else if (strcmp(name, "timeout_ms") == 0)
			spec->timeout_ms = int_option(&val, name, 1, INT_MAX / 2,
										  "Give timeout_ms as a positive number of milliseconds.");
		else if (strcmp(name, "on_error") == 0)
		{
			char	   *t = json_value_cstring(&val);

			if (t == NULL || !llm_on_error_parse(t, &spec->on_error_null))
				bad_option("option \"on_error\" must be \"raise\" or \"null\"",
						   "\"null\" makes a failed call return NULL.");
		}
		else if (strcmp(name, "tags") == 0)
		{
			StringInfoData buf;

			if (json_value_container(&val, false) == NULL)
				bad_option("option \"tags\" must be a JSON object", "Pass tags as {\"name\": \"value\", ...}.");
			initStringInfo(&buf);
			json_append_value(&buf, &val);
			spec->tags = buf.data;
		}
		else
			bad_option(psprintf("unknown option \"%s\"", name), EMBED_OPTION_HINT);
	}

	initStringInfo(&req);
	appendStringInfoString(&req, "{\"embed\":{\"input\":[");
	for (i = 0; i < ninputs; i++)
	{
		if (i > 0)
			appendStringInfoChar(&req, ',');
		json_append_string(&req, inputs[i]);
	}
	appendStringInfoChar(&req, ']');
	if (dimensions > 0)
		appendStringInfo(&req, ",\"dimensions\":%d", dimensions);
	if (input_type != NULL)
	{
		appendStringInfoString(&req, ",\"input_type\":");
		json_append_string(&req, input_type);
	}
	appendStringInfoString(&req, "}}");
	spec->request = jsonb_from_cstring(req.data);
}

static void
embed_prepare_inputs(text *model, char **inputs, int ninputs, Jsonb *options,
					 LlmPreparedCall *call)
{
	char	   *alias = text_to_cstring(model);
	LlmCallSpec spec;

	llm_check_can_call(alias);
	embed_validate(alias, inputs, ninputs, options, &spec);
	llm_build_call(alias, &spec, call);
}

/* llm_embed(model text, input text, options jsonb) */
static void
embed_prepare(const NullableDatum *args, LlmPreparedCall *call)
{
	char	   *input;

	require_args(args, "input", "Filter out NULL rows, or coalesce() the input.");
	input = text_to_cstring(DatumGetTextPP(args[1].value));
	embed_prepare_inputs(DatumGetTextPP(args[0].value), &input, 1, options_arg(&args[2]), call);
}

/* The answer's "embeddings" array, checked: the worker wrote it. */
static JsonbContainer *
answer_vectors(const LlmCallResult *r, int expect)
{
	bool		isnull;
	Jsonb	   *answer = DatumGetJsonbP(llm_call_result(r, false, false, &isnull));
	JsonbContainer *vectors = json_get_array(&answer->root, "embeddings");

	if (vectors == NULL || json_array_size(vectors) != expect)
		ereport(ERROR,
				(errcode(ERRCODE_INTERNAL_ERROR),
				 errmsg("the gateway worker's embedding answer has %d vectors, not %d",
						vectors ? json_array_size(vectors) : 0, expect)));
	return vectors;
}

/* One vector of the answer as real[]. */
static ArrayType *
vector_array(JsonbContainer *vectors, int i)
{
	JsonbContainer *v = json_value_container(json_array_elem(vectors, i), true);
	int			n = json_array_size(v);
	Datum	   *elems = palloc(sizeof(Datum) * Max(n, 1));
	int			j;

	for (j = 0; j < n; j++)
	{
		JsonbValue *e = json_array_elem(v, j);
		char	   *s = DatumGetCString(DirectFunctionCall1(numeric_out,
															NumericGetDatum(e->val.numeric)));

		elems[j] = Float4GetDatum(strtof(s, NULL));	/* shortest decimal: exact */
	}
	return construct_array(elems, n, FLOAT4OID, sizeof(float4), true, TYPALIGN_INT);
}

static Datum
embed_result(const NullableDatum *args, const LlmCallResult *r, bool on_error_null, bool *isnull)
{
	*isnull = false;
	if (r->outcome != LLM_OUTCOME_OK)
		return llm_call_result(r, on_error_null, true, isnull);	/* raises, or NULL */
	return PointerGetDatum(vector_array(answer_vectors(r, 1), 0));
}

const LlmCallKind llm_embed_kind = {"llm_embed", llm_embed, embed_prepare, embed_result, 2, false};

/*
 * llm_embed(model text, input text, options jsonb DEFAULT '{}') -> real[]
 */
Datum
llm_embed(PG_FUNCTION_ARGS)
{
	return llm_run_call(&llm_embed_kind, fcinfo);
}

/*
 * llm_embed(model text, inputs text[], options jsonb DEFAULT '{}')
 *	 -> TABLE (ordinality int, embedding real[])
 *
 * One call (one provider request, one llm.requests row) for all inputs;
 * one row per input, in input order, numbered from 1 like WITH ORDINALITY.
 * With on_error = null a failed call returns every row with a NULL
 * embedding, so a join on ordinality still sees each input.
 */
Datum
llm_embed_many(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	ArrayType  *arr;
	Datum	   *elems;
	bool	   *nulls;
	int			n;
	char	  **inputs;
	LlmPreparedCall call;
	LlmCallResult result;
	JsonbContainer *vectors = NULL;
	int			i;

	require_args(fcinfo->args, "inputs", "Pass an array of texts.");
	arr = PG_GETARG_ARRAYTYPE_P(1);
	if (ARR_NDIM(arr) > 1)
		bad_option("inputs must be a one-dimensional array", NULL);
	deconstruct_array(arr, TEXTOID, -1, false, TYPALIGN_INT, &elems, &nulls, &n);
	if (n < 1)
		bad_option("inputs must not be empty", "Pass at least one text.");
	if (n > EMBED_MAX_INPUTS)
		bad_option(psprintf("llm_embed takes at most %d inputs in one call, not %d", EMBED_MAX_INPUTS, n),
				   "Split the array, or call llm_embed(model, input) per row: the worker batches those.");
	inputs = palloc(sizeof(char *) * n);
	for (i = 0; i < n; i++)
	{
		if (nulls[i])
			ereport(ERROR,
					(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
					 errmsg("input %d of inputs is NULL", i + 1),
					 errhint("Filter out NULLs, e.g. array_remove(inputs, NULL).")));
		inputs[i] = TextDatumGetCString(elems[i]);
	}

	InitMaterializedSRF(fcinfo, 0);
	embed_prepare_inputs(PG_GETARG_TEXT_PP(0), inputs, n, options_arg(&fcinfo->args[2]), &call);
	channel_call(&call.hdr, call.data.data, call.data.len, call.hdr.timeout_ms, &result);
	pfree(call.data.data);
	if (result.outcome != LLM_OUTCOME_OK)
	{
		bool		isnull;

		(void) llm_call_result(&result, call.on_error_null, true, &isnull);	/* raises, or NULL */
	}
	else
		vectors = answer_vectors(&result, n);
	for (i = 0; i < n; i++)
	{
		Datum		values[2];
		bool		rnulls[2] = {false, vectors == NULL};

		values[0] = Int32GetDatum(i + 1);
		values[1] = vectors ? PointerGetDatum(vector_array(vectors, i)) : (Datum) 0;
		tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, values, rnulls);
	}
	return (Datum) 0;
}

/* ---------- diagnostic functions (no network, no validation of the target) ---------- */

static const LlmProvider *
embed_kind(text *kind)
{
	char	   *name = text_to_cstring(kind);
	const LlmProvider *provider = provider_lookup(name);

	if (provider == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("unknown provider kind \"%s\"", name),
				 errhint("Known kinds are: %s.", provider_kinds())));
	if (provider->build_embed_request == NULL || provider->parse_embed_response == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
				 errmsg("provider kind \"%s\" has no embeddings", name)));
	return provider;
}

static Jsonb *
object_or_empty(FunctionCallInfo fcinfo, int argno)
{
	Jsonb	   *jb = PG_ARGISNULL(argno) ? NULL : PG_GETARG_JSONB_P(argno);

	if (jb == NULL)
		return jsonb_from_cstring("{}");
	if (!JB_ROOT_IS_OBJECT(jb))
		bad_option("provider_options and route_options must be JSON objects", NULL);
	return jb;
}

/*
 * llm.adapter_build_embed_request(kind, inputs text[], options jsonb,
 *		upstream_model, secret, provider_options, route_options, base_url)
 *
 * {"url", "headers": {name: value}, "body"} as the worker would send for
 * these inputs and llm_embed options, the secret shown as [redacted].
 */
Datum
llm_adapter_build_embed_request(PG_FUNCTION_ARGS)
{
	const LlmProvider *provider;
	LlmTarget	target;
	LlmEmbedCall call;
	LlmCallSpec spec;
	LlmHttpRequest out;
	LlmError	err;
	ArrayType  *arr;
	Datum	   *elems;
	bool	   *nulls;
	int			n;
	char	  **inputs;
	int			i;

	llm_check_preloaded();
	if (PG_ARGISNULL(0) || PG_ARGISNULL(1) || PG_ARGISNULL(3))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("kind, inputs and upstream_model must not be null")));
	provider = embed_kind(PG_GETARG_TEXT_PP(0));
	arr = PG_GETARG_ARRAYTYPE_P(1);
	deconstruct_array(arr, TEXTOID, -1, false, TYPALIGN_INT, &elems, &nulls, &n);
	if (n < 1)
		bad_option("inputs must not be empty", NULL);
	inputs = palloc(sizeof(char *) * n);
	for (i = 0; i < n; i++)
		inputs[i] = nulls[i] ? "" : TextDatumGetCString(elems[i]);
	embed_validate("diagnostic", inputs, n, object_or_empty(fcinfo, 2), &spec);
	if (!embed_call_from_request(spec.request, &call))
		elog(ERROR, "embedding request did not read back");

	adapter_sql_target(fcinfo, provider, 3, &target);

	memset(&err, 0, sizeof(err));
	if (!provider->build_embed_request(&call, &target, &out, &err))
		adapter_sql_raise(&err);

	PG_RETURN_JSONB_P(adapter_sql_request_json(&out, target.secret));
}

/*
 * llm.adapter_parse_embed_response(kind, status, body, ninputs, dimensions)
 *
 * {"embeddings": [[...]], "dimension", "input_tokens", "model"} read from
 * a provider answer to a call of ninputs inputs (asking for dimensions, 0
 * = any), or {"error": {"sqlstate", "class", "message", "detail"}}.
 */
Datum
llm_adapter_parse_embed_response(PG_FUNCTION_ARGS)
{
	const LlmProvider *provider;
	int32		status = PG_GETARG_INT32(1);
	char	   *body = text_to_cstring(PG_GETARG_TEXT_PP(2));
	int32		ninputs = PG_GETARG_INT32(3);
	int32		dims = PG_GETARG_INT32(4);
	LlmHttpResult res;
	LlmError	err;
	LlmTarget	target;
	LlmEmbedCall call;
	LlmEmbedAnswer answer;
	StringInfoData buf;
	bool		ok = false;
	int			i;

	llm_check_preloaded();
	provider = embed_kind(PG_GETARG_TEXT_PP(0));
	if (ninputs < 1 || ninputs > EMBED_MAX_INPUTS || dims < 0 || dims > EMBED_MAX_DIMENSIONS)
		bad_option("ninputs or dimensions out of range", NULL);

	memset(&res, 0, sizeof(res));
	res.status = status;
	res.body = body;
	res.body_len = strlen(body);
	memset(&err, 0, sizeof(err));
	memset(&target, 0, sizeof(target));
	target.provider = provider;
	target.provider_name = provider->kind;
	target.provider_options = jsonb_from_cstring("{}");
	target.route_options = target.provider_options;
	memset(&call, 0, sizeof(call));
	call.ninputs = ninputs;
	call.inputs = palloc0(sizeof(char *) * ninputs);
	for (i = 0; i < ninputs; i++)
		call.inputs[i] = "";
	call.dimensions = dims;

	initStringInfo(&buf);
	if (status >= 200 && status < 300)
		ok = provider->parse_embed_response(&call, &target, &res, &answer, &err);
	else
	{
		llm_error_for_status(status, &err);
		provider->parse_error(&res, &err);
	}
	if (ok)
	{
		appendStringInfoString(&buf, "{\"embeddings\":");
		embed_append_vectors(&buf, &answer);
		appendStringInfo(&buf, ",\"dimension\":%d,\"input_tokens\":" INT64_FORMAT ",\"model\":",
						 answer.dimension, answer.input_tokens);
		if (answer.model)
			json_append_string(&buf, answer.model);
		else
			appendStringInfoString(&buf, "null");
		appendStringInfoChar(&buf, '}');
	}
	else
	{
		appendStringInfoString(&buf, "{\"error\":{\"sqlstate\":");
		json_append_string(&buf, unpack_sql_state(err.sqlerrcode));
		appendStringInfoString(&buf, ",\"class\":");
		json_append_string(&buf, llm_fail_class_name(err.fail_class));
		appendStringInfoString(&buf, ",\"message\":");
		json_append_string(&buf, err.message ? err.message : "");
		if (err.detail)
		{
			appendStringInfoString(&buf, ",\"detail\":");
			json_append_string(&buf, err.detail);
		}
		appendStringInfoString(&buf, "}}");
	}
	PG_RETURN_JSONB_P(jsonb_from_cstring(buf.data));
}

/* llm._kind_has_embeddings(kind): false for an unknown kind too */
Datum
llm_kind_has_embeddings(PG_FUNCTION_ARGS)
{
	const LlmProvider *p = provider_lookup(text_to_cstring(PG_GETARG_TEXT_PP(0)));

	PG_RETURN_BOOL(p != NULL && p->build_embed_request != NULL && p->parse_embed_response != NULL);
}

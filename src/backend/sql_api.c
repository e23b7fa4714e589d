/*-------------------------------------------------------------------------
 *
 * sql_api.c
 *	  SQL-callable functions: llm_messages, llm_complete and the small
 *	  llm.* helpers implemented in C.
 *
 * runs in: backend.
 *
 * A call validates its input, hands the canonical request to the worker
 * through the channel, waits, and returns what call_result.c makes of the
 * outcome (the answer; or the error raised, or NULL / an error object).  The backend never touches the
 * network and never sees a provider key.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <math.h>

#include "access/htup_details.h"
#include "catalog/pg_type.h"
#include "commands/dbcommands.h"
#include "commands/trigger.h"
#include "catalog/namespace.h"
#include "funcapi.h"
#include "miscadmin.h"
#include "utils/acl.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/inval.h"
#include "utils/jsonb.h"
#include "utils/lsyscache.h"
#include "utils/timestamp.h"

#include "channel/channel.h"
#include "common/json_util.h"
#include "common/llm_errors.h"
#include "llm_gateway.h"
#include "worker/log_flusher.h"
#include "worker/worker_timing.h"
#include "providers/adapter.h"
#include "backend/validate.h"
#include "backend/sql_api.h"
#include "backend/call_result.h"
#include "backend/json_schema.h"

PG_FUNCTION_INFO_V1(llm_messages);
PG_FUNCTION_INFO_V1(llm_complete);
PG_FUNCTION_INFO_V1(llm_extract);
PG_FUNCTION_INFO_V1(llm_gateway_status);
PG_FUNCTION_INFO_V1(llm_config_changed);
PG_FUNCTION_INFO_V1(llm_provider_kinds);

/*
 * The worker serves one database; say so before anything else.  First
 * whether it can serve at all (a standby, a worker that cannot connect to
 * llm.database), then whether this is that database.
 */
static void
check_database(void)
{
	static Oid	checked_db = InvalidOid;
	char		why[LLM_PROBLEM_TEXT_LEN];

	channel_check_serving();
	if (checked_db == MyDatabaseId)
		return;
	if (strcmp(get_database_name(MyDatabaseId), llm_database) != 0)
	{
		bool		no_extension = channel_worker_problem(why, sizeof(why)) == LLM_WORKER_NO_EXTENSION;

		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("llm_gateway serves calls only from database \"%s\" (llm.database)", llm_database),
				 no_extension ?
				 errdetail("This session is connected to database \"%s\"; when the worker started, %s.",
						   get_database_name(MyDatabaseId), why) :
				 errdetail("This session is connected to database \"%s\".",
						   get_database_name(MyDatabaseId)),
				 no_extension ?
				 errhint("Set llm.database in postgresql.conf to the database where CREATE EXTENSION llm_gateway was run, and restart the server.") :
				 errhint("Connect to \"%s\", or set llm.database in postgresql.conf and restart the server.",
						 llm_database)));
	}
	checked_db = MyDatabaseId;
}

/* set while llm.estimate counts rows exactly: no call may leave then */
bool		llm_calls_forbidden = false;

/*
 * Check and build one call: the message header, the data that follows it,
 * and whether its failure is returned as NULL / an error object
 * (on_error).  Raises the caller's mistakes before anything is sent.
 */
void
llm_check_can_call(const char *alias)
{
	llm_check_preloaded();
	if (llm_calls_forbidden)
		ereport(ERROR,
				(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
				 errmsg("llm.estimate does not call providers, but the statement it counts made a call"),
				 errdetail("A function the planner cannot see into (a PL/pgSQL or STABLE wrapper) called alias \"%s\".", alias),
				 errhint("Estimate without exact => true, or mark the wrapper VOLATILE so it is left out of the count.")));
	check_database();
}

/*
 * The channel message of a checked call (spec: validate_call's, or
 * embed_sql.c's for an embedding).
 */
void
llm_build_call(const char *alias, const LlmCallSpec *spec, LlmPreparedCall *call)
{
	char	   *role = GetUserNameFromId(GetUserId(), false);
	LlmRequestMsg hdr;
	StringInfoData data;

	memset(&hdr, 0, sizeof(hdr));
	hdr.userid = GetUserId();
	hdr.timeout_ms = spec->timeout_ms;
	hdr.submitted_at = GetCurrentTimestamp();
	hdr.alias_len = strlen(alias);
	hdr.role_len = strlen(role);
	hdr.tags_len = spec->tags ? strlen(spec->tags) : 0;
	hdr.regions_len = llm_allowed_regions ? strlen(llm_allowed_regions) : 0;
	hdr.request_len = VARSIZE(spec->request);

	initStringInfo(&data);
	appendBinaryStringInfo(&data, alias, hdr.alias_len + 1);
	appendBinaryStringInfo(&data, role, hdr.role_len + 1);
	appendBinaryStringInfo(&data, spec->tags ? spec->tags : "", hdr.tags_len + 1);
	appendBinaryStringInfo(&data, llm_allowed_regions ? llm_allowed_regions : "", hdr.regions_len + 1);
	appendBinaryStringInfo(&data, (char *) spec->request, hdr.request_len);

	if (data.len > llm_max_request_bytes)
		ereport(ERROR,
				(errcode(ERRCODE_PROGRAM_LIMIT_EXCEEDED),
				 errmsg("the call is %d bytes, more than llm.max_request_bytes (%d)",
						data.len, llm_max_request_bytes),
				 errhint("Send a shorter history, or ask an administrator to raise llm.max_request_bytes.")));
	call->hdr = hdr;
	call->data = data;
	call->on_error_null = spec->on_error_null;
}

static void
prepare_call(text *model, Jsonb *history, Jsonb *options, LlmPreparedCall *call)
{
	char	   *alias = text_to_cstring(model);
	LlmCallSpec spec;

	llm_check_can_call(alias);
	validate_call(alias, history, options, &spec);
	llm_build_call(alias, &spec, call);
}

/* options: the argument, or '{}' when NULL */
Jsonb *
options_arg(const NullableDatum *arg)
{
	if (arg->isnull)
		return jsonb_from_cstring("{}");
	return DatumGetJsonbP(arg->value);
}

/* The model alias (argument 0) and the input (argument 1) must not be NULL. */
void
require_args(const NullableDatum *args, const char *input, const char *hint)
{
	if (args[0].isnull)
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("model alias must not be NULL"),
				 errhint("Pass the alias of a route defined with llm.add_route().")));
	if (args[1].isnull)
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("%s must not be NULL", input),
				 errhint("%s", hint)));
}

/* llm_messages(model text, history jsonb, options jsonb) */
static void
messages_prepare(const NullableDatum *args, LlmPreparedCall *call)
{
	require_args(args, "history", "Pass e.g. '[{\"role\": \"user\", \"content\": \"Hello\"}]'.");
	prepare_call(DatumGetTextPP(args[0].value), DatumGetJsonbP(args[1].value),
				 options_arg(&args[2]), call);
}

static Datum
messages_result(const NullableDatum *args, const LlmCallResult *r, bool on_error_null,
				bool *isnull)
{
	return llm_call_result(r, on_error_null, false, isnull);
}

/* the history of one user turn */
static Jsonb *
user_turn(const char *prompt)
{
	StringInfoData hist;

	initStringInfo(&hist);
	appendStringInfoString(&hist, "[{\"role\":\"user\",\"content\":");
	json_append_string(&hist, prompt);
	appendStringInfoString(&hist, "}]");
	return jsonb_from_cstring(hist.data);
}

/* llm_complete(model text, prompt text, options jsonb): one user turn */
static void
complete_prepare(const NullableDatum *args, LlmPreparedCall *call)
{
	require_args(args, "prompt", "Filter out NULL rows, or coalesce() the prompt.");
	prepare_call(DatumGetTextPP(args[0].value),
				 user_turn(text_to_cstring(DatumGetTextPP(args[1].value))),
				 options_arg(&args[2]), call);
}

/* the joined text of the answer's text blocks (tool calls and thinking left out) */
static Datum
complete_result(const NullableDatum *args, const LlmCallResult *r, bool on_error_null,
				bool *isnull)
{
	return llm_call_result(r, on_error_null, true, isnull);
}

/*
 * llm_extract(model text, prompt text, schema jsonb, options jsonb): the
 * prompt with output_config built from the schema; its options are the
 * caller's plus output_config, and timeout_ms (for the retry) when given.
 */
static Jsonb *
extract_options(const NullableDatum *args, int timeout_ms)
{
	Jsonb	   *options = options_arg(&args[3]);
	Jsonb	   *schema;
	char	   *problem;
	StringInfoData add;

	if (args[2].isnull)
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("schema must not be NULL"),
				 errhint("Pass a JSON Schema object, e.g. '{\"type\": \"object\", \"properties\": {...}}'.")));
	schema = DatumGetJsonbP(args[2].value);
	if (!json_schema_check(schema, &problem))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("llm_extract: %s", problem),
				 errhint("Pass a JSON Schema object, e.g. '{\"type\": \"object\", \"properties\": {...}}'.")));
	if (JB_ROOT_IS_OBJECT(options) && json_get(&options->root, "output_config") != NULL)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("llm_extract sets option \"output_config\" from its schema argument"),
				 errhint("Leave output_config out of the options.")));
	if (!JB_ROOT_IS_OBJECT(options))
		return options;			/* validate_call says what is wrong */

	initStringInfo(&add);
	appendStringInfoString(&add, "{\"output_config\":{\"format\":{\"type\":\"json_schema\",\"schema\":");
	appendStringInfoString(&add, JsonbToCString(NULL, &schema->root, VARSIZE(schema)));
	appendStringInfoString(&add, "}}");
	if (timeout_ms > 0)
		appendStringInfo(&add, ",\"timeout_ms\":%d", timeout_ms);
	appendStringInfoChar(&add, '}');
	return DatumGetJsonbP(DirectFunctionCall2(jsonb_concat, JsonbPGetDatum(options),
											  JsonbPGetDatum(jsonb_from_cstring(add.data))));
}

static void
extract_prepare(const NullableDatum *args, LlmPreparedCall *call)
{
	require_args(args, "prompt", "Filter out NULL rows, or coalesce() the prompt.");
	prepare_call(DatumGetTextPP(args[0].value),
				 user_turn(text_to_cstring(DatumGetTextPP(args[1].value))),
				 extract_options(args, 0), call);
}

/*
 * A finished llm_extract call: the answer's JSON if it follows the schema
 * (true), else false with the violation.  A failed call raises or gives
 * NULL (*isnull) as llm_complete does.  *latency_ms: how long the call took
 * by the worker's clock (gateway.latency_ms).
 */
static bool
extract_check(const NullableDatum *args, const LlmCallResult *r, bool on_error_null,
			  bool *isnull, Jsonb **doc, char **said, char **violation, double *latency_ms)
{
	Jsonb	   *answer;
	JsonbContainer *content;
	JsonbContainer *gw;
	StringInfoData buf;
	int			i;

	*doc = NULL;
	if (r->outcome != LLM_OUTCOME_OK)
	{
		(void) llm_call_result(r, on_error_null, true, isnull);
		return false;
	}
	answer = DatumGetJsonbP(llm_call_result(r, on_error_null, false, isnull));
	content = json_get_array(&answer->root, "content");
	initStringInfo(&buf);
	for (i = 0; i < json_array_size(content); i++)
	{
		JsonbContainer *block = json_value_container(json_array_elem(content, i), false);
		const char *type = json_get_cstring(block, "type");
		const char *t = json_get_cstring(block, "text");

		if (type != NULL && strcmp(type, "text") == 0 && t != NULL)
			appendStringInfoString(&buf, t);
	}
	*said = buf.data;
	gw = json_get_object(&answer->root, "gateway");
	if (!json_get_float8(gw, "latency_ms", latency_ms))
		*latency_ms = 0;
	*doc = json_schema_parse_answer(buf.data, buf.len, violation);
	if (*doc == NULL)
		return false;
	if (json_schema_validate(&DatumGetJsonbP(args[2].value)->root, *doc, violation))
		return true;
	*doc = NULL;
	return false;
}

/* LL015, or NULL with on_error "null" */
static Datum
extract_mismatch(const char *violation, bool retried, bool on_error_null, bool *isnull)
{
	if (on_error_null)
	{
		*isnull = true;
		return (Datum) 0;
	}
	ereport(ERROR,
			(errcode(ERRCODE_LLM_SCHEMA_MISMATCH),
			 errmsg("llm_extract: the answer does not follow the schema: %s", violation),
			 retried ? errdetail("The model was asked twice; this is the second answer's first violation.")
			 : errdetail("There was no time left in the call's timeout_ms to ask again."),
			 errhint("Say more about the expected fields in the prompt, or loosen the schema.")));
	pg_unreachable();
}

/*
 * Give the answer if it follows the schema; else ask once more within the
 * call's deadline (the first answer and the violation as feedback), and
 * give that answer or LL015.
 */
static Datum
extract_result(const NullableDatum *args, const LlmCallResult *r, bool on_error_null,
			   bool *isnull)
{
	Jsonb	   *doc;
	char	   *said = NULL;
	char	   *violation = NULL;
	double		latency_ms;
	LlmPreparedCall call;
	LlmCallResult again;
	int			left_ms;
	StringInfoData hist;

	*isnull = false;
	if (extract_check(args, r, on_error_null, isnull, &doc, &said, &violation, &latency_ms))
		return JsonbPGetDatum(doc);
	if (violation == NULL)
		return (Datum) 0;		/* the call failed: NULL (on_error "null") */

	/* the first call's deadline, counted from its submission */
	extract_prepare(args, &call);
	left_ms = call.hdr.timeout_ms - (int) ceil(latency_ms);
	pfree(call.data.data);
	if (left_ms <= 0)
		return extract_mismatch(violation, false, on_error_null, isnull);

	initStringInfo(&hist);
	appendStringInfoString(&hist, "[{\"role\":\"user\",\"content\":");
	json_append_string(&hist, text_to_cstring(DatumGetTextPP(args[1].value)));
	appendStringInfoString(&hist, "},{\"role\":\"assistant\",\"content\":");
	json_append_string(&hist, said[0] ? said : "(no answer)");
	appendStringInfoString(&hist, "},{\"role\":\"user\",\"content\":");
	json_append_string(&hist, psprintf("Your answer does not follow the JSON schema: %s. "
									   "Answer again with only the JSON.", violation));
	appendStringInfoString(&hist, "}]");
	prepare_call(DatumGetTextPP(args[0].value),
				 jsonb_from_cstring(hist.data),
				 extract_options(args, left_ms), &call);
	channel_call(&call.hdr, call.data.data, call.data.len, call.hdr.timeout_ms, &again);
	pfree(call.data.data);
	if (extract_check(args, &again, on_error_null, isnull, &doc, &said, &violation, &latency_ms))
		return JsonbPGetDatum(doc);
	if (violation == NULL)
		return (Datum) 0;
	return extract_mismatch(violation, true, on_error_null, isnull);
}

/* name: the C symbol, which is also the SQL name */
const LlmCallKind llm_messages_kind = {"llm_messages", llm_messages, messages_prepare, messages_result, 2, true};
static const LlmCallKind llm_complete_kind = {"llm_complete", llm_complete, complete_prepare, complete_result, 2, true};
static const LlmCallKind llm_extract_kind = {"llm_extract", llm_extract, extract_prepare, extract_result, 3, true};

static const LlmCallKind *const call_kinds[] = {&llm_messages_kind, &llm_complete_kind, &llm_extract_kind, &llm_embed_kind,
&llm_chat_kind, &llm_chat_json_kind};

/* The call kind whose C entry has this symbol name; NULL if none. */
const LlmCallKind *
llm_call_kind_named(const char *symbol)
{
	int			i;

	for (i = 0; i < lengthof(call_kinds); i++)
		if (strcmp(call_kinds[i]->name, symbol) == 0)
			return call_kinds[i];
	return NULL;
}

/*
 * One call from SQL, start to end: build it, hand it to the worker, wait,
 * and return what the call gives SQL.
 */
Datum
llm_run_call(const LlmCallKind *kind, FunctionCallInfo fcinfo)
{
	LlmPreparedCall call;
	LlmCallResult result;
	bool		isnull;
	Datum		answer;

	kind->prepare(fcinfo->args, &call);
	channel_call(&call.hdr, call.data.data, call.data.len, call.hdr.timeout_ms, &result);
	pfree(call.data.data);
	answer = kind->result(fcinfo->args, &result, call.on_error_null, &isnull);
	fcinfo->isnull = isnull;
	return answer;
}

/*
 * llm_messages(model text, history jsonb, options jsonb DEFAULT '{}') -> jsonb
 */
Datum
llm_messages(PG_FUNCTION_ARGS)
{
	return llm_run_call(&llm_messages_kind, fcinfo);
}

/*
 * llm_complete(model text, prompt text, options jsonb DEFAULT '{}') -> text
 */
Datum
llm_complete(PG_FUNCTION_ARGS)
{
	return llm_run_call(&llm_complete_kind, fcinfo);
}

/*
 * llm_extract(model text, prompt text, schema jsonb, options jsonb DEFAULT '{}') -> jsonb
 */
Datum
llm_extract(PG_FUNCTION_ARGS)
{
	return llm_run_call(&llm_extract_kind, fcinfo);
}

/*
 * llm.gateway_status(): the worker's pid, the channel's counters, and
 * what the quota checks and the usage rollup have cost the worker per call
 * (columns in LlmTimedWork's order).
 */
Datum
llm_gateway_status(PG_FUNCTION_ARGS)
{
	TupleDesc	tupdesc;
	Datum		values[8 + 2 * LLM_TIMED_NKINDS];
	bool		nulls[8 + 2 * LLM_TIMED_NKINDS] = {0};
	LlmChannel *ch;
	pid_t		pid;
	int			in_use = 0;
	int			i;

	llm_check_preloaded();
	if (get_call_result_type(fcinfo, NULL, &tupdesc) != TYPEFUNC_COMPOSITE)
		elog(ERROR, "return type must be a row type");
	ch = channel_get();

	SpinLockAcquire(&ch->mutex);
	pid = ch->worker_pid;
	SpinLockRelease(&ch->mutex);
	for (i = 0; i < ch->nslots; i++)
		if (pg_atomic_read_u32(&ch->slots[i].state) != LLM_SLOT_FREE)
			in_use++;

	values[0] = Int32GetDatum(pid);
	nulls[0] = (pid == 0);
	values[1] = Int32GetDatum(ch->nslots);
	values[2] = Int32GetDatum(in_use);
	values[3] = Int64GetDatum((int64) pg_atomic_read_u64(&ch->stats.submitted));
	values[4] = Int64GetDatum((int64) pg_atomic_read_u64(&ch->stats.completed));
	values[5] = Int64GetDatum((int64) pg_atomic_read_u64(&ch->stats.abandoned));
	values[6] = Int64GetDatum((int64) pg_atomic_read_u64(&ch->stats.waited_for_slot));
	pid = logflush_pid();
	values[7] = Int32GetDatum(pid);
	nulls[7] = (pid == 0);
	for (i = 0; i < LLM_TIMED_NKINDS; i++)
	{
		uint64		calls;
		uint64		ns;
		int			col = 8 + 2 * i;

		worker_timing_read((LlmTimedWork) i, &calls, &ns);
		values[col] = Int64GetDatum((int64) calls);
		values[col + 1] = Float8GetDatum(calls > 0 ? (double) ns / 1000.0 / calls : 0.0);
		nulls[col + 1] = (calls == 0);
	}
	PG_RETURN_DATUM(HeapTupleGetDatum(heap_form_tuple(tupdesc, values, nulls)));
}

/*
 * Statement trigger on the configuration tables: queue a relcache
 * invalidation of llm.routes.  It is sent when the transaction commits,
 * and the worker's relcache callback then reloads its route cache.
 */
Datum
llm_config_changed(PG_FUNCTION_ARGS)
{
	Oid			nsp;
	Oid			routes;

	if (!CALLED_AS_TRIGGER(fcinfo))
		ereport(ERROR,
				(errcode(ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED),
				 errmsg("llm._config_changed() must be called as a trigger")));
	nsp = get_namespace_oid("llm", false);
	routes = get_relname_relid("routes", nsp);
	if (OidIsValid(routes))
		CacheInvalidateRelcacheByRelid(routes);
	return PointerGetDatum(NULL);
}

/*
 * llm.provider_kinds(): the protocols this build speaks.
 */
Datum
llm_provider_kinds(PG_FUNCTION_ARGS)
{
	char	   *kinds = pstrdup(provider_kinds());
	List	   *names = NIL;
	Datum	   *elems;
	ListCell   *lc;
	int			n = 0;
	char	   *tok;
	char	   *save;

	for (tok = strtok_r(kinds, ", ", &save); tok; tok = strtok_r(NULL, ", ", &save))
		names = lappend(names, tok);
	elems = palloc(sizeof(Datum) * Max(list_length(names), 1));
	foreach(lc, names)
		elems[n++] = CStringGetTextDatum((char *) lfirst(lc));
	PG_RETURN_ARRAYTYPE_P(construct_array(elems, n, TEXTOID, -1, false, TYPALIGN_INT));
}

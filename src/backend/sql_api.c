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

PG_FUNCTION_INFO_V1(llm_messages);
PG_FUNCTION_INFO_V1(llm_complete);
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
		return DatumGetJsonbP(DirectFunctionCall1(jsonb_in, CStringGetDatum("{}")));
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
messages_result(const LlmCallResult *r, bool on_error_null, bool *isnull)
{
	return llm_call_result(r, on_error_null, false, isnull);
}

/* llm_complete(model text, prompt text, options jsonb): one user turn */
static void
complete_prepare(const NullableDatum *args, LlmPreparedCall *call)
{
	StringInfoData hist;

	require_args(args, "prompt", "Filter out NULL rows, or coalesce() the prompt.");
	initStringInfo(&hist);
	appendStringInfoString(&hist, "[{\"role\":\"user\",\"content\":");
	json_append_string(&hist, text_to_cstring(DatumGetTextPP(args[1].value)));
	appendStringInfoString(&hist, "}]");
	prepare_call(DatumGetTextPP(args[0].value),
				 DatumGetJsonbP(DirectFunctionCall1(jsonb_in, CStringGetDatum(hist.data))),
				 options_arg(&args[2]), call);
}

/* the joined text of the answer's text blocks (tool calls and thinking left out) */
static Datum
complete_result(const LlmCallResult *r, bool on_error_null, bool *isnull)
{
	return llm_call_result(r, on_error_null, true, isnull);
}

/* name: the C symbol, which is also the SQL name */
const LlmCallKind llm_messages_kind = {"llm_messages", llm_messages, messages_prepare, messages_result};
static const LlmCallKind llm_complete_kind = {"llm_complete", llm_complete, complete_prepare, complete_result};

static const LlmCallKind *const call_kinds[] = {&llm_messages_kind, &llm_complete_kind, &llm_embed_kind};

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
static Datum
run_call(const LlmCallKind *kind, FunctionCallInfo fcinfo)
{
	LlmPreparedCall call;
	LlmCallResult result;
	bool		isnull;
	Datum		answer;

	kind->prepare(fcinfo->args, &call);
	channel_call(&call.hdr, call.data.data, call.data.len, call.hdr.timeout_ms, &result);
	pfree(call.data.data);
	answer = kind->result(&result, call.on_error_null, &isnull);
	fcinfo->isnull = isnull;
	return answer;
}

/*
 * llm_messages(model text, history jsonb, options jsonb DEFAULT '{}') -> jsonb
 */
Datum
llm_messages(PG_FUNCTION_ARGS)
{
	return run_call(&llm_messages_kind, fcinfo);
}

/*
 * llm_complete(model text, prompt text, options jsonb DEFAULT '{}') -> text
 */
Datum
llm_complete(PG_FUNCTION_ARGS)
{
	return run_call(&llm_complete_kind, fcinfo);
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

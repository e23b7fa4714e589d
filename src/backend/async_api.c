/*-------------------------------------------------------------------------
 *
 * async_api.c
 *	  Asynchronous calls by hand: llm_submit, llm_await, llm_await_any,
 *	  llm_cancel.
 *
 * runs in: backend.
 *
 * llm_submit validates and builds the call exactly as llm_messages does
 * (llm_messages_kind.prepare), hands it to the worker (channel_submit) and returns
 * at once with a *session-local* handle: 1, 2, 3, ... in the order of this
 * session's submissions, mapped here to the channel's handle (slot and
 * generation).  Not the llm.requests id: that id exists only once the
 * worker has committed the call's pending row, and waiting for that
 * commit would make every submit cost a worker turn and a commit, which
 * is what the asynchronous path exists to avoid (docs/design.md §4).
 *
 * Handles belong to the session, not to a statement or transaction: an
 * await that times out, is cancelled or fails on another ERROR leaves
 * the call running and its handle valid.  Only llm_await / llm_await_any
 * (which take the answer), llm_cancel and the session's exit (the
 * channel's exit callback) end a call.  Answers and errors go through
 * llm_call_result() (call_result.c), the same code as llm_messages, with
 * the call's on_error as it was at llm_submit().
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/htup_details.h"
#include "catalog/pg_type.h"
#include "funcapi.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/jsonb.h"
#include "utils/memutils.h"

#include "backend/call_result.h"
#include "backend/sql_api.h"
#include "channel/channel.h"
#include "common/llm_errors.h"

PG_FUNCTION_INFO_V1(llm_submit);
PG_FUNCTION_INFO_V1(llm_await);
PG_FUNCTION_INFO_V1(llm_await_any);
PG_FUNCTION_INFO_V1(llm_cancel);

typedef struct SessionHandle
{
	int64		id;				/* what SQL sees */
	LlmHandle	call;			/* what the channel sees */
	bool		on_error_null;	/* the call's on_error, as at llm_submit() */
} SessionHandle;

/* this session's open handles (unordered), in TopMemoryContext */
static SessionHandle *handles = NULL;
static int	n_handles = 0;
static int	max_handles = 0;
static int64 next_id = 1;

/* Index of handle id in handles[]; 22023 if this session has no such call. */
static int
find_handle(int64 id)
{
	int			i;

	for (i = 0; i < n_handles; i++)
		if (handles[i].id == id && channel_handle_open(handles[i].call))
			return i;
	ereport(ERROR,
			(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
			 errmsg("llm_gateway handle " INT64_FORMAT " is not open in this session", id),
			 errhint("A handle is valid only in the session whose llm_submit() returned it, until llm_await(), llm_await_any() or llm_cancel() takes it.")));
	return -1;					/* keep the compiler quiet */
}

/* Forget handles[i] (the caller then takes or abandons its call). */
static SessionHandle
forget_handle(int i)
{
	SessionHandle h = handles[i];

	handles[i] = handles[--n_handles];
	return h;
}

static int64
handle_arg(FunctionCallInfo fcinfo, int argno)
{
	if (PG_ARGISNULL(argno))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("handle must not be NULL"),
				 errhint("Pass a handle that llm_submit() returned in this session.")));
	return PG_GETARG_INT64(argno);
}

/* errcontext while a handle's answer or error is raised */
static void
handle_context(void *arg)
{
	errcontext("llm_gateway handle " INT64_FORMAT, *(int64 *) arg);
}

/*
 * Take the finished call of a handle and return its answer, or per its
 * on_error an error object (*isnull: SQL NULL never, llm_messages' shape)
 * or its error raised, as llm_messages would.
 */
static Datum
take_answer(SessionHandle h, bool *isnull)
{
	ErrorContextCallback cb;
	LlmCallResult result;
	Datum		answer;

	cb.callback = handle_context;
	cb.arg = &h.id;
	cb.previous = error_context_stack;
	error_context_stack = &cb;
	channel_take(h.call, &result);
	answer = llm_call_result(&result, h.on_error_null, false, isnull);
	error_context_stack = cb.previous;
	return answer;
}

/*
 * llm_submit(model text, history jsonb, options jsonb DEFAULT '{}') -> bigint
 */
Datum
llm_submit(PG_FUNCTION_ARGS)
{
	LlmPreparedCall prepared;
	LlmHandle	call;

	llm_messages_kind.prepare(fcinfo->args, &prepared);

	/* room first: nothing may fail between the submit and the record of it */
	if (n_handles == max_handles)
	{
		int			want = Max(16, max_handles * 2);

		handles = handles == NULL ?
			MemoryContextAlloc(TopMemoryContext, sizeof(SessionHandle) * want) :
			repalloc(handles, sizeof(SessionHandle) * want);
		max_handles = want;
	}
	call = channel_submit(&prepared.hdr, prepared.data.data, prepared.data.len,
						  prepared.hdr.timeout_ms);
	handles[n_handles].id = next_id++;
	handles[n_handles].call = call;
	handles[n_handles].on_error_null = prepared.on_error_null;
	n_handles++;
	pfree(prepared.data.data);
	PG_RETURN_INT64(handles[n_handles - 1].id);
}

/*
 * llm_await(handle bigint, timeout_ms int DEFAULT NULL) -> jsonb
 *
 * NULL timeout: until the call's own deadline.  A timeout raises LL009 and
 * leaves the call running.
 */
Datum
llm_await(PG_FUNCTION_ARGS)
{
	int64		id = handle_arg(fcinfo, 0);
	int			timeout_ms = PG_ARGISNULL(1) ? -1 : PG_GETARG_INT32(1);
	LlmHandle	call;

	if (timeout_ms < 0 && !PG_ARGISNULL(1))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("timeout_ms must not be negative"),
				 errhint("Pass NULL to wait until the call's own deadline.")));
	call = handles[find_handle(id)].call;
	if (channel_wait(&call, 1, timeout_ms) < 0)
		ereport(ERROR,
				(errcode(ERRCODE_LLM_PROVIDER_TIMEOUT),
				 errmsg("llm_gateway handle " INT64_FORMAT " has no answer within %d ms", id, timeout_ms),
				 errdetail("The call is still running; the handle stays valid."),
				 errhint("Call llm_await() again later, or llm_cancel() to abort the call.")));
	{
		bool		isnull;
		Datum		answer = take_answer(forget_handle(find_handle(id)), &isnull);

		if (isnull)
			PG_RETURN_NULL();
		PG_RETURN_DATUM(answer);
	}
}

/*
 * llm_await_any(handles bigint[], OUT handle bigint, OUT answer jsonb)
 *
 * Waits until one of the handles has finished and takes it: its answer, or
 * its error raised (with the handle in the error's context).
 */
Datum
llm_await_any(PG_FUNCTION_ARGS)
{
	ArrayType  *arr;
	Datum	   *elems;
	bool	   *nulls;
	int			n;
	LlmHandle  *calls;
	TupleDesc	tupdesc;
	Datum		values[2];
	bool		isnull[2] = {false, false};
	int			i;
	int			j;

	if (PG_ARGISNULL(0))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("handles must not be NULL"),
				 errhint("Pass an array of handles that llm_submit() returned in this session.")));
	if (get_call_result_type(fcinfo, NULL, &tupdesc) != TYPEFUNC_COMPOSITE)
		elog(ERROR, "return type must be a row type");
	arr = PG_GETARG_ARRAYTYPE_P(0);
	deconstruct_array(arr, INT8OID, 8, FLOAT8PASSBYVAL, TYPALIGN_DOUBLE, &elems, &nulls, &n);
	if (n == 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("handles must not be empty"),
				 errhint("Pass an array of handles that llm_submit() returned in this session.")));
	calls = palloc(sizeof(LlmHandle) * n);
	for (i = 0; i < n; i++)
	{
		if (nulls[i])
			ereport(ERROR,
					(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
					 errmsg("handles must not contain NULL"),
					 errhint("Pass an array of handles that llm_submit() returned in this session.")));
		calls[i] = handles[find_handle(DatumGetInt64(elems[i]))].call;
	}

	j = channel_wait(calls, n, -1);
	values[0] = elems[j];
	values[1] = take_answer(forget_handle(find_handle(DatumGetInt64(elems[j]))), &isnull[1]);
	PG_RETURN_DATUM(HeapTupleGetDatum(heap_form_tuple(tupdesc, values, isnull)));
}

/*
 * llm_cancel(handle bigint) -> bool
 *
 * Aborts the call (the worker stops the transfer; the log row says
 * cancelled) and forgets the handle.  True if the call was still in
 * flight, false if it had already finished (its answer is dropped).
 */
Datum
llm_cancel(PG_FUNCTION_ARGS)
{
	int64		id = handle_arg(fcinfo, 0);

	PG_RETURN_BOOL(channel_abandon(forget_handle(find_handle(id)).call));
}

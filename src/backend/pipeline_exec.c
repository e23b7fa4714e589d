/*-------------------------------------------------------------------------
 *
 * pipeline_exec.c
 *	  Running the LLM Pipeline node: read rows ahead from the child, submit
 *	  their calls without waiting, return each row, in the child's order,
 *	  once its calls are answered.
 *
 * runs in: backends (executor).
 *
 * The node holds a ring of at most llm.statement_concurrency rows read
 * from its child (never more than a constant LIMIT above needs).  Each row
 * keeps a copy of the child's tuple, its calls' handles and their answers
 * (in the row's own memory context, reset when the row has been returned),
 * so memory is bounded by the concurrency, whatever the row count.
 *
 * Invariants:
 * - The calls in flight in this backend's pipelines stay within
 *	 llm.statement_concurrency (pipelined_in_flight), except that a node
 *	 holding no call may always submit one: so a pipeline below another
 *	 (whose rows it waits for) can always make progress.
 * - A node holding calls never waits for a channel slot
 *	 (channel_try_submit): it takes its finished answers meanwhile, which
 *	 frees slots; only a node holding none waits, in channel_submit.
 * - Every call submitted is taken or abandoned exactly once: taken when
 *	 it is ready, abandoned by End, ReScan, or (on an ERROR, a cursor
 *	 closed early, a cancel) the reset callback of the executor's memory,
 *	 which runs however the statement ends.  An abandoned call is aborted
 *	 at the provider and logged cancelled by the worker.
 * - A failure with on_error = raise raises when it is taken (the first
 *	 to finish, not the first in row order), and the callback abandons
 *	 the rest, as a serial statement's error stops its later calls.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "commands/explain.h"
#include "executor/executor.h"
#include "executor/tuptable.h"
#include "miscadmin.h"
#include "nodes/extensible.h"
#include "portability/instr_time.h"
#include "utils/memutils.h"

#include "backend/call_result.h"
#include "backend/pipeline.h"
#include "backend/progress.h"
#include "channel/channel.h"

typedef struct PipelineCall
{
	LlmHandle	handle;
	bool		taken;
	bool		on_error_null;
} PipelineCall;

typedef struct PipelineRow
{
	TupleTableSlot *tuple;		/* the child's row, copied */
	MemoryContext cxt;			/* the answers; reset when the row leaves */
	int			submitted;		/* calls [0, submitted) are submitted */
	int			untaken;		/* of those, not yet taken */
	PipelineCall *calls;		/* [ncalls] */
	Datum	   *answers;		/* [ncalls] */
	bool	   *answer_nulls;	/* [ncalls] */
} PipelineRow;

typedef struct PipelineCallSpec
{
	const LlmCallKind *kind;
	int			nargs;
	AttrNumber *arg_cols;		/* the arguments' columns of the child (1-based) ... */
	NullableDatum *consts;		/* ... or, where that is 0, a constant */
} PipelineCallSpec;

typedef struct PipelineState
{
	CustomScanState css;

	/* from the plan */
	int			nchild;			/* the child's columns */
	int			ncalls;			/* calls per row */
	PipelineCallSpec *specs;	/* [ncalls] */
	int64		bound;			/* rows the parent needs; -1: unknown */
	int			concurrency;

	/* the ring of rows read ahead */
	PipelineRow *ring;
	int			capacity;
	int			head;
	int			count;
	bool		head_returned;	/* retire the head on the next call */
	int64		rows_read;
	bool		child_done;
	int			in_flight;		/* this node's calls not yet taken */

	LlmHandle  *wait_handles;	/* the open calls (collect_open_calls): [capacity * ncalls] */
	PipelineCall **wait_calls;
	PipelineRow **wait_rows;
	MemoryContext prepare_cxt;	/* one call's building, reset after each */
	MemoryContextCallback on_reset;
	bool		closed;			/* End ran: nothing left to abandon */

	/* for EXPLAIN ANALYZE */
	int64		calls_submitted;
	int64		calls_failed;
	int64		input_tokens;
	int64		output_tokens;
	double		wait_ms;
} PipelineState;

/* calls in flight in all of this backend's pipeline nodes */
static int	pipelined_in_flight = 0;

static Node *pipeline_create_state(CustomScan *cscan);
static void pipeline_begin(CustomScanState *node, EState *estate, int eflags);
static TupleTableSlot *pipeline_exec(CustomScanState *node);
static void pipeline_end(CustomScanState *node);
static void pipeline_rescan(CustomScanState *node);
static void pipeline_explain(CustomScanState *node, List *ancestors, ExplainState *es);
static void call_args(PipelineCallSpec *spec, PipelineRow *row, NullableDatum *args);

const CustomScanMethods llm_pipeline_scan_methods = {
	LLM_PIPELINE_NAME,
	pipeline_create_state
};

static const CustomExecMethods pipeline_exec_methods = {
	.CustomName = LLM_PIPELINE_NAME,
	.BeginCustomScan = pipeline_begin,
	.ExecCustomScan = pipeline_exec,
	.EndCustomScan = pipeline_end,
	.ReScanCustomScan = pipeline_rescan,
	.ExplainCustomScan = pipeline_explain
};

static Node *
pipeline_create_state(CustomScan *cscan)
{
	PipelineState *ps = palloc0(sizeof(PipelineState));

	NodeSetTag(ps, T_CustomScanState);
	ps->css.methods = &pipeline_exec_methods;
	return (Node *) ps;
}

/*
 * Collect the calls submitted and not yet taken into the wait_* arrays;
 * returns how many.
 */
static int
collect_open_calls(PipelineState *ps)
{
	int			n = 0;
	int			i;
	int			j;

	for (i = 0; i < ps->count; i++)
	{
		PipelineRow *row = &ps->ring[(ps->head + i) % ps->capacity];

		for (j = 0; j < row->submitted; j++)
			if (!row->calls[j].taken)
			{
				ps->wait_handles[n] = row->calls[j].handle;
				ps->wait_calls[n] = &row->calls[j];
				ps->wait_rows[n] = row;
				n++;
			}
	}
	return n;
}

/* The call is no longer this node's to take (taken, or about to be abandoned). */
static void
close_call(PipelineState *ps, PipelineRow *row, PipelineCall *call)
{
	call->taken = true;
	row->untaken--;
	ps->in_flight--;
	pipelined_in_flight--;
}

/*
 * Abandon every call still open: the worker aborts them and logs them
 * cancelled.  tell: let their kinds forget them (not while the executor's
 * memory is being reset: the rows may be gone, and the transaction's end
 * clears what the kinds keep).
 */
static void
abandon_all(PipelineState *ps, bool tell)
{
	int			n = collect_open_calls(ps);
	int			i;

	for (i = 0; i < n; i++)
	{
		PipelineRow *row = ps->wait_rows[i];
		PipelineCallSpec *spec = &ps->specs[ps->wait_calls[i] - row->calls];

		close_call(ps, row, ps->wait_calls[i]);
		(void) channel_abandon(ps->wait_handles[i]);
		if (tell && spec->kind->abandoned != NULL)
		{
			NullableDatum args[FUNC_MAX_ARGS] = {{0}};

			call_args(spec, row, args);
			spec->kind->abandoned(args);
		}
	}
}

/* The executor's memory is going away (statement end, ERROR, cursor closed). */
static void
pipeline_memory_reset(void *arg)
{
	PipelineState *ps = arg;

	if (!ps->closed)
		abandon_all(ps, false);
	ps->closed = true;
}

static void
pipeline_begin(CustomScanState *node, EState *estate, int eflags)
{
	PipelineState *ps = (PipelineState *) node;
	CustomScan *cscan = (CustomScan *) node->ss.ps.plan;
	Plan	   *child = outerPlan(cscan);
	TupleDesc	child_desc;
	ListCell   *lc;
	int			i;

	outerPlanState(ps) = ExecInitNode(child, estate, eflags);
	ps->nchild = list_length(child->targetlist);
	ps->ncalls = list_length(cscan->custom_scan_tlist) - ps->nchild;
	ps->bound = DatumGetInt64(((Const *) linitial(cscan->custom_private))->constvalue);
	ps->concurrency = llm_statement_concurrency;
	ps->specs = palloc0(sizeof(PipelineCallSpec) * ps->ncalls);
	i = 0;
	for_each_from(lc, cscan->custom_scan_tlist, ps->nchild)
	{
		FuncExpr   *f = castNode(FuncExpr, ((TargetEntry *) lfirst(lc))->expr);
		PipelineCallSpec *spec = &ps->specs[i++];
		ListCell   *lc2;
		int			k = 0;

		spec->kind = pipeline_call_kind(f->funcid);
		if (spec->kind == NULL)
			elog(ERROR, "llm_gateway: function %u in an LLM Pipeline no longer calls a provider",
				 f->funcid);
		spec->nargs = list_length(f->args);
		spec->arg_cols = palloc0(sizeof(AttrNumber) * spec->nargs);
		spec->consts = palloc0(sizeof(NullableDatum) * spec->nargs);
		foreach(lc2, f->args)
		{
			if (IsA(lfirst(lc2), Const))
			{
				spec->consts[k].value = ((Const *) lfirst(lc2))->constvalue;
				spec->consts[k].isnull = ((Const *) lfirst(lc2))->constisnull;
			}
			else
				spec->arg_cols[k] = castNode(Var, lfirst(lc2))->varattno;
			k++;
		}
	}
	if (eflags & EXEC_FLAG_EXPLAIN_ONLY)
		return;

	ps->capacity = ps->bound >= 0 ? (int) Min(ps->concurrency, Max(ps->bound, 1)) : ps->concurrency;
	ps->ring = palloc0(sizeof(PipelineRow) * ps->capacity);
	child_desc = ExecGetResultType(outerPlanState(ps));
	for (i = 0; i < ps->capacity; i++)
	{
		PipelineRow *row = &ps->ring[i];

		row->tuple = ExecAllocTableSlot(&estate->es_tupleTable, child_desc, &TTSOpsMinimalTuple);
		row->cxt = AllocSetContextCreate(estate->es_query_cxt, "llm_gateway pipeline row",
										 ALLOCSET_SMALL_SIZES);
		row->calls = palloc0(sizeof(PipelineCall) * ps->ncalls);
		row->answers = palloc0(sizeof(Datum) * ps->ncalls);
		row->answer_nulls = palloc0(sizeof(bool) * ps->ncalls);
	}
	i = ps->capacity * ps->ncalls;
	ps->wait_handles = palloc(sizeof(LlmHandle) * i);
	ps->wait_calls = palloc(sizeof(PipelineCall *) * i);
	ps->wait_rows = palloc(sizeof(PipelineRow *) * i);
	ps->prepare_cxt = AllocSetContextCreate(estate->es_query_cxt, "llm_gateway pipeline call",
											ALLOCSET_DEFAULT_SIZES);
	ps->on_reset.func = pipeline_memory_reset;
	ps->on_reset.arg = ps;
	MemoryContextRegisterResetCallback(estate->es_query_cxt, &ps->on_reset);

	/* the outermost pipeline of the statement begins last: its estimate stays */
	progress_pipeline_begin(ps->bound >= 0 ? Min(child->plan_rows, (double) ps->bound) :
							child->plan_rows);

	/* a Sort below still sorts only the top rows the LIMIT above needs */
	if (ps->bound >= 0)
		ExecSetTupleBound(ps->bound, outerPlanState(ps));
}

/* The SQL arguments of one of the row's calls (the row is held until its calls are taken). */
static void
call_args(PipelineCallSpec *spec, PipelineRow *row, NullableDatum *args)
{
	int			k;

	for (k = 0; k < spec->nargs; k++)
		if (spec->arg_cols[k] == 0)
			args[k] = spec->consts[k];
		else
			args[k].value = slot_getattr(row->tuple, spec->arg_cols[k], &args[k].isnull);
}

/*
 * Submit the row's next call; false if it must wait (no slot free now, or
 * the backend's pipelines are at llm.statement_concurrency) while this
 * node has calls whose answers it can take meanwhile.
 */
static bool
submit_next(PipelineState *ps, PipelineRow *row)
{
	PipelineCallSpec *spec = &ps->specs[row->submitted];
	PipelineCall *call = &row->calls[row->submitted];
	bool		may_wait = (ps->in_flight == 0);
	NullableDatum args[FUNC_MAX_ARGS] = {{0}};
	LlmPreparedCall prepared;
	MemoryContext old;
	bool		ok = true;

	if (!may_wait && pipelined_in_flight >= ps->concurrency)
		return false;

	old = MemoryContextSwitchTo(ps->prepare_cxt);
	call_args(spec, row, args);
	/* an earlier row's call on the same conversation goes first */
	if (!may_wait && spec->kind->busy != NULL && spec->kind->busy(args))
	{
		MemoryContextSwitchTo(old);
		MemoryContextReset(ps->prepare_cxt);
		return false;
	}
	spec->kind->prepare(args, &prepared);
	if (may_wait)
		call->handle = channel_submit(&prepared.hdr, prepared.data.data, prepared.data.len,
									  prepared.hdr.timeout_ms);
	else
		ok = channel_try_submit(&prepared.hdr, prepared.data.data, prepared.data.len,
								prepared.hdr.timeout_ms, &call->handle);
	/* not sent: it is prepared again when it goes, so its kind forgets this one */
	if (!ok && spec->kind->abandoned != NULL)
		spec->kind->abandoned(args);
	MemoryContextSwitchTo(old);
	MemoryContextReset(ps->prepare_cxt);
	if (!ok)
		return false;

	call->taken = false;
	call->on_error_null = prepared.on_error_null;
	row->submitted++;
	row->untaken++;
	ps->in_flight++;
	pipelined_in_flight++;
	ps->calls_submitted++;
	return true;
}

/*
 * Submit what the rows read so far still owe, then read rows ahead while
 * there is room, submitting theirs.  Stops at the first call that must
 * wait, so calls go out in row order.
 */
static void
fill(PipelineState *ps)
{
	int			i;

	for (i = 0; i < ps->count; i++)
	{
		PipelineRow *row = &ps->ring[(ps->head + i) % ps->capacity];

		while (row->submitted < ps->ncalls)
			if (!submit_next(ps, row))
				return;
	}
	while (ps->count < ps->capacity && !ps->child_done &&
		   (ps->bound < 0 || ps->rows_read < ps->bound))
	{
		TupleTableSlot *slot = ExecProcNode(outerPlanState(ps));
		PipelineRow *row;

		if (TupIsNull(slot))
		{
			ps->child_done = true;
			break;
		}
		row = &ps->ring[(ps->head + ps->count) % ps->capacity];
		ExecCopySlot(row->tuple, slot);
		row->submitted = 0;
		row->untaken = 0;
		ps->count++;
		ps->rows_read++;
		while (row->submitted < ps->ncalls)
			if (!submit_next(ps, row))
				return;
	}
}

/* Take a finished call: its answer into the row (or its error raised). */
static void
take(PipelineState *ps, PipelineRow *row, PipelineCall *call)
{
	int			j = call - row->calls;
	LlmCallResult result;
	NullableDatum args[FUNC_MAX_ARGS] = {{0}};
	MemoryContext old;

	/* closed from here on, whatever channel_take does */
	close_call(ps, row, call);

	old = MemoryContextSwitchTo(row->cxt);
	channel_take(call->handle, &result);
	if (result.outcome == LLM_OUTCOME_ERROR)
		ps->calls_failed++;
	ps->input_tokens += result.usage.input_tokens;
	ps->output_tokens += result.usage.output_tokens;
	call_args(&ps->specs[j], row, args);
	row->answers[j] = ps->specs[j].kind->result(args, &result, call->on_error_null,
												&row->answer_nulls[j]);
	MemoryContextSwitchTo(old);
}

/* Wait until at least one call of this node can be taken; take all that can. */
static void
wait_and_take(PipelineState *ps)
{
	instr_time	start;
	instr_time	end;
	int			n = collect_open_calls(ps);
	int			i;
	int			ready;

	Assert(n > 0);

	INSTR_TIME_SET_CURRENT(start);
	ready = channel_wait(ps->wait_handles, n, -1);
	INSTR_TIME_SET_CURRENT(end);
	INSTR_TIME_SUBTRACT(end, start);
	ps->wait_ms += INSTR_TIME_GET_MILLISEC(end);

	take(ps, ps->wait_rows[ready], ps->wait_calls[ready]);
	for (i = 0; i < n; i++)
		if (i != ready && channel_poll(ps->wait_handles[i]))
			take(ps, ps->wait_rows[i], ps->wait_calls[i]);
}

/* The head row has been returned and its parent is done with it. */
static void
retire_head(PipelineState *ps)
{
	PipelineRow *row = &ps->ring[ps->head];

	ExecClearTuple(row->tuple);
	MemoryContextReset(row->cxt);
	ps->head = (ps->head + 1) % ps->capacity;
	ps->count--;
	ps->head_returned = false;
}

static TupleTableSlot *
pipeline_exec(CustomScanState *node)
{
	PipelineState *ps = (PipelineState *) node;
	ExprContext *econtext = node->ss.ps.ps_ExprContext;
	TupleTableSlot *scan = node->ss.ss_ScanTupleSlot;
	PipelineRow *row;
	int			j;

	ResetExprContext(econtext);
	if (ps->head_returned)
		retire_head(ps);
	for (;;)
	{
		fill(ps);
		if (ps->count == 0)
			return ExecClearTuple(node->ss.ps.ps_ResultTupleSlot);
		row = &ps->ring[ps->head];
		if (row->submitted == ps->ncalls && row->untaken == 0)
			break;
		wait_and_take(ps);
	}

	/* the scan tuple: the child's columns, then the answers */
	ExecClearTuple(scan);
	slot_getallattrs(row->tuple);
	memcpy(scan->tts_values, row->tuple->tts_values, sizeof(Datum) * ps->nchild);
	memcpy(scan->tts_isnull, row->tuple->tts_isnull, sizeof(bool) * ps->nchild);
	for (j = 0; j < ps->ncalls; j++)
	{
		scan->tts_values[ps->nchild + j] = row->answers[j];
		scan->tts_isnull[ps->nchild + j] = row->answer_nulls[j];
	}
	ExecStoreVirtualTuple(scan);
	ps->head_returned = true;

	if (node->ss.ps.ps_ProjInfo == NULL)
		return scan;
	econtext->ecxt_scantuple = scan;
	return ExecProject(node->ss.ps.ps_ProjInfo);
}

static void
pipeline_end(CustomScanState *node)
{
	PipelineState *ps = (PipelineState *) node;

	if (!ps->closed && ps->ring != NULL)
		abandon_all(ps, true);
	ps->closed = true;
	ExecEndNode(outerPlanState(node));
}

static void
pipeline_rescan(CustomScanState *node)
{
	PipelineState *ps = (PipelineState *) node;

	abandon_all(ps, true);
	while (ps->count > 0)
		retire_head(ps);
	ps->head = 0;
	ps->rows_read = 0;
	ps->child_done = false;
	if (outerPlanState(node)->chgParam == NULL)
		ExecReScan(outerPlanState(node));
}

static void
pipeline_explain(CustomScanState *node, List *ancestors, ExplainState *es)
{
	PipelineState *ps = (PipelineState *) node;

	ExplainPropertyInteger("Concurrency", NULL, ps->concurrency, es);
	if (ps->bound >= 0)
		ExplainPropertyInteger("Rows Needed", NULL, ps->bound, es);
	if (!es->analyze)
		return;
	ExplainPropertyInteger("Calls", NULL, ps->calls_submitted, es);
	ExplainPropertyInteger("Failed Calls", NULL, ps->calls_failed, es);
	ExplainPropertyInteger("Input Tokens", NULL, ps->input_tokens, es);
	ExplainPropertyInteger("Output Tokens", NULL, ps->output_tokens, es);
	if (es->timing)
		ExplainPropertyFloat("Wait Time", "ms", ps->wait_ms, 3, es);
}

/*-------------------------------------------------------------------------
 *
 * estimate_exact.c
 *	  llm.estimate(..., exact => true): count the rows of a statement's call
 *	  sites by running its plan once without calls.
 *
 * runs in: backends, as the caller.  Never calls a provider and never
 * writes: every volatile function (the calls among them) reads as NULL,
 * a data-modifying statement runs only its source rows' plan, and the run
 * is read-only, in a subtransaction that is always rolled back.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/xact.h"
#include "catalog/pg_proc.h"
#include "executor/executor.h"
#include "executor/instrument.h"
#include "miscadmin.h"
#include "nodes/makefuncs.h"
#include "nodes/nodeFuncs.h"
#include "tcop/dest.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/resowner.h"
#include "utils/snapmgr.h"

#include "backend/estimate.h"
#include "common/llm_errors.h"
#include "backend/sql_api.h"

static Node *
null_volatile_mutator(Node *node, void *ctx)
{
	if (node == NULL)
		return NULL;
	if (IsA(node, FuncExpr))
	{
		FuncExpr   *f = (FuncExpr *) node;

		if (!f->funcretset &&
			(pipeline_call_kind(f->funcid) != NULL ||
			 func_volatile(f->funcid) == PROVOLATILE_VOLATILE))
			return (Node *) makeNullConst(f->funcresulttype, -1, f->funccollid);
	}
	return expression_tree_mutator(node, null_volatile_mutator, ctx);
}

#define NULLIFY(field) ((field) = (void *) null_volatile_mutator((Node *) (field), NULL))

static void
nullify_walker(Plan **child, Plan *parent, bool inner_of_merge, void *arg)
{
	Plan	   *plan;

	/* a pipeline's child returns the same columns, a call's as NULL */
	while (estimate_is_pipeline(*child))
		*child = (*child)->lefttree;
	plan = *child;
	NULLIFY(plan->targetlist);
	NULLIFY(plan->qual);
	switch (nodeTag(plan))
	{
		case T_NestLoop:
		case T_MergeJoin:
		case T_HashJoin:
			NULLIFY(((Join *) plan)->joinqual);
			break;
		case T_Result:
			NULLIFY(((Result *) plan)->resconstantqual);
			break;
		case T_ValuesScan:
			NULLIFY(((ValuesScan *) plan)->values_lists);
			break;
		case T_FunctionScan:
			NULLIFY(((FunctionScan *) plan)->functions);
			break;
		case T_ModifyTable:
			elog(ERROR, "unexpected ModifyTable below the top of a plan");
			break;
		default:
			break;
	}
	pipeline_for_each_child(plan, nullify_walker, arg);
}

typedef struct Counts
{
	int			n;
	double	   *rows;			/* by plan_node_id: rows returned */
	double	   *read;			/* ... and rows read (returned + filtered) */
	double	   *loops;			/* ... and runs */
} Counts;

static bool
count_walker(PlanState *ps, Counts *c)
{
	int			id = ps->plan->plan_node_id;

	if (ps->instrument != NULL && id >= 0 && id < c->n)
	{
		InstrEndLoop(ps->instrument);
		c->rows[id] += ps->instrument->ntuples;
		c->read[id] += ps->instrument->ntuples + ps->instrument->nfiltered1 +
			ps->instrument->nfiltered2;
		c->loops[id] += ps->instrument->nloops;
	}
	return planstate_tree_walker(ps, count_walker, c);
}

static void
max_id_walker(Plan **child, Plan *parent, bool inner_of_merge, void *arg)
{
	int		   *max = arg;

	*max = Max(*max, (*child)->plan_node_id);
	pipeline_for_each_child(*child, max_id_walker, arg);
}

/*
 * Count the rows of the statement's call sites by running it without
 * calls: a copy of the plan where every volatile function reads as NULL,
 * an UPDATE/INSERT/DELETE/MERGE reduced to its source rows, run read-only
 * in a subtransaction that is rolled back, as the caller.
 */
void
estimate_count_exactly(PlannedStmt *orig, const char *query, List *sites)
{
	PlannedStmt *stmt = copyObject(orig);
	Counts		c;
	int			max_id = 0;
	ListCell   *lc;
	QueryDesc  *qd;
	bool		save_read_only = XactReadOnly;
	MemoryContext cxt = CurrentMemoryContext;
	ResourceOwner owner = CurrentResourceOwner;

	if (stmt->hasModifyingCTE)
		ereport(ERROR,
				(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
				 errmsg("llm.estimate cannot count rows exactly in a statement with a data-modifying WITH"),
				 errhint("Call llm.estimate with exact => false for the planner's estimate.")));
	if (IsA(stmt->planTree, ModifyTable))
	{
		/* only the source rows: no row is written, locked or returned */
		stmt->planTree = stmt->planTree->lefttree;
		stmt->commandType = CMD_SELECT;
		stmt->resultRelations = NIL;
		stmt->rowMarks = NIL;
		stmt->hasReturning = false;
	}
	nullify_walker(&stmt->planTree, NULL, false, NULL);
	foreach(lc, stmt->subplans)
		if (lfirst(lc) != NULL)
			nullify_walker((Plan **) &lfirst(lc), NULL, false, NULL);

	max_id_walker(&orig->planTree, NULL, false, &max_id);
	foreach(lc, orig->subplans)
		if (lfirst(lc) != NULL)
			max_id_walker((Plan **) &lfirst(lc), NULL, false, &max_id);
	c.n = max_id + 1;
	c.rows = palloc0(sizeof(double) * c.n);
	c.read = palloc0(sizeof(double) * c.n);
	c.loops = palloc0(sizeof(double) * c.n);

	BeginInternalSubTransaction(NULL);
	MemoryContextSwitchTo(cxt);
	XactReadOnly = true;
	llm_calls_forbidden = true;
	PG_TRY();
	{
		/* permissions were checked on the original; reading needs no more */
		foreach(lc, stmt->rtable)
			((RangeTblEntry *) lfirst(lc))->requiredPerms &= ACL_SELECT;
		PushActiveSnapshot(GetTransactionSnapshot());
		UpdateActiveSnapshotCommandId();
		qd = CreateQueryDesc(stmt, query, GetActiveSnapshot(), InvalidSnapshot,
							 None_Receiver, NULL, NULL, INSTRUMENT_ROWS);
		ExecutorStart(qd, 0);
		ExecutorRun(qd, ForwardScanDirection, 0, true);
		ExecutorFinish(qd);
		(void) count_walker(qd->planstate, &c);
		ExecutorEnd(qd);
		FreeQueryDesc(qd);
		PopActiveSnapshot();
	}
	PG_CATCH();
	{
		ErrorData  *edata;

		/* leave the caller's transaction as it was, then report */
		XactReadOnly = save_read_only;
		llm_calls_forbidden = false;
		edata = llm_subxact_caught(cxt, owner);
		ReThrowError(edata);
	}
	PG_END_TRY();
	XactReadOnly = save_read_only;
	llm_calls_forbidden = false;
	RollbackAndReleaseCurrentSubTransaction();
	MemoryContextSwitchTo(cxt);
	CurrentResourceOwner = owner;

	foreach(lc, sites)
	{
		CallSite   *s = lfirst(lc);

		if (s->stmt == orig && s->count_node_id >= 0 && s->count_node_id < c.n)
			s->calls = s->per_loop ? c.loops[s->count_node_id] :
				s->in_qual ? c.read[s->count_node_id] : c.rows[s->count_node_id];
	}
}

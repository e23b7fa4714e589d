/*-------------------------------------------------------------------------
 *
 * pipeline_plan.c
 *	  The planner hook that puts an LLM Pipeline above each plan node whose
 *	  target list calls a provider in a place where running the calls of
 *	  many rows at once cannot change what the statement means.
 *
 * runs in: backends (planning).
 *
 * The hook runs after standard_planner, on the finished plan, so it sees
 * every node with its final target list and changes nothing else of the
 * plan.  A node is wrapped only when all of these hold (anything else keeps
 * the serial plan: correct, only slower):
 *
 * - it projects its own rows (a scan, a join, a Result over a child, an
 *	 aggregate, a window node), and is not the inner side of a merge join
 *	 (which would ask the pipeline to mark and restore positions);
 * - each call sits where it is always evaluated: at the top of a column or
 *	 under functions, operators and casts, never under CASE, COALESCE,
 *	 AND/OR or an aggregate, which decide whether it happens;
 * - the call's arguments and everything else the target list and the
 *	 node's conditions compute are free of volatile functions (so neither
 *	 the order of evaluation nor another call's answer can change them),
 *	 and the parts of a column around a call are free of subqueries;
 * - the statement is not a scrollable cursor (the pipeline reads forward
 *	 only) and llm.statement_concurrency is above 1 when it is planned.
 *
 * pipeline.h describes the node built.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/htup_details.h"
#include "catalog/pg_language.h"
#include "catalog/pg_proc.h"
#include "catalog/pg_type.h"
#include "nodes/makefuncs.h"
#include "nodes/nodeFuncs.h"
#include "nodes/plannodes.h"
#include "optimizer/clauses.h"
#include "optimizer/optimizer.h"
#include "optimizer/planner.h"
#include "parser/parsetree.h"
#include "utils/builtins.h"
#include "utils/guc.h"
#include "utils/hsearch.h"
#include "utils/inval.h"
#include "utils/memutils.h"
#include "utils/syscache.h"

#include "backend/pipeline.h"

int			llm_statement_concurrency = 64;

static planner_hook_type prev_planner_hook = NULL;

/* function oid -> the call kind it makes (NULL: none), per backend */
typedef struct KindEntry
{
	Oid			funcid;
	const LlmCallKind *kind;
} KindEntry;

static HTAB *kind_cache = NULL;
static bool kind_cache_valid = false;

static void
kind_cache_invalidate(Datum arg, int cacheid, uint32 hashvalue)
{
	kind_cache_valid = false;
}

/*
 * What a function calls, if it is one of ours: a C function whose symbol
 * is one of the call kinds' entries, resolved to the very same address
 * (so neither a function of another library with the same symbol name nor
 * a SQL wrapper is mistaken for ours).
 */
static const LlmCallKind *
lookup_kind(Oid funcid)
{
	HeapTuple	tup;
	Form_pg_proc proc;
	const LlmCallKind *kind;
	Datum		d;
	bool		isnull;
	char	   *prosrc;
	char	   *probin;
	void	   *fn;

	tup = SearchSysCache1(PROCOID, ObjectIdGetDatum(funcid));
	if (!HeapTupleIsValid(tup))
		return NULL;
	proc = (Form_pg_proc) GETSTRUCT(tup);
	if (proc->prolang != ClanguageId || proc->proretset)
	{
		ReleaseSysCache(tup);
		return NULL;
	}
	d = SysCacheGetAttr(PROCOID, tup, Anum_pg_proc_prosrc, &isnull);
	prosrc = isnull ? NULL : TextDatumGetCString(d);
	d = SysCacheGetAttr(PROCOID, tup, Anum_pg_proc_probin, &isnull);
	probin = isnull ? NULL : TextDatumGetCString(d);
	ReleaseSysCache(tup);
	if (prosrc == NULL || probin == NULL || (kind = llm_call_kind_named(prosrc)) == NULL)
		return NULL;
	fn = load_external_function(probin, prosrc, false, NULL);
	return fn == (void *) kind->fn ? kind : NULL;
}

const LlmCallKind *
pipeline_call_kind(Oid funcid)
{
	KindEntry  *e;
	bool		found;

	if (funcid < FirstNormalObjectId)
		return NULL;			/* built in */
	if (!kind_cache_valid && kind_cache != NULL)
	{
		hash_destroy(kind_cache);
		kind_cache = NULL;
	}
	if (kind_cache == NULL)
	{
		HASHCTL		ctl;

		ctl.keysize = sizeof(Oid);
		ctl.entrysize = sizeof(KindEntry);
		ctl.hcxt = CacheMemoryContext;
		kind_cache = hash_create("llm_gateway call kinds", 16, &ctl,
								 HASH_ELEM | HASH_BLOBS | HASH_CONTEXT);
		kind_cache_valid = true;
	}
	e = hash_search(kind_cache, &funcid, HASH_FIND, NULL);
	if (e == NULL)
	{
		const LlmCallKind *kind = lookup_kind(funcid);

		e = hash_search(kind_cache, &funcid, HASH_ENTER, &found);
		e->kind = kind;
	}
	return e->kind;
}

/* ---- what a target list calls ---- */

/* Does evaluating node always evaluate all of its arguments? */
static bool
evaluates_all_arguments(Node *node)
{
	switch (nodeTag(node))
	{
		case T_FuncExpr:
			return !((FuncExpr *) node)->funcretset;
		case T_OpExpr:
			return !((OpExpr *) node)->opretset;
		case T_RelabelType:
		case T_CoerceViaIO:
		case T_CoerceToDomain:
		case T_CollateExpr:
		case T_ArrayExpr:
		case T_RowExpr:
		case T_NullTest:
		case T_BooleanTest:
			return true;
		default:
			return false;
	}
}

typedef struct CallSearch
{
	List	   *calls;			/* FuncExprs that can be pipelined */
	bool		always;			/* the node visited is always evaluated */
	bool		unsafe;			/* a call that cannot be */
} CallSearch;

static bool
find_calls_walker(Node *node, CallSearch *cs)
{
	bool		always = cs->always;
	bool		result;

	if (node == NULL)
		return false;
	if (IsA(node, FuncExpr) && pipeline_call_kind(((FuncExpr *) node)->funcid) != NULL)
	{
		FuncExpr   *f = (FuncExpr *) node;

		if (!always || contain_volatile_functions((Node *) f->args))
			cs->unsafe = true;
		else
			cs->calls = lappend(cs->calls, f);
		return false;
	}
	if (!evaluates_all_arguments(node))
		cs->always = false;
	result = expression_tree_walker(node, find_calls_walker, cs);
	cs->always = always;
	return result;
}

/* Replace calls (by identity) with Vars or NULLs, and leaves with Vars. */
typedef struct Replace
{
	List	   *calls;			/* FuncExprs to replace */
	int			first_call_col; /* 0: by NULL constants; else call i -> this + i */
	List	   *leaves;			/* expressions to replace by equality ... */
	List	   *leaf_cols;		/* ... with Var(INDEX_VAR, this column) */
} Replace;

static Node *
replace_mutator(Node *node, Replace *r)
{
	ListCell   *lc;
	int			i = 0;

	if (node == NULL)
		return NULL;
	foreach(lc, r->calls)
	{
		FuncExpr   *f = lfirst(lc);

		if ((Node *) f == node)
			return r->first_call_col == 0 ?
				(Node *) makeNullConst(f->funcresulttype, -1, f->funccollid) :
				(Node *) makeVar(INDEX_VAR, r->first_call_col + i, f->funcresulttype, -1,
								 f->funccollid, 0);
		i++;
	}
	i = 0;
	foreach(lc, r->leaves)
	{
		if (equal(node, lfirst(lc)))
		{
			Node	   *leaf = lfirst(lc);

			return (Node *) makeVar(INDEX_VAR, list_nth_int(r->leaf_cols, i), exprType(leaf),
									exprTypmod(leaf), exprCollation(leaf), 0);
		}
		i++;
	}
	return expression_tree_mutator(node, replace_mutator, r);
}

static Node *
without_calls(Node *expr, List *calls)
{
	Replace		r = {calls, 0, NIL, NIL};

	return replace_mutator(expr, &r);
}

/* ---- building the node ---- */

static bool
projects_own_rows(Plan *plan)
{
	switch (nodeTag(plan))
	{
		case T_SeqScan:
		case T_SampleScan:
		case T_IndexScan:
		case T_IndexOnlyScan:
		case T_BitmapHeapScan:
		case T_TidScan:
		case T_TidRangeScan:
		case T_SubqueryScan:
		case T_FunctionScan:
		case T_TableFuncScan:
		case T_ValuesScan:
		case T_CteScan:
		case T_NamedTuplestoreScan:
		case T_ForeignScan:
		case T_NestLoop:
		case T_MergeJoin:
		case T_HashJoin:
		case T_Agg:
		case T_Group:
		case T_WindowAgg:
			return true;
		case T_Result:
			return plan->lefttree != NULL;	/* one row alone gains nothing */
		default:
			return false;
	}
}

static bool
conditions_volatile(Plan *plan)
{
	if (contain_volatile_functions((Node *) plan->qual))
		return true;
	switch (nodeTag(plan))
	{
		case T_NestLoop:
		case T_MergeJoin:
		case T_HashJoin:
			return contain_volatile_functions((Node *) ((Join *) plan)->joinqual);
		case T_Result:
			return contain_volatile_functions(((Result *) plan)->resconstantqual);
		default:
			return false;
	}
}

static TargetEntry *
child_column(List **tlist, Expr *expr)
{
	TargetEntry *te = makeTargetEntry(expr, list_length(*tlist) + 1, NULL, true);

	*tlist = lappend(*tlist, te);
	return te;
}

/*
 * The pipeline above plan, or NULL if plan's target list has no call it
 * may run at once.  bound: the rows the parent needs, -1 if unknown.
 */
static CustomScan *
build_pipeline(Plan *plan, int64 bound, int plan_node_id)
{
	List	   *calls = NIL;	/* all pipelined calls, in column order */
	List	   *call_entry = NIL;	/* their target entries' resnos */
	List	   *child_tl = NIL;
	List	   *scan_tl = NIL;
	List	   *top_tl = NIL;
	Replace		r = {NIL, 0, NIL, NIL};
	List	   *arg_cols = NIL; /* per call: IntList of argument columns */
	ListCell   *lc;
	CustomScan *cs;
	int			nchild;
	int			i;

	if (!projects_own_rows(plan) || plan->targetlist == NIL)
		return NULL;

	/* find the calls (most plans have none: that is all they cost) */
	foreach(lc, plan->targetlist)
	{
		TargetEntry *te = lfirst(lc);
		CallSearch	search = {NIL, true, false};

		(void) find_calls_walker((Node *) te->expr, &search);
		if (search.unsafe)
			return NULL;
		calls = list_concat(calls, search.calls);
		for (i = 0; i < list_length(search.calls); i++)
			call_entry = lappend_int(call_entry, te->resno);
	}
	if (calls == NIL || conditions_volatile(plan))
		return NULL;

	/* every column must be safe around them */
	foreach(lc, plan->targetlist)
	{
		TargetEntry *te = lfirst(lc);
		Node	   *rest = without_calls((Node *) te->expr, calls);

		if (contain_volatile_functions(rest) ||
			(list_member_int(call_entry, te->resno) && contain_subplans(rest)))
			return NULL;
	}

	/* the child's columns: the original ones, a call's column as a NULL */
	foreach(lc, plan->targetlist)
	{
		TargetEntry *te = lfirst(lc);

		if (list_member_int(call_entry, te->resno))
			child_tl = lappend(child_tl,
							   makeTargetEntry((Expr *) makeNullConst(exprType((Node *) te->expr),
																	  exprTypmod((Node *) te->expr),
																	  exprCollation((Node *) te->expr)),
											   te->resno, te->resname, te->resjunk));
		else
			child_tl = lappend(child_tl, copyObject(te));
	}
	/* then what the calls' columns need besides the calls ... */
	r.calls = calls;
	foreach(lc, plan->targetlist)
	{
		TargetEntry *te = lfirst(lc);
		ListCell   *lc2;

		if (!list_member_int(call_entry, te->resno))
			continue;
		foreach(lc2, pull_var_clause(without_calls((Node *) te->expr, calls),
									 PVC_INCLUDE_AGGREGATES | PVC_INCLUDE_WINDOWFUNCS |
									 PVC_RECURSE_PLACEHOLDERS))
		{
			Node	   *leaf = lfirst(lc2);

			if (list_member(r.leaves, leaf))
				continue;
			r.leaves = lappend(r.leaves, leaf);
			r.leaf_cols = lappend_int(r.leaf_cols,
									  child_column(&child_tl, copyObject((Expr *) leaf))->resno);
		}
	}
	/* ... and each call's arguments */
	foreach(lc, calls)
	{
		FuncExpr   *f = lfirst(lc);
		List	   *cols = NIL;
		ListCell   *lc2;

		/* a constant stays in the call: no need to copy it into every row */
		foreach(lc2, f->args)
			cols = lappend_int(cols, IsA(lfirst(lc2), Const) ? 0 :
							   child_column(&child_tl, copyObject(lfirst(lc2)))->resno);
		arg_cols = lappend(arg_cols, cols);
	}
	nchild = list_length(child_tl);

	/* the scan tuple: the child's columns, then the calls' answers */
	foreach(lc, child_tl)
		scan_tl = lappend(scan_tl,
						  makeTargetEntry((Expr *) makeVarFromTargetEntry(OUTER_VAR, lfirst(lc)),
										  list_length(scan_tl) + 1, NULL, false));
	i = 0;
	foreach(lc, calls)
	{
		FuncExpr   *f = copyObject((FuncExpr *) lfirst(lc));
		List	   *args = NIL;
		ListCell   *lc2;
		ListCell   *lc3;

		forboth(lc2, f->args, lc3, (List *) list_nth(arg_cols, i))
			args = lappend(args, lfirst_int(lc3) == 0 ? lfirst(lc2) :
						   makeVarFromTargetEntry(OUTER_VAR,
												  list_nth(child_tl, lfirst_int(lc3) - 1)));
		f->args = args;
		scan_tl = lappend(scan_tl, makeTargetEntry((Expr *) f, list_length(scan_tl) + 1,
												   NULL, false));
		i++;
	}

	/* what the parent sees: the original columns, read from the scan tuple */
	r.first_call_col = nchild + 1;
	foreach(lc, plan->targetlist)
	{
		TargetEntry *te = flatCopyTargetEntry(lfirst(lc));

		if (list_member_int(call_entry, te->resno))
			te->expr = (Expr *) replace_mutator((Node *) te->expr, &r);
		else
			te->expr = (Expr *) makeVarFromTargetEntry(INDEX_VAR, lfirst(lc));
		top_tl = lappend(top_tl, te);
	}

	cs = makeNode(CustomScan);
	cs->scan.plan.startup_cost = plan->startup_cost;
	cs->scan.plan.total_cost = plan->total_cost;
	cs->scan.plan.plan_rows = plan->plan_rows;
	cs->scan.plan.plan_width = plan->plan_width;
	cs->scan.plan.parallel_aware = false;
	cs->scan.plan.parallel_safe = false;
	cs->scan.plan.plan_node_id = plan_node_id;
	cs->scan.plan.targetlist = top_tl;
	cs->scan.plan.lefttree = plan;
	cs->scan.plan.extParam = bms_copy(plan->extParam);
	cs->scan.plan.allParam = bms_copy(plan->allParam);
	cs->scan.scanrelid = 0;
	cs->custom_private = list_make1(makeConst(INT8OID, -1, InvalidOid, sizeof(int64),
											  Int64GetDatum(bound), false, FLOAT8PASSBYVAL));
	cs->custom_scan_tlist = scan_tl;
	cs->methods = &llm_pipeline_scan_methods;

	plan->targetlist = child_tl;
	return cs;
}

/* ---- walking the plan ---- */

typedef struct PlanWalk
{
	int			next_plan_node_id;
	int64		bound;			/* rows the node being visited must return; -1: all */
} PlanWalk;

/*
 * Call fn on each child plan's pointer (the targets of lefttree, righttree,
 * plan lists); estimate.c walks plans with it too.
 */
void
pipeline_for_each_child(Plan *plan, pipeline_child_fn fn, void *arg)
{
	ListCell   *lc;
	List	   *list = NIL;

	if (plan->lefttree)
		fn(&plan->lefttree, plan, false, arg);
	if (plan->righttree)
		fn(&plan->righttree, plan, IsA(plan, MergeJoin), arg);
	switch (nodeTag(plan))
	{
		case T_Append:
			list = ((Append *) plan)->appendplans;
			break;
		case T_MergeAppend:
			list = ((MergeAppend *) plan)->mergeplans;
			break;
		case T_BitmapAnd:
			list = ((BitmapAnd *) plan)->bitmapplans;
			break;
		case T_BitmapOr:
			list = ((BitmapOr *) plan)->bitmapplans;
			break;
		case T_CustomScan:
			list = ((CustomScan *) plan)->custom_plans;
			break;
		case T_SubqueryScan:
			fn(&((SubqueryScan *) plan)->subplan, plan, false, arg);
			break;
		default:
			break;
	}
	foreach(lc, list)
		fn((Plan **) &lfirst(lc), plan, false, arg);
}

static void
max_plan_node_id(Plan **child, Plan *parent, bool inner_of_merge, void *arg)
{
	int		   *max = arg;

	*max = Max(*max, (*child)->plan_node_id);
	pipeline_for_each_child(*child, max_plan_node_id, arg);
}

/*
 * The rows a child of parent must return, given what parent must return
 * (parent_bound, -1: all): LIMIT + OFFSET below a Limit with constant ones,
 * the parent's own bound through nodes that return their child's rows one
 * for one (a SubqueryScan or Result without a filter), else all.  Like
 * ExecSetTupleBound, but known when planning, so it reaches our node
 * (and estimate.c's count of calls).
 */
int64
pipeline_child_bound(Plan *parent, int64 parent_bound)
{
	Limit	   *limit = (Limit *) parent;
	Const	   *count;
	Const	   *offset;
	int64		bound;

	if (parent == NULL)
		return -1;
	if ((IsA(parent, SubqueryScan) || IsA(parent, Result)) && parent->qual == NIL)
		return parent_bound;
	if (!IsA(parent, Limit) || limit->limitOption != LIMIT_OPTION_COUNT)
		return -1;
	count = (Const *) limit->limitCount;
	offset = (Const *) limit->limitOffset;
	if (count == NULL || !IsA(count, Const) || count->constisnull)
		return -1;
	bound = Max(DatumGetInt64(count->constvalue), 0);
	if (offset != NULL)
	{
		if (!IsA(offset, Const))
			return -1;
		if (!offset->constisnull &&
			pg_add_s64_overflow(bound, Max(DatumGetInt64(offset->constvalue), 0), &bound))
			return -1;
	}
	return bound;
}

static void
wrap_calls(Plan **child, Plan *parent, bool inner_of_merge, void *arg)
{
	PlanWalk   *walk = arg;
	int64		parent_bound = walk->bound;
	int64		bound = pipeline_child_bound(parent, parent_bound);
	CustomScan *cs;

	walk->bound = bound;
	pipeline_for_each_child(*child, wrap_calls, arg);
	walk->bound = parent_bound;
	if (inner_of_merge)
		return;
	cs = build_pipeline(*child, bound, walk->next_plan_node_id);
	if (cs != NULL)
	{
		*child = &cs->scan.plan;
		walk->next_plan_node_id++;
	}
}

static PlannedStmt *
pipeline_planner(Query *parse, const char *query_string, int cursorOptions,
				 ParamListInfo boundParams)
{
	PlannedStmt *stmt;
	PlanWalk	walk;
	ListCell   *lc;
	int			max_id = 0;

	stmt = prev_planner_hook ?
		prev_planner_hook(parse, query_string, cursorOptions, boundParams) :
		standard_planner(parse, query_string, cursorOptions, boundParams);

	if (llm_statement_concurrency <= 1 || (cursorOptions & CURSOR_OPT_SCROLL) ||
		stmt->parallelModeNeeded || stmt->commandType == CMD_UTILITY)
		return stmt;

	max_plan_node_id(&stmt->planTree, NULL, false, &max_id);
	foreach(lc, stmt->subplans)
		if (lfirst(lc) != NULL)
			max_plan_node_id((Plan **) &lfirst(lc), NULL, false, &max_id);
	walk.next_plan_node_id = max_id + 1;
	walk.bound = -1;

	wrap_calls(&stmt->planTree, NULL, false, &walk);
	foreach(lc, stmt->subplans)
		if (lfirst(lc) != NULL)
			wrap_calls((Plan **) &lfirst(lc), NULL, false, &walk);
	return stmt;
}

void
pipeline_init(void)
{
	DefineCustomIntVariable("llm.statement_concurrency",
							"Calls one statement keeps in flight at once (1: one at a time).",
							"A plan node whose target list calls a provider reads rows ahead "
							"and runs up to this many of their calls at once; rows still come "
							"out in order.",
							&llm_statement_concurrency,
							64, 1, 4096,
							PGC_USERSET, 0,
							NULL, NULL, NULL);
	prev_planner_hook = planner_hook;
	planner_hook = pipeline_planner;
	RegisterCustomScanMethods(&llm_pipeline_scan_methods);
	CacheRegisterSyscacheCallback(PROCOID, kind_cache_invalidate, (Datum) 0);
}

/*-------------------------------------------------------------------------
 *
 * estimate.c
 *	  llm.estimate(query, exact): what a statement's provider calls would
 *	  cost, from its plan, before it runs.
 *
 * runs in: backends, as the caller (never SECURITY DEFINER): planning and
 * the exact count see only what the caller may read.
 *
 * The statement is parsed, analysed, rewritten and planned as it would be
 * run (so the planner hook puts in its LLM Pipelines), then the plan is
 * walked for calls (pipeline_call_kind() recognises them; the walk is
 * pipeline_for_each_child()).  Each call site gives one row:
 *
 * - calls: the planner's row estimate of the node that evaluates the call
 *	 (an LLM Pipeline's child when pipelined), times the outer rows for the
 *	 inner side of a nested loop; a call in a condition counts the rows the
 *	 node reads (a scanned table's pg_class.reltuples).  A call inside a
 *	 subquery counts one execution of it.  With exact, the plan runs once
 *	 with every volatile function (the calls among them) read as NULL and
 *	 the node's rows are counted (EXPLAIN ANALYZE's counters; estimate_exact.c);
 * - input tokens per call: bytes / 4, rounded up (ESTIMATE_BYTES_PER_TOKEN),
 *	 over the prompt or history argument and a constant options' system; an
 *	 argument's bytes are the sum over its constants (their text) and
 *	 columns (pg_stats avg_width when the caller may read it, else the
 *	 type's typical width);
 * - output tokens per call: what the worker would send as max_tokens per
 *	 target (provider_max_tokens(): the options' max_tokens, else the
 *	 route's default_max_tokens, else 1024 for anthropic, capped by the
 *	 route's max_tokens); NULL when a target has no bound;
 * - cost: min and max over the alias's usable targets of price_input * in +
 *	 price_output * out (USD per million tokens), times calls, numeric.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <math.h>

#include "access/xact.h"
#include "catalog/pg_class.h"
#include "catalog/pg_proc.h"
#include "catalog/pg_type.h"
#include "common/int.h"
#include "executor/executor.h"
#include "executor/instrument.h"
#include "executor/spi.h"
#include "funcapi.h"
#include "miscadmin.h"
#include "nodes/makefuncs.h"
#include "nodes/nodeFuncs.h"
#include "nodes/plannodes.h"
#include "optimizer/optimizer.h"
#include "parser/parsetree.h"
#include "rewrite/rewriteHandler.h"
#include "tcop/tcopprot.h"
#include "tcop/utility.h"
#include "utils/acl.h"
#include "utils/builtins.h"
#include "utils/jsonb.h"
#include "utils/lsyscache.h"
#include "utils/rls.h"
#include "utils/snapmgr.h"
#include "utils/syscache.h"

#include "backend/estimate.h"
#include "backend/conversation.h"
#include "backend/pipeline.h"

PG_FUNCTION_INFO_V1(llm_estimate);

/* the rule of thumb for English text with BPE tokenizers, rounded up */
#define ESTIMATE_BYTES_PER_TOKEN 4

typedef struct SiteWalk
{
	PlannedStmt *stmt;
	List	   *sites;
	double		loops;
	int64		bound;			/* rows the node visited must return; -1: all */
} SiteWalk;

/* ---- finding the calls ---- */

typedef struct FindCalls
{
	List	   *calls;
	List	   *agg_calls;		/* in an aggregate's arguments: once per input row */
	bool		in_agg;
} FindCalls;

static bool
find_calls(Node *node, FindCalls *fc)
{
	bool		in_agg = fc->in_agg;
	bool		result;

	if (node == NULL)
		return false;
	if (IsA(node, FuncExpr) && pipeline_call_kind(((FuncExpr *) node)->funcid) != NULL)
	{
		if (fc->in_agg)
			fc->agg_calls = lappend(fc->agg_calls, node);
		else
			fc->calls = lappend(fc->calls, node);
	}
	/* a SubPlan's own plan is walked from stmt->subplans */
	if (IsA(node, Aggref))
		fc->in_agg = true;
	result = expression_tree_walker(node, find_calls, fc);
	fc->in_agg = in_agg;
	return result;
}

static double
rel_tuples(Oid relid, double fallback)
{
	HeapTuple	tup = SearchSysCache1(RELOID, ObjectIdGetDatum(relid));
	double		n = fallback;

	if (HeapTupleIsValid(tup))
	{
		float4		t = ((Form_pg_class) GETSTRUCT(tup))->reltuples;

		if (t >= 0)
			n = Max(t, fallback);
		ReleaseSysCache(tup);
	}
	return n;
}

/* The rows plan reads per loop: what its conditions are evaluated on. */
static double
rows_read(Plan *plan, PlannedStmt *stmt)
{
	Index		scanrelid = 0;

	switch (nodeTag(plan))
	{
		case T_SeqScan:
		case T_SampleScan:
		case T_IndexScan:
		case T_IndexOnlyScan:
		case T_BitmapHeapScan:
		case T_TidScan:
		case T_TidRangeScan:
			scanrelid = ((Scan *) plan)->scanrelid;
			break;
		default:
			break;
	}
	if (scanrelid > 0)
	{
		RangeTblEntry *rte = rt_fetch(scanrelid, stmt->rtable);

		if (rte->rtekind == RTE_RELATION)
			return rel_tuples(rte->relid, plan->plan_rows);
	}
	/* a nested loop tries every pair; a hash or merge join the matching ones */
	if (IsA(plan, NestLoop) && plan->lefttree != NULL && plan->righttree != NULL)
		return Max(plan->lefttree->plan_rows * plan->righttree->plan_rows, plan->plan_rows);
	if (plan->lefttree != NULL)
		return Max(Max(plan->lefttree->plan_rows,
					   plan->righttree != NULL ? plan->righttree->plan_rows : 0),
				   plan->plan_rows);
	return plan->plan_rows;
}

static void
add_site(SiteWalk *w, FuncExpr *call, Plan *plan, bool in_qual, Plan *count_plan, bool bounded,
		 bool per_loop)
{
	CallSite   *s = palloc0(sizeof(CallSite));

	while (estimate_is_pipeline(count_plan))
		count_plan = count_plan->lefttree;	/* not run in exact mode */
	s->call = call;
	s->node = plan;
	s->count_node_id = count_plan->plan_node_id;
	s->in_qual = in_qual;
	s->per_loop = per_loop;
	s->calls = per_loop ? 1 : in_qual ? rows_read(count_plan, w->stmt) : count_plan->plan_rows;
	if (bounded && !in_qual && w->bound >= 0)
		s->calls = Min(s->calls, w->bound); /* under a LIMIT */
	s->calls *= w->loops;
	s->stmt = w->stmt;
	w->sites = lappend(w->sites, s);
}

static void
add_sites_ext(SiteWalk *w, Plan *plan, Node *exprs, bool in_qual, Plan *count_plan, bool per_loop)
{
	FindCalls	fc = {NIL, NIL, false};
	ListCell   *lc;

	(void) find_calls(exprs, &fc);
	foreach(lc, fc.calls)
		add_site(w, lfirst(lc), plan, in_qual, count_plan, true, per_loop);
	/* an aggregate's argument: once per row the aggregate reads */
	foreach(lc, fc.agg_calls)
		add_site(w, lfirst(lc), plan, false,
				 count_plan->lefttree != NULL ? count_plan->lefttree : count_plan, false, false);
}

static void
add_sites(SiteWalk *w, Plan *plan, Node *exprs, bool in_qual, Plan *count_plan)
{
	add_sites_ext(w, plan, exprs, in_qual, count_plan, false);
}

static void
site_walker(Plan **child, Plan *parent, bool inner_of_merge, void *arg)
{
	SiteWalk   *w = arg;
	Plan	   *plan = *child;
	double		loops = w->loops;
	int64		parent_bound = w->bound;

	w->bound = pipeline_child_bound(parent, parent_bound);

	if (estimate_is_pipeline(plan))
		add_sites(w, plan, (Node *) ((CustomScan *) plan)->custom_scan_tlist, false,
				  plan->lefttree);
	else if (IsA(plan, ModifyTable))
	{
		/* RETURNING, MERGE actions: per row modified, at most the source's */
		add_sites(w, plan, (Node *) ((ModifyTable *) plan)->returningLists, false,
				  plan->lefttree);
		add_sites(w, plan, (Node *) ((ModifyTable *) plan)->mergeActionLists, false,
				  plan->lefttree);
	}
	else
	{
		add_sites(w, plan, (Node *) plan->targetlist, false, plan);
		add_sites(w, plan, (Node *) plan->qual, true, plan);
		switch (nodeTag(plan))
		{
			case T_NestLoop:
			case T_MergeJoin:
			case T_HashJoin:
				add_sites(w, plan, (Node *) ((Join *) plan)->joinqual, true, plan);
				break;
			case T_Result:
				add_sites(w, plan, ((Result *) plan)->resconstantqual, true, plan);
				break;
			case T_ValuesScan:
				/* each row's expressions run once per scan */
				add_sites_ext(w, plan, (Node *) ((ValuesScan *) plan)->values_lists, false, plan,
							  true);
				break;
			case T_FunctionScan:
				add_sites(w, plan, (Node *) ((FunctionScan *) plan)->functions, false, plan);
				break;
			default:
				break;
		}
	}
	/* the inner side of a nested loop runs once per outer row */
	if (IsA(plan, NestLoop) && plan->lefttree != NULL && plan->righttree != NULL)
	{
		w->loops = loops;
		site_walker(&plan->lefttree, plan, false, w);
		w->loops = loops * Max(plan->lefttree->plan_rows, 1);
		site_walker(&plan->righttree, plan, false, w);
	}
	else
		pipeline_for_each_child(plan, site_walker, w);
	w->loops = loops;
	w->bound = parent_bound;
}

static List *
find_sites(PlannedStmt *stmt, List *sites)
{
	SiteWalk	w = {stmt, sites, 1, -1};
	ListCell   *lc;

	site_walker(&stmt->planTree, NULL, false, &w);
	foreach(lc, stmt->subplans)
		if (lfirst(lc) != NULL)
			site_walker((Plan **) &lfirst(lc), NULL, false, &w);
	return w.sites;
}

/* ---- input bytes of an argument ---- */

static double expr_bytes(Node *expr, Plan *plan, PlannedStmt *stmt, int depth);

static double
type_bytes(Oid type, int32 typmod)
{
	return get_typavgwidth(type, typmod);
}

/*
 * A column's average width, as pg_stats shows it to the caller: only with
 * SELECT on the column and no row security in force (else the type's).
 */
static double
column_bytes(Oid relid, AttrNumber attno, Oid type, int32 typmod)
{
	Oid			user = GetUserId();
	int32		w;

	/* as has_column_privilege: the table's privilege, else the column's */
	if (attno <= 0 ||
		(pg_class_aclcheck(relid, user, ACL_SELECT) != ACLCHECK_OK &&
		 pg_attribute_aclcheck(relid, attno, user, ACL_SELECT) != ACLCHECK_OK) ||
		check_enable_rls(relid, InvalidOid, true) == RLS_ENABLED)
		return type_bytes(type, typmod);
	w = get_attavgwidth(relid, attno);
	return w > 0 ? w : type_bytes(type, typmod);
}

static double
tle_bytes(List *tlist, AttrNumber attno, Plan *plan, PlannedStmt *stmt, int depth, Var *var)
{
	TargetEntry *te = attno > 0 && attno <= list_length(tlist) ? list_nth(tlist, attno - 1) : NULL;

	if (te == NULL)
		return type_bytes(var->vartype, var->vartypmod);
	return expr_bytes((Node *) te->expr, plan, stmt, depth + 1);
}

static Plan *
outer_child(Plan *plan)
{
	if (plan->lefttree != NULL)
		return plan->lefttree;
	if (IsA(plan, Append) && ((Append *) plan)->appendplans != NIL)
		return linitial(((Append *) plan)->appendplans);
	if (IsA(plan, MergeAppend) && ((MergeAppend *) plan)->mergeplans != NIL)
		return linitial(((MergeAppend *) plan)->mergeplans);
	return NULL;
}

static double
var_bytes(Var *var, Plan *plan, PlannedStmt *stmt, int depth)
{
	Plan	   *child;
	RangeTblEntry *rte;

	if (depth > 64)
		return type_bytes(var->vartype, var->vartypmod);
	switch (var->varno)
	{
		case OUTER_VAR:
			child = outer_child(plan);
			return child ? tle_bytes(child->targetlist, var->varattno, child, stmt, depth, var) :
				type_bytes(var->vartype, var->vartypmod);
		case INNER_VAR:
			/* a MERGE action's source columns are its ModifyTable's inner */
			child = IsA(plan, ModifyTable) ? plan->lefttree : plan->righttree;
			return child ? tle_bytes(child->targetlist, var->varattno, child, stmt, depth, var) :
				type_bytes(var->vartype, var->vartypmod);
		case INDEX_VAR:
			if (IsA(plan, CustomScan))
				return tle_bytes(((CustomScan *) plan)->custom_scan_tlist, var->varattno, plan,
								 stmt, depth, var);
			return type_bytes(var->vartype, var->vartypmod);
		default:
			break;
	}
	if (var->varno < 1 || var->varno > list_length(stmt->rtable))
		return type_bytes(var->vartype, var->vartypmod);
	rte = rt_fetch(var->varno, stmt->rtable);
	if (rte->rtekind == RTE_RELATION)
		return column_bytes(rte->relid, var->varattno, var->vartype, var->vartypmod);
	if (rte->rtekind == RTE_SUBQUERY && IsA(plan, SubqueryScan))
	{
		Plan	   *sub = ((SubqueryScan *) plan)->subplan;

		return tle_bytes(sub->targetlist, var->varattno, sub, stmt, depth, var);
	}
	return type_bytes(var->vartype, var->vartypmod);
}

static double
const_bytes(Const *c)
{
	Oid			out;
	bool		varlena;

	if (c->constisnull)
		return 0;
	getTypeOutputInfo(c->consttype, &out, &varlena);
	return strlen(OidOutputFunctionCall(out, c->constvalue));
}

typedef struct Bytes
{
	Plan	   *plan;
	PlannedStmt *stmt;
	int			depth;
	double		sum;
} Bytes;

static bool
bytes_walker(Node *node, Bytes *b)
{
	if (node == NULL)
		return false;
	switch (nodeTag(node))
	{
		case T_Const:
			b->sum += const_bytes((Const *) node);
			return false;
		case T_Var:
			b->sum += var_bytes((Var *) node, b->plan, b->stmt, b->depth);
			return false;
		case T_Param:
		case T_SubPlan:
		case T_AlternativeSubPlan:
			b->sum += type_bytes(exprType(node), exprTypmod(node));
			return false;
		default:
			return expression_tree_walker(node, bytes_walker, b);
	}
}

/* The bytes an expression evaluated in plan gives: its constants and columns. */
static double
expr_bytes(Node *expr, Plan *plan, PlannedStmt *stmt, int depth)
{
	Bytes		b = {plan, stmt, depth, 0};

	(void) bytes_walker(expr, &b);

	return b.sum;
}

/* ---- the statement ---- */

static int
site_cmp(const ListCell *a, const ListCell *b)
{
	int			la = ((CallSite *) lfirst(a))->call->location;
	int			lb = ((CallSite *) lfirst(b))->call->location;

	return la < lb ? -1 : la > lb;
}

/* The planned statements of query: one for each rewritten query. */
static List *
plan_statement(const char *query)
{
	List	   *raw = pg_parse_query(query);
	RawStmt    *rs;
	Node	   *s;
	List	   *queries;
	List	   *stmts = NIL;
	ListCell   *lc;

	if (list_length(raw) != 1)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("llm.estimate takes exactly one statement, not %d", list_length(raw))));
	rs = linitial(raw);
	s = rs->stmt;
	if (!IsA(s, SelectStmt) && !IsA(s, InsertStmt) && !IsA(s, UpdateStmt) &&
		!IsA(s, DeleteStmt) && !IsA(s, MergeStmt) && !IsA(s, CreateTableAsStmt))
		ereport(ERROR,
				(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
				 errmsg("llm.estimate does not take %s statements", CreateCommandName(s)),
				 errhint("Pass a SELECT, INSERT, UPDATE, DELETE, MERGE or CREATE TABLE AS.")));

	queries = pg_analyze_and_rewrite_fixedparams(rs, query, NULL, 0, NULL);
	foreach(lc, queries)
	{
		Query	   *q = lfirst(lc);

		if (q->commandType == CMD_UTILITY && IsA(q->utilityStmt, CreateTableAsStmt) &&
			IsA(((CreateTableAsStmt *) q->utilityStmt)->query, Query))
		{
			/* as EXPLAIN does: the query that fills the table */
			List	   *rewritten = QueryRewrite(copyObject((Query *) ((CreateTableAsStmt *) q->utilityStmt)->query));

			if (list_length(rewritten) != 1)
				elog(ERROR, "unexpected rewrite result for CREATE TABLE AS");
			q = linitial(rewritten);
		}
		if (q->commandType == CMD_UTILITY)
			ereport(ERROR,
					(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
					 errmsg("llm.estimate does not take %s statements",
							CreateCommandName(q->utilityStmt))));
		stmts = lappend(stmts, pg_plan_query(q, query, CURSOR_OPT_PARALLEL_OK, NULL));
	}
	return stmts;
}

/* text of a Const argument, or NULL when not a non-null constant */
static char *
const_text(List *args, int i)
{
	Node	   *n = list_length(args) > i ? list_nth(args, i) : NULL;
	Const	   *c;
	Oid			out;
	bool		varlena;

	while (n != NULL && IsA(n, RelabelType))
		n = (Node *) ((RelabelType *) n)->arg;
	if (n == NULL || !IsA(n, Const) || ((Const *) n)->constisnull)
		return NULL;
	c = (Const *) n;
	getTypeOutputInfo(c->consttype, &out, &varlena);
	return OidOutputFunctionCall(out, c->constvalue);
}

/* the key of the constant options (SQL argument i) as a jsonb value, or NULL */
static JsonbValue *
const_option(List *args, int i, const char *key, JsonbValue *buf)
{
	Node	   *n = list_length(args) > i ? list_nth(args, i) : NULL;
	Jsonb	   *j;

	if (n == NULL || !IsA(n, Const) || ((Const *) n)->constisnull ||
		((Const *) n)->consttype != JSONBOID)
		return NULL;
	j = DatumGetJsonbP(((Const *) n)->constvalue);
	if (!JB_ROOT_IS_OBJECT(j))
		return NULL;
	return getKeyJsonValueFromContainer(&j->root, key, strlen(key), buf);
}

/* per target of the alias: the output bound and cost; aggregated over them */
/*
 * The quotas the statement would exceed, by call site: a quota counts the
 * calls of every site it applies to (every call, the alias, a role the
 * caller is a member of, a tag of constant options), and is exceeded when
 * its room left in the window (limit - used - reserved) is less than their
 * requests, tokens or maximum cost together.  A figure that is unknown
 * (NULL) adds nothing, so what is listed is exceeded for sure.  Read from
 * llm.quota_status, which shows the caller only the quotas it may see.
 * $1-$6: per site (in order) alias, calls, input tokens, maximum output
 * tokens, maximum cost, options.
 */
static const char *const quotas_sql =
"WITH s AS ("
"  SELECT * FROM unnest($1::text[], $2::int8[], $3::int8[], $4::int8[], $5::numeric[], $6::jsonb[])"
"         WITH ORDINALITY AS s(alias, calls, tin, tout, cost, opts, site)"
"), m AS ("
"  SELECT q.quota, q.metric, q.quota_limit - q.used - q.reserved AS room, s.*"
"    FROM llm.quota_status q JOIN s"
"      ON q.scope = 'all'"
"      OR (q.scope = 'alias' AND q.scope_value = s.alias)"
"      OR (q.scope = 'role'"
"          AND pg_has_role(current_user, to_regrole(quote_ident(q.scope_value))::oid, 'MEMBER'))"
"      OR (q.scope = 'tag'"
"          AND s.opts -> 'tags' ->> split_part(q.scope_value, '=', 1)"
"              = substr(q.scope_value, strpos(q.scope_value, '=') + 1))"
"), x AS ("
"  SELECT quota FROM m GROUP BY quota, metric, room"
"  HAVING room < CASE metric WHEN 'requests' THEN sum(calls)"
"                            WHEN 'input_tokens' THEN sum(tin)"
"                            WHEN 'output_tokens' THEN sum(tout)"
"                            WHEN 'total_tokens' THEN sum(tin) + coalesce(sum(tout), 0)"
"                            WHEN 'cost_usd' THEN sum(cost) END"
")"
"SELECT site, array_agg(DISTINCT quota ORDER BY quota) FROM m JOIN x USING (quota) GROUP BY site";

/* One call site's row, kept until the quotas are known. */
typedef struct SiteRow
{
	Datum		values[11];
	bool		nulls[11];
	Datum		options;		/* the call's options if a constant jsonb, else 0 */
} SiteRow;

/* Fill exceeds_quotas of every row: the quotas the statement would exceed, or {}. */
static void
fill_exceeded_quotas(SiteRow *rows, int n)
{
	Oid			types[6] = {TEXTARRAYOID, INT8ARRAYOID, INT8ARRAYOID, INT8ARRAYOID,
	NUMERICARRAYOID, JSONBARRAYOID};
	Oid			elem[6] = {TEXTOID, INT8OID, INT8OID, INT8OID, NUMERICOID, JSONBOID};
	int			col[6] = {2, 3, 6, 7, 9, -1};	/* values[] column; -1: the options */
	Datum		args[6];
	Datum	   *elems = palloc(sizeof(Datum) * Max(n, 1));
	bool	   *enulls = palloc(sizeof(bool) * Max(n, 1));
	int			dims[1] = {n};
	int			lbs[1] = {1};
	int			a;
	int			i;
	uint64		r;

	for (i = 0; i < n; i++)
	{
		rows[i].values[10] = PointerGetDatum(construct_empty_array(TEXTOID));
		rows[i].nulls[10] = false;
	}
	if (n == 0)
		return;
	for (a = 0; a < 6; a++)
	{
		int16		len;
		bool		byval;
		char		align;

		for (i = 0; i < n; i++)
		{
			elems[i] = col[a] >= 0 ? rows[i].values[col[a]] : rows[i].options;
			enulls[i] = col[a] >= 0 ? rows[i].nulls[col[a]] : rows[i].options == (Datum) 0;
		}
		get_typlenbyvalalign(elem[a], &len, &byval, &align);
		args[a] = PointerGetDatum(construct_md_array(elems, enulls, 1, dims, lbs,
													 elem[a], len, byval, align));
	}
	if (SPI_execute_with_args(quotas_sql, 6, types, args, NULL, true, 0) != SPI_OK_SELECT)
		return;
	for (r = 0; r < SPI_processed; r++)
	{
		bool		isnull;
		int64		site = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[r],
													   SPI_tuptable->tupdesc, 1, &isnull));
		Datum		d = SPI_getbinval(SPI_tuptable->vals[r], SPI_tuptable->tupdesc, 2, &isnull);

		if (!isnull && site >= 1 && site <= n)
			rows[site - 1].values[10] = SPI_datumTransfer(d, false, -1);
	}
}

static const char *const targets_sql =
"WITH t AS ("
"  SELECT least(coalesce($3::numeric,"
"                        CASE WHEN jsonb_typeof(r.options->'default_max_tokens') = 'number'"
"                             THEN (r.options->>'default_max_tokens')::numeric END,"
"                        CASE WHEN p.kind = 'anthropic' THEN 1024 END),"
"               CASE WHEN jsonb_typeof(r.options->'max_tokens') = 'number'"
"                    THEN (r.options->>'max_tokens')::numeric END) AS out,"
"         CASE WHEN jsonb_typeof(r.options->'price_input') = 'number'"
"              THEN (r.options->>'price_input')::numeric END AS pin,"
"         CASE WHEN jsonb_typeof(r.options->'price_output') = 'number'"
"              THEN (r.options->>'price_output')::numeric END AS pout"
"    FROM llm.routes r JOIN llm.providers p ON p.name = r.provider"
"   WHERE r.alias = $1 AND r.enabled AND r.weight > 0 AND p.enabled"
"     AND (current_setting('llm.allowed_regions') = ''"
"          OR p.region = ANY (string_to_array(replace(current_setting('llm.allowed_regions'), ' ', ''), ',')))"
"), c AS ("
"  SELECT out, CASE WHEN pin IS NOT NULL OR pout IS NOT NULL"
"                   THEN coalesce(pin, 0) * $2 + coalesce(pout, 0) * out END AS cost"
"    FROM t"
")"
"SELECT CASE WHEN bool_and(out IS NOT NULL) THEN max(out)::int8 END,"
"       trim_scale(min(cost) * $4::numeric * 0.000001),"
"       CASE WHEN bool_and(cost IS NOT NULL) THEN trim_scale(max(cost) * $4::numeric * 0.000001) END"
"  FROM c";

/* per call * calls as a bigint Datum; false (NULL) past bigint */
static bool
mul_tokens(int64 per_call, int64 calls, Datum *result)
{
	int64		total;

	if (pg_mul_s64_overflow(per_call, calls, &total))
		return false;
	*result = Int64GetDatum(total);
	return true;
}

Datum
llm_estimate(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	char	   *query;
	bool		exact = !PG_ARGISNULL(1) && PG_GETARG_BOOL(1);
	List	   *stmts;
	List	   *sites = NIL;
	ListCell   *lc;
	int			n = 0;
	Oid			argtypes[4] = {TEXTOID, INT8OID, INT8OID, INT8OID};
	SiteRow    *rows;
	int			nrows = 0;
	int			i;

	if (PG_ARGISNULL(0))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("llm.estimate needs a statement, not NULL")));
	query = text_to_cstring(PG_GETARG_TEXT_PP(0));
	InitMaterializedSRF(fcinfo, 0);

	stmts = plan_statement(query);
	foreach(lc, stmts)
	{
		PlannedStmt *stmt = lfirst(lc);
		List	   *mine;

		/* what the caller could not run, they learn nothing of */
		(void) ExecCheckRTPerms(stmt->rtable, true);
		mine = find_sites(stmt, NIL);
		if (exact && mine != NIL)
			estimate_count_exactly(stmt, query, mine);
		sites = list_concat(sites, mine);
	}
	list_sort(sites, site_cmp);

	SPI_connect();
	rows = palloc0(sizeof(SiteRow) * Max(list_length(sites), 1));
	foreach(lc, sites)
	{
		CallSite   *s = lfirst(lc);
		FuncExpr   *f = s->call;
		const LlmCallKind *kind = pipeline_call_kind(f->funcid);
		double		bytes = 0;
		char	   *alias = kind->conversation ? chat_estimate_site(linitial(f->args), &bytes) :
			const_text(f->args, 0);
		int64		in_tokens;
		int64		calls = (int64) Min(ceil(s->calls), (double) PG_INT64_MAX / 2);
		JsonbValue	buf;
		JsonbValue *v;
		int64		req_max = -1;
		Datum		values[11];
		bool		nulls[11] = {false};
		Datum		args[4];
		char		argnulls[4] = {' ', ' ', ' ', ' '};

		/* what is sent: every argument between the alias and the options */
		for (int a = 1; a < kind->options_arg && a < list_length(f->args); a++)
			bytes += expr_bytes(list_nth(f->args, a), s->node, s->stmt, 0);
		if ((v = const_option(f->args, kind->options_arg, "system", &buf)) != NULL && v->type == jbvString)
			bytes += v->val.string.len;
		if (!kind->has_output)
			req_max = 0;		/* an embedding: input only */
		else if ((v = const_option(f->args, kind->options_arg, "max_tokens", &buf)) != NULL &&
				 v->type == jbvNumeric)
			req_max = DatumGetInt64(DirectFunctionCall1(numeric_int8,
														NumericGetDatum(v->val.numeric)));
		in_tokens = (int64) ceil(bytes / ESTIMATE_BYTES_PER_TOKEN);

		values[0] = Int32GetDatum(++n);
		values[1] = CStringGetTextDatum(get_func_name(f->funcid));	/* llm_chat for both forms */
		if (alias != NULL)
			values[2] = CStringGetTextDatum(alias);
		else
			nulls[2] = true;	/* not a constant: unknown */
		values[3] = Int64GetDatum(calls);
		values[4] = Int64GetDatum(in_tokens);
		nulls[6] = !mul_tokens(in_tokens, calls, &values[6]);
		nulls[5] = nulls[7] = nulls[8] = nulls[9] = true;

		args[0] = CStringGetTextDatum(alias != NULL ? alias : "");
		args[1] = Int64GetDatum(in_tokens);
		args[2] = Int64GetDatum(req_max);
		args[3] = Int64GetDatum(calls);
		if (req_max < 0)
			argnulls[2] = 'n';
		if (alias != NULL &&
			SPI_execute_with_args(targets_sql, 4, argtypes, args, argnulls, true, 1) == SPI_OK_SELECT &&
			SPI_processed == 1)
		{
			HeapTuple	tup = SPI_tuptable->vals[0];
			TupleDesc	desc = SPI_tuptable->tupdesc;
			bool		isnull;
			Datum		d;

			d = SPI_getbinval(tup, desc, 1, &isnull);
			if (!isnull)
			{
				values[5] = Int64GetDatum(DatumGetInt64(d));
				nulls[5] = false;
				nulls[7] = !mul_tokens(DatumGetInt64(d), calls, &values[7]);
			}
			d = SPI_getbinval(tup, desc, 2, &isnull);
			if (!isnull)
			{
				values[8] = SPI_datumTransfer(d, false, -1);
				nulls[8] = false;
			}
			d = SPI_getbinval(tup, desc, 3, &isnull);
			if (!isnull)
			{
				values[9] = SPI_datumTransfer(d, false, -1);
				nulls[9] = false;
			}
		}
		else if (alias == NULL && req_max >= 0)
		{
			/* no targets to cap it: the options' bound is all we know */
			values[5] = Int64GetDatum(req_max);
			nulls[5] = false;
			nulls[7] = !mul_tokens(req_max, calls, &values[7]);
		}
		memcpy(rows[nrows].values, values, sizeof(values));
		memcpy(rows[nrows].nulls, nulls, sizeof(nulls));
		{
			Node	   *o = list_length(f->args) > kind->options_arg ?
				list_nth(f->args, kind->options_arg) : NULL;

			rows[nrows].options = o != NULL && IsA(o, Const) && !((Const *) o)->constisnull &&
				((Const *) o)->consttype == JSONBOID ? ((Const *) o)->constvalue : (Datum) 0;
		}
		nrows++;
	}
	fill_exceeded_quotas(rows, nrows);
	for (i = 0; i < nrows; i++)
		tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, rows[i].values, rows[i].nulls);
	SPI_finish();
	return (Datum) 0;
}

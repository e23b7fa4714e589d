/*-------------------------------------------------------------------------
 *
 * log_writer.c
 *	  Writing rows of llm.requests through the executor, as the
 *	  logical-replication apply worker writes rows.
 *
 * runs in: worker, inside the transactions of request_log.c.
 *
 * One LogWriter per batch: one EState and ResultRelInfo,
 * ExecSimpleRelationInsert/Update, so whatever an administrator adds to
 * llm.requests is honoured as an INSERT or UPDATE would honour it:
 * constraints (ExecConstraints), generated columns, BEFORE and AFTER row
 * triggers (AfterTriggerBeginQuery/EndQuery around the batch), every index,
 * defaults of columns we do not set (evaluated like the apply worker's
 * slot_fill_defaults; the id comes from its identity sequence that way).
 * No name is resolved through search_path: the table is found by schema
 * and name, everything else by OID.
 *
 * A row is completed through the primary key: found with a fresh snapshot,
 * locked without waiting (a row another session holds is retried next
 * turn, so an administrator's open transaction never stalls the worker's
 * loop), looked up again when it was updated concurrently, skipped when it
 * was deleted.
 *
 * Every row that leaves 'pending' is reported to usage_rollup.c, which
 * writes the usage rollup when the batch's writer closes, in the same
 * transaction.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/genam.h"
#include "access/relscan.h"
#include "access/table.h"
#include "access/tableam.h"
#include "access/xact.h"
#include "catalog/namespace.h"
#include "catalog/pg_am_d.h"
#include "catalog/pg_class.h"
#include "catalog/pg_collation_d.h"
#include "catalog/pg_operator_d.h"
#include "catalog/pg_type.h"
#include "commands/trigger.h"
#include "executor/executor.h"
#include "miscadmin.h"
#include "nodes/makefuncs.h"
#include "optimizer/optimizer.h"
#include "rewrite/rewriteHandler.h"
#include "utils/builtins.h"
#include "utils/inval.h"
#include "utils/jsonb.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/rel.h"
#include "utils/relcache.h"
#include "utils/snapmgr.h"
#include "utils/syscache.h"
#include "utils/timestamp.h"

#include "worker/attempt.h"
#include "llm_gateway.h"
#include "worker/log_writer.h"
#include "worker/usage_rollup.h"

/* The columns of llm.requests, in table order (sql/llm_gateway--0.1.sql). */
typedef enum LogColumn
{
	COL_ID,
	COL_CREATED_AT,
	COL_FINISHED_AT,
	COL_STATUS,
	COL_ALIAS,
	COL_PROVIDER,
	COL_UPSTREAM_MODEL,
	COL_ROLE_NAME,
	COL_ATTEMPTS,
	COL_HTTP_STATUS,
	COL_INPUT_TOKENS,
	COL_OUTPUT_TOKENS,
	COL_CACHE_READ_TOKENS,
	COL_CACHE_WRITE_TOKENS,
	COL_STOP_REASON,
	COL_COST_USD,
	COL_LATENCY_MS,
	COL_ERROR_CODE,
	COL_ERROR,
	COL_ATTEMPTS_DETAIL,
	COL_TAGS,
	COL_REQUEST_BODY,
	COL_RESPONSE_BODY,
	NUM_LOG_COLUMNS
} LogColumn;

static const struct
{
	const char *name;
	Oid			type;
}			log_columns[NUM_LOG_COLUMNS] =
{
	{"id", INT8OID},
	{"created_at", TIMESTAMPTZOID},
	{"finished_at", TIMESTAMPTZOID},
	{"status", TEXTOID},
	{"alias", TEXTOID},
	{"provider", TEXTOID},
	{"upstream_model", TEXTOID},
	{"role_name", TEXTOID},
	{"attempts", INT4OID},
	{"http_status", INT4OID},
	{"input_tokens", INT8OID},
	{"output_tokens", INT8OID},
	{"cache_read_tokens", INT8OID},
	{"cache_write_tokens", INT8OID},
	{"stop_reason", TEXTOID},
	{"cost_usd", NUMERICOID},
	{"latency_ms", FLOAT8OID},
	{"error_code", TEXTOID},
	{"error", TEXTOID},
	{"attempts_detail", JSONBOID},
	{"tags", JSONBOID},
	{"request_body", JSONBOID},
	{"response_body", TEXTOID},
};

/*
 * What a write changes.  "keep" columns are written only when the new
 * value is not NULL (the answering target's provider, a body kept only
 * for errors), so a NULL never erases what the pending row recorded.
 */
typedef enum LogChange
{
	CHANGE_NONE,
	CHANGE_SET,
	CHANGE_KEEP
} LogChange;

typedef struct LogRow
{
	Datum		values[NUM_LOG_COLUMNS];
	bool		isnull[NUM_LOG_COLUMNS];
	LogChange	change[NUM_LOG_COLUMNS];
} LogRow;

/* ---------------------------------------------------------------------
 * Building rows
 * ---------------------------------------------------------------------
 */

static void
row_init(LogRow *row)
{
	int			i;

	for (i = 0; i < NUM_LOG_COLUMNS; i++)
	{
		row->values[i] = (Datum) 0;
		row->isnull[i] = true;
		row->change[i] = CHANGE_NONE;
	}
}

static void
row_set(LogRow *row, LogColumn col, Datum value, bool isnull)
{
	row->values[col] = value;
	row->isnull[col] = isnull;
	row->change[col] = CHANGE_SET;
}

static void
row_set_text(LogRow *row, LogColumn col, const char *s)
{
	row_set(row, col, s ? CStringGetTextDatum(s) : (Datum) 0, s == NULL);
}

static void
row_set_int8(LogRow *row, LogColumn col, int64 v, bool present)
{
	row_set(row, col, Int64GetDatum(v), !present);
}

/* JSON text (the worker's own) as jsonb; NULL stays NULL */
static void
row_set_json(LogRow *row, LogColumn col, const char *json)
{
	row_set(row, col, json ? DirectFunctionCall1(jsonb_in, CStringGetDatum(json)) : (Datum) 0,
			json == NULL);
}

static void
row_keep(LogRow *row, LogColumn col, Datum value, bool isnull)
{
	row_set(row, col, value, isnull);
	row->change[col] = CHANGE_KEEP;
}

static void
pending_row(LlmWorkItem *item, LogRow *row)
{
	row_init(row);
	row_set(row, COL_CREATED_AT, TimestampTzGetDatum(item->submitted_at), false);
	row_set_text(row, COL_STATUS, "pending");
	row_set_text(row, COL_ALIAS, item->alias);
	row_set_text(row, COL_PROVIDER, item->has_target ? item->target.provider_name : NULL);
	row_set_text(row, COL_UPSTREAM_MODEL, item->has_target ? item->target.upstream_model : NULL);
	row_set_text(row, COL_ROLE_NAME, item->role);
	row_set(row, COL_ATTEMPTS, Int32GetDatum(0), false);
	row_set_json(row, COL_TAGS, item->tags);
	row_set(row, COL_REQUEST_BODY, JsonbPGetDatum(item->request),
			llm_log_bodies != LLM_LOG_BODIES_ALL);
}

static void
complete_row(LlmWorkItem *item, LogRow *row)
{
	bool		keep_bodies = llm_log_bodies == LLM_LOG_BODIES_ALL ||
		(llm_log_bodies == LLM_LOG_BODIES_ERRORS && !item->ok);
	bool		ok = item->ok;

	row_init(row);
	row_set_text(row, COL_STATUS, item->status);
	row_set(row, COL_FINISHED_AT, TimestampTzGetDatum(GetCurrentTimestamp()), false);
	row_set(row, COL_ATTEMPTS, Int32GetDatum(item->attempts), false);
	row_set(row, COL_HTTP_STATUS, Int32GetDatum((int32) item->http_status), item->http_status <= 0);
	row_set_int8(row, COL_INPUT_TOKENS, item->answer.input_tokens, ok);
	row_set_int8(row, COL_OUTPUT_TOKENS, item->answer.output_tokens, ok);
	row_set_int8(row, COL_CACHE_READ_TOKENS, item->answer.cache_read_input_tokens, ok);
	row_set_int8(row, COL_CACHE_WRITE_TOKENS, item->answer.cache_creation_input_tokens, ok);
	row_set_text(row, COL_STOP_REASON, ok ? item->answer.stop_reason : NULL);
	row_set(row, COL_LATENCY_MS, Float8GetDatum(item->latency_ms), false);
	row_set_text(row, COL_ERROR_CODE, ok ? NULL : unpack_sql_state(item->error.sqlerrcode));
	row_set_text(row, COL_ERROR, ok ? NULL : item->error.message);
	row_set_text(row, COL_RESPONSE_BODY, keep_bodies ? item->response_body : NULL);
	row_set_json(row, COL_ATTEMPTS_DETAIL, item->attempt_log.len > 1 ?
				 psprintf("%s]", item->attempt_log.data) : NULL);
	row_set(row, COL_COST_USD,
			item->cost_usd ? DirectFunctionCall3(numeric_in, CStringGetDatum(item->cost_usd),
												 ObjectIdGetDatum(InvalidOid), Int32GetDatum(-1)) : (Datum) 0,
			item->cost_usd == NULL);

	/* the pending row already holds these unless they were unknown then */
	row_keep(row, COL_REQUEST_BODY, JsonbPGetDatum(item->request),
			 !(keep_bodies && llm_log_bodies == LLM_LOG_BODIES_ERRORS));
	row_keep(row, COL_PROVIDER, item->has_target ? CStringGetTextDatum(item->target.provider_name) : (Datum) 0,
			 !item->has_target);
	row_keep(row, COL_UPSTREAM_MODEL, item->has_target ? CStringGetTextDatum(item->target.upstream_model) : (Datum) 0,
			 !item->has_target);
}

/* The executor state of one batch (or of one row, row by row). */
struct LogWriter
{
	Relation	rel;
	EState	   *estate;
	ResultRelInfo *rri;
	EPQState	epq;
	struct WritePlan *plan;		/* the table's write plan, for this batch */
	const AttrNumber *att;		/* our columns' numbers in the table (plan's) */
	TupleTableSlot *newslot;	/* virtual: the row to write */
	TupleTableSlot *oldslot;	/* the table's: the row as found and locked */
	Relation	pkey;			/* primary key index (on id), once needed */
	RegProcedure pkey_eq;
	bool		defaults_ready;
	ExprState **def_expr;		/* the plan's defaults, ready in this batch */
	UsageRollup *usage;			/* the batch's usage, written at close */
};

/*
 * What every batch would otherwise rebuild from the catalogs, kept for the
 * worker's life: our columns' numbers, the parsed default expressions of
 * the columns an insert leaves out, the parsed CHECK constraints.  Parsing
 * them (stringToNode of pg_attrdef/pg_constraint text, in
 * build_column_default and ExecRelCheck) was about 4 % of the worker's CPU
 * at load, in batches of one or two rows, and planning them
 * (expression_planner) 2 % more.  The planned trees are kept, as a cached
 * plan keeps them; each batch only compiles them (ExecInitExpr).
 *
 * Dropped on a relcache invalidation of the table (ALTER TABLE, a new
 * default, constraint, column or trigger) or of every relation, on a
 * pg_type change (a domain's default) and on a pg_proc change (a function
 * planning inlined was redefined); the CHECKs are also compared with
 * the relation's own text each batch.  An invalidation only marks it
 * stale: a batch in progress keeps using what it has, and the next batch
 * rebuilds it.
 */
typedef struct WritePlan
{
	Oid			relid;
	int			natts;
	AttrNumber	att[NUM_LOG_COLUMNS];
	bool		defaults_ready; /* set by the first insert */
	int			ndefaults;
	AttrNumber *def_att;
	Node	  **def_expr;
	int			ncheck;
	char	  **check_bin;		/* the constraints' text, as parsed */
	Node	  **check_expr;
} WritePlan;

static MemoryContext plan_cxt = NULL;
static WritePlan *plan = NULL;
static bool plan_stale = false;

typedef enum RowResult
{
	ROW_WRITTEN,
	ROW_GONE,					/* deleted (or, for unknown-marking, no longer pending) */
	ROW_BUSY					/* another session holds it locked */
} RowResult;

/* llm.requests, or InvalidOid when the extension is not installed. */
Oid
logwriter_relid(void)
{
	Oid			nsp = get_namespace_oid("llm", true);

	return OidIsValid(nsp) ? get_relname_relid("requests", nsp) : InvalidOid;
}

/* Our columns by name: an administrator may have added or dropped others. */
static void
map_columns(Relation rel, AttrNumber *attnums)
{
	TupleDesc	desc = RelationGetDescr(rel);
	int			c;
	int			i;

	for (c = 0; c < NUM_LOG_COLUMNS; c++)
		attnums[c] = InvalidAttrNumber;
	for (i = 0; i < desc->natts; i++)
	{
		Form_pg_attribute att = TupleDescAttr(desc, i);

		if (att->attisdropped)
			continue;
		for (c = 0; c < NUM_LOG_COLUMNS; c++)
			if (strcmp(NameStr(att->attname), log_columns[c].name) == 0 &&
				att->atttypid == log_columns[c].type)
				attnums[c] = i + 1;
	}
	for (c = 0; c < NUM_LOG_COLUMNS; c++)
		if (attnums[c] == InvalidAttrNumber)
			ereport(ERROR,
					(errcode(ERRCODE_UNDEFINED_COLUMN),
					 errmsg("llm.requests has no column \"%s\" of type %s",
							log_columns[c].name, format_type_be(log_columns[c].type))));
}

static void
plan_relcache_callback(Datum arg, Oid relid)
{
	if (plan != NULL && (relid == InvalidOid || relid == plan->relid))
		plan_stale = true;
}

static void
plan_syscache_callback(Datum arg, int cacheid, uint32 hashvalue)
{
	plan_stale = true;
}

/* Do the plan's CHECKs still say what the relation's say? */
static bool
plan_checks_match(Relation rel)
{
	TupleConstr *constr = RelationGetDescr(rel)->constr;
	int			ncheck = constr ? constr->num_check : 0;
	int			i;

	if (ncheck != plan->ncheck)
		return false;
	for (i = 0; i < ncheck; i++)
		if (strcmp(constr->check[i].ccbin, plan->check_bin[i]) != 0)
			return false;
	return true;
}

/* The write plan of rel, (re)built when stale; in a transaction, rel locked. */
static WritePlan *
get_plan(Relation rel)
{
	TupleConstr *constr = RelationGetDescr(rel)->constr;
	MemoryContext old;
	WritePlan  *p;
	int			i;

	if (plan_cxt == NULL)
	{
		plan_cxt = AllocSetContextCreate(TopMemoryContext, "llm log write plan",
										 ALLOCSET_SMALL_SIZES);
		CacheRegisterRelcacheCallback(plan_relcache_callback, (Datum) 0);
		CacheRegisterSyscacheCallback(TYPEOID, plan_syscache_callback, (Datum) 0);
		/* planning inlines SQL functions: a redefined one must be seen */
		CacheRegisterSyscacheCallback(PROCOID, plan_syscache_callback, (Datum) 0);
	}
	if (plan != NULL && !plan_stale && plan->relid == RelationGetRelid(rel) &&
		plan->natts == RelationGetDescr(rel)->natts && plan_checks_match(rel))
		return plan;

	/* no batch is using the old one: a batch takes its plan in logwriter_open() */
	plan = NULL;
	plan_stale = false;
	MemoryContextReset(plan_cxt);
	old = MemoryContextSwitchTo(plan_cxt);
	p = palloc0(sizeof(WritePlan));
	p->relid = RelationGetRelid(rel);
	p->natts = RelationGetDescr(rel)->natts;
	map_columns(rel, p->att);
	p->ncheck = constr ? constr->num_check : 0;
	p->check_bin = palloc0(sizeof(char *) * Max(p->ncheck, 1));
	p->check_expr = palloc0(sizeof(Node *) * Max(p->ncheck, 1));
	for (i = 0; i < p->ncheck; i++)
	{
		p->check_bin[i] = pstrdup(constr->check[i].ccbin);
		p->check_expr[i] = (Node *) expression_planner((Expr *) stringToNode(constr->check[i].ccbin));
	}
	MemoryContextSwitchTo(old);
	plan = p;
	return p;
}

/* Open llm.requests for one batch, as the apply worker opens a relation. */
LogWriter *
logwriter_open(Oid relid)
{
	LogWriter  *w = palloc0(sizeof(LogWriter));
	Relation	rel;
	RangeTblEntry *rte;
	MemoryContext old;

	/* waits at most lock_timeout (an administrator's LOCK TABLE, CREATE INDEX) */
	rel = table_open(relid, RowExclusiveLock);
	w->rel = rel;
	if (rel->rd_rel->relkind != RELKIND_RELATION)
		ereport(ERROR,
				(errcode(ERRCODE_WRONG_OBJECT_TYPE),
				 errmsg("llm.requests is not a plain table")));

	w->estate = CreateExecutorState();
	old = MemoryContextSwitchTo(w->estate->es_query_cxt);
	rte = makeNode(RangeTblEntry);
	rte->rtekind = RTE_RELATION;
	rte->relid = relid;
	rte->relkind = rel->rd_rel->relkind;
	rte->rellockmode = RowExclusiveLock;
	ExecInitRangeTable(w->estate, list_make1(rte));
	w->rri = makeNode(ResultRelInfo);
	InitResultRelInfo(w->rri, rel, 1, NULL, 0);
	/* where ExecGetTriggerResultRel() finds it; we close rel ourselves */
	w->estate->es_opened_result_relations = lappend(w->estate->es_opened_result_relations, w->rri);
	w->estate->es_output_cid = GetCurrentCommandId(true);
	w->estate->es_snapshot = GetActiveSnapshot();
	ExecOpenIndices(w->rri, false);
	w->plan = get_plan(rel);
	w->att = w->plan->att;
	/* as ExecRelCheck() would build them (ExecPrepareExpr), from the plan's planned trees */
	if (w->plan->ncheck > 0)
	{
		int			i;

		w->rri->ri_ConstraintExprs = palloc(sizeof(ExprState *) * w->plan->ncheck);
		for (i = 0; i < w->plan->ncheck; i++)
			w->rri->ri_ConstraintExprs[i] = ExecInitExpr((Expr *) w->plan->check_expr[i], NULL);
	}
	w->newslot = ExecInitExtraTupleSlot(w->estate, RelationGetDescr(rel), &TTSOpsVirtual);
	w->oldslot = table_slot_create(rel, &w->estate->es_tupleTable);
	EvalPlanQualInit(&w->epq, w->estate, NULL, NIL, -1);
	/* AFTER ROW triggers queue in this level and fire in writer_close() */
	AfterTriggerBeginQuery();
	w->usage = usage_rollup_create();
	MemoryContextSwitchTo(old);
	return w;
}

/* Fire the AFTER ROW triggers, release the executor state; the lock stays. */
void
logwriter_close(LogWriter *w)
{
	MemoryContext old = MemoryContextSwitchTo(w->estate->es_query_cxt);

	AfterTriggerEndQuery(w->estate);
	EvalPlanQualEnd(&w->epq);
	ExecCloseIndices(w->rri);
	ExecResetTupleTable(w->estate->es_tupleTable, false);
	MemoryContextSwitchTo(old);
	/* after the log's triggers: the rollup adds what the rows say now */
	usage_rollup_flush(w->usage);
	FreeExecutorState(w->estate);
	table_close(w->rel, NoLock);	/* the lock is held to commit */
}

/*
 * The default expressions of the columns an insert leaves out (the id's
 * identity sequence, columns an administrator added), as an INSERT would
 * evaluate them: parsed once into the plan (every pending row sets the
 * same columns), prepared once per batch.
 */
static void
prepare_defaults(LogWriter *w, const LogRow *row)
{
	WritePlan  *p = w->plan;
	int			i;

	if (!p->defaults_ready)
	{
		TupleDesc	desc = RelationGetDescr(w->rel);
		MemoryContext old = MemoryContextSwitchTo(plan_cxt);
		bool	   *given = palloc0(sizeof(bool) * desc->natts);
		int			c;

		for (c = 0; c < NUM_LOG_COLUMNS; c++)
			if (row->change[c] != CHANGE_NONE)
				given[w->att[c] - 1] = true;
		p->ndefaults = 0;		/* an earlier attempt may have failed halfway */
		p->def_att = palloc(sizeof(AttrNumber) * Max(desc->natts, 1));
		p->def_expr = palloc(sizeof(Node *) * Max(desc->natts, 1));
		for (i = 0; i < desc->natts; i++)
		{
			Form_pg_attribute att = TupleDescAttr(desc, i);
			Node	   *expr;

			if (att->attisdropped || att->attgenerated || given[i])
				continue;
			expr = build_column_default(w->rel, i + 1);
			if (expr == NULL)
				continue;
			p->def_att[p->ndefaults] = i + 1;
			p->def_expr[p->ndefaults] = (Node *) expression_planner((Expr *) expr);
			p->ndefaults++;
		}
		MemoryContextSwitchTo(old);
		p->defaults_ready = true;
	}
	w->def_expr = palloc(sizeof(ExprState *) * Max(p->ndefaults, 1));
	for (i = 0; i < p->ndefaults; i++)
		w->def_expr[i] = ExecInitExpr((Expr *) p->def_expr[i], NULL);
	w->defaults_ready = true;
}

/* Insert the item's pending row; its id is the row's. */
void
logwriter_insert(LogWriter *w, LlmWorkItem *item)
{
	TupleTableSlot *slot = w->newslot;
	int			natts = slot->tts_tupleDescriptor->natts;
	ExprContext *econtext = GetPerTupleExprContext(w->estate);
	MemoryContext old;
	LogRow		row;
	Datum		id;
	bool		isnull;
	int			i;

	old = MemoryContextSwitchTo(GetPerTupleMemoryContext(w->estate));
	pending_row(item, &row);
	if (!w->defaults_ready)
	{
		MemoryContextSwitchTo(w->estate->es_query_cxt);
		prepare_defaults(w, &row);
		MemoryContextSwitchTo(GetPerTupleMemoryContext(w->estate));
	}
	ExecClearTuple(slot);
	for (i = 0; i < natts; i++)
	{
		slot->tts_values[i] = (Datum) 0;
		slot->tts_isnull[i] = true;
	}
	for (i = 0; i < NUM_LOG_COLUMNS; i++)
		if (row.change[i] != CHANGE_NONE)
		{
			slot->tts_values[w->att[i] - 1] = row.values[i];
			slot->tts_isnull[w->att[i] - 1] = row.isnull[i];
		}
	for (i = 0; i < w->plan->ndefaults; i++)
		slot->tts_values[w->plan->def_att[i] - 1] =
			ExecEvalExpr(w->def_expr[i], econtext, &slot->tts_isnull[w->plan->def_att[i] - 1]);
	ExecStoreVirtualTuple(slot);
	MemoryContextSwitchTo(old);

	ExecSimpleRelationInsert(w->rri, w->estate, slot);
	/* a BEFORE trigger that returns NULL skips the insert: no row, no call */
	if (!ItemPointerIsValid(&slot->tts_tid))
		ereport(ERROR,
				(errcode(ERRCODE_TRIGGERED_ACTION_EXCEPTION),
				 errmsg("a trigger on llm.requests discarded the row")));
	id = slot_getattr(slot, w->att[COL_ID], &isnull);
	if (isnull)
		ereport(ERROR,
				(errcode(ERRCODE_NOT_NULL_VIOLATION),
				 errmsg("the row written to llm.requests has no id")));
	item->request_id = DatumGetInt64(id);
	item->logged = true;
	ResetPerTupleExprContext(w->estate);
}

/* The primary key, which completions find their rows through. */
static void
open_pkey(LogWriter *w)
{
	Oid			pkey_oid = RelationGetPrimaryKeyIndex(w->rel);
	Oid			op;
	int			i;

	for (i = 0; i < w->rri->ri_NumIndices; i++)
		if (RelationGetRelid(w->rri->ri_IndexRelationDescs[i]) == pkey_oid)
			w->pkey = w->rri->ri_IndexRelationDescs[i];
	if (w->pkey == NULL || w->pkey->rd_rel->relam != BTREE_AM_OID ||
		IndexRelationGetNumberOfKeyAttributes(w->pkey) != 1 ||
		w->pkey->rd_index->indkey.values[0] != w->att[COL_ID] ||
		w->pkey->rd_opcintype[0] != INT8OID)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("llm.requests has no primary key on its id column")));
	op = get_opfamily_member(w->pkey->rd_opfamily[0], INT8OID, INT8OID, BTEqualStrategyNumber);
	if (!OidIsValid(op))
		elog(ERROR, "no equality operator in the primary key of llm.requests");
	w->pkey_eq = get_opcode(op);
}

/* The version of row id that snap sees, into slot. */
static bool
find_by_id(LogWriter *w, int64 id, Snapshot snap, TupleTableSlot *slot)
{
	ScanKeyData key;
	IndexScanDesc scan;
	bool		found;

	if (w->pkey == NULL)
		open_pkey(w);
	ScanKeyInit(&key, 1, BTEqualStrategyNumber, w->pkey_eq, Int64GetDatum(id));
	key.sk_collation = w->pkey->rd_indcollation[0];
	scan = index_beginscan(w->rel, w->pkey, snap, 1, 0);
	index_rescan(scan, &key, 1, NULL, 0);
	found = index_getnext_slot(scan, ForwardScanDirection, slot);
	index_endscan(scan);
	return found;
}

static bool
slot_is_pending(LogWriter *w, TupleTableSlot *slot)
{
	bool		isnull;
	Datum		status = slot_getattr(slot, w->att[COL_STATUS], &isnull);

	return !isnull && strcmp(TextDatumGetCString(status), "pending") == 0;
}

/* Count slot's row (just moved out of 'pending') in the batch's usage. */
static void
rollup_row(LogWriter *w, TupleTableSlot *slot)
{
	UsageColumns c;

	c.status = w->att[COL_STATUS];
	c.created_at = w->att[COL_CREATED_AT];
	c.role_name = w->att[COL_ROLE_NAME];
	c.alias = w->att[COL_ALIAS];
	c.provider = w->att[COL_PROVIDER];
	c.upstream_model = w->att[COL_UPSTREAM_MODEL];
	c.error_code = w->att[COL_ERROR_CODE];
	c.input_tokens = w->att[COL_INPUT_TOKENS];
	c.output_tokens = w->att[COL_OUTPUT_TOKENS];
	c.cache_read_tokens = w->att[COL_CACHE_READ_TOKENS];
	c.cache_write_tokens = w->att[COL_CACHE_WRITE_TOKENS];
	c.cost_usd = w->att[COL_COST_USD];
	c.latency_ms = w->att[COL_LATENCY_MS];
	usage_rollup_add_slot(w->usage, slot, &c);
}

/*
 * Apply row's changes to row id: find it through the primary key, lock it
 * without waiting, update it.  only_pending: leave it unless it is still
 * pending once locked.
 */
static RowResult
update_row(LogWriter *w, int64 id, const LogRow *row, bool only_pending)
{
	TupleTableSlot *old = w->oldslot;
	TupleTableSlot *new = w->newslot;
	int			natts = new->tts_tupleDescriptor->natts;
	bool		was_pending;
	int			i;

	for (;;)
	{
		Snapshot	snap = RegisterSnapshot(GetLatestSnapshot());
		TM_FailureData tmfd;
		TM_Result	res = TM_Ok;
		bool		found;

		CHECK_FOR_INTERRUPTS();
		found = find_by_id(w, id, snap, old);
		if (found)
			res = table_tuple_lock(w->rel, &old->tts_tid, snap, old,
								   GetCurrentCommandId(false), LockTupleNoKeyExclusive,
								   LockWaitSkip, 0, &tmfd);
		UnregisterSnapshot(snap);
		if (!found)
			return ROW_GONE;	/* deleted by an administrator: nothing to do */
		if (res == TM_Ok)
			break;
		ExecClearTuple(old);
		if (res == TM_WouldBlock)
			return ROW_BUSY;
		if (res != TM_Updated && res != TM_Deleted)
			elog(ERROR, "unexpected result %d locking a row of llm.requests", (int) res);
		/* changed since our snapshot: look it up again */
	}

	was_pending = slot_is_pending(w, old);
	if (only_pending && !was_pending)
	{
		ExecClearTuple(old);
		return ROW_GONE;
	}

	/* the locked version, with our changes over it */
	slot_getallattrs(old);
	ExecClearTuple(new);
	memcpy(new->tts_values, old->tts_values, sizeof(Datum) * natts);
	memcpy(new->tts_isnull, old->tts_isnull, sizeof(bool) * natts);
	for (i = 0; i < NUM_LOG_COLUMNS; i++)
	{
		if (row->change[i] == CHANGE_SET ||
			(row->change[i] == CHANGE_KEEP && !row->isnull[i]))
		{
			new->tts_values[w->att[i] - 1] = row->values[i];
			new->tts_isnull[w->att[i] - 1] = row->isnull[i];
		}
	}
	ExecStoreVirtualTuple(new);
	EvalPlanQualSetSlot(&w->epq, new);
	ExecSimpleRelationUpdate(w->rri, w->estate, &w->epq, old, new);
	/*
	 * Usage counts the row once: in the transaction that moves it out of
	 * 'pending' (with the row locked), if the update was done (a BEFORE
	 * trigger may skip it), with the figures it has then.
	 */
	if (was_pending && ItemPointerIsValid(&new->tts_tid))
	{
		MemoryContext cxt = MemoryContextSwitchTo(GetPerTupleMemoryContext(w->estate));

		rollup_row(w, new);
		MemoryContextSwitchTo(cxt);
	}
	ExecClearTuple(old);
	ExecClearTuple(new);
	return ROW_WRITTEN;
}

/*
 * An index that finds every pending row: a valid btree on status whose
 * predicate, if any, status = 'pending' implies (the extension's partial
 * index, or one an administrator made).
 */
static Relation
pending_index(LogWriter *w)
{
	Expr	   *clause;
	int			i;

	clause = make_opclause(TextEqualOperator, BOOLOID, false,
						   (Expr *) makeVar(1, w->att[COL_STATUS], TEXTOID, -1, DEFAULT_COLLATION_OID, 0),
						   (Expr *) makeConst(TEXTOID, -1, DEFAULT_COLLATION_OID, -1,
											  CStringGetTextDatum("pending"), false, false),
						   InvalidOid, DEFAULT_COLLATION_OID);
	for (i = 0; i < w->rri->ri_NumIndices; i++)
	{
		Relation	idx = w->rri->ri_IndexRelationDescs[i];
		List	   *pred;

		if (idx->rd_rel->relam != BTREE_AM_OID || !idx->rd_index->indisvalid ||
			idx->rd_index->indkey.values[0] != w->att[COL_STATUS] ||
			idx->rd_opcintype[0] != TEXTOID)
			continue;
		pred = RelationGetIndexPredicate(idx);
		if (pred == NIL || predicate_implied_by(pred, list_make1(clause), false))
			return idx;
	}
	return NULL;
}

static void
add_id(LogWriter *w, TupleTableSlot *slot, int64 **ids, int *n, int *size)
{
	bool		isnull;
	Datum		id = slot_getattr(slot, w->att[COL_ID], &isnull);

	if (isnull)
		return;
	if (*n == *size)
	{
		*size *= 2;
		*ids = repalloc(*ids, sizeof(int64) * *size);
	}
	(*ids)[(*n)++] = DatumGetInt64(id);
}

/* The ids of the pending rows (through pending_index(), else a table scan). */
static int64 *
pending_ids(LogWriter *w, int *n)
{
	Relation	idx = pending_index(w);
	Snapshot	snap = RegisterSnapshot(GetLatestSnapshot());
	TupleTableSlot *slot = w->oldslot;
	int			size = 64;
	int64	   *ids = palloc(sizeof(int64) * size);

	*n = 0;

	if (idx != NULL)
	{
		ScanKeyData key;
		IndexScanDesc scan;
		Oid			op = get_opfamily_member(idx->rd_opfamily[0], TEXTOID, TEXTOID,
											 BTEqualStrategyNumber);

		if (!OidIsValid(op))
			elog(ERROR, "no text equality operator in index \"%s\"", RelationGetRelationName(idx));
		ScanKeyInit(&key, 1, BTEqualStrategyNumber, get_opcode(op), CStringGetTextDatum("pending"));
		key.sk_collation = idx->rd_indcollation[0];
		scan = index_beginscan(w->rel, idx, snap, 1, 0);
		index_rescan(scan, &key, 1, NULL, 0);
		while (index_getnext_slot(scan, ForwardScanDirection, slot))
			add_id(w, slot, &ids, n, &size);
		index_endscan(scan);
	}
	else
	{
		TableScanDesc scan = table_beginscan(w->rel, snap, 0, NULL);

		while (table_scan_getnextslot(scan, ForwardScanDirection, slot))
			if (slot_is_pending(w, slot))
				add_id(w, slot, &ids, n, &size);
		table_endscan(scan);
	}
	ExecClearTuple(slot);
	UnregisterSnapshot(snap);
	return ids;
}

/*
 * Rows a previous worker left pending may or may not have reached the
 * provider: say so rather than leave them pending forever.  Runs before
 * this worker writes its first pending row, so every pending row is a
 * previous worker's.
 */
void
logwriter_mark_unknown(LogWriter *w)
{
	int			nids;
	int64	   *ids = pending_ids(w, &nids);
	LogRow		row;
	int			i;
	int			marked = 0;
	int			busy = 0;

	row_init(&row);
	row_set_text(&row, COL_STATUS, "unknown");
	row_set(&row, COL_FINISHED_AT, TimestampTzGetDatum(GetCurrentTimestamp()), false);
	row_set_text(&row, COL_ERROR, "the gateway worker stopped before the call finished; "
				 "the provider may or may not have received it");
	for (i = 0; i < nids; i++)
	{
		RowResult	r = update_row(w, ids[i], &row, true);

		if (r == ROW_WRITTEN)
			marked++;
		else if (r == ROW_BUSY)
			busy++;
	}
	if (marked > 0)
		ereport(LOG,
				(errmsg("llm_gateway: marked %d calls left pending by the previous worker as unknown",
						marked)));
	if (busy > 0)
		ereport(LOG,
				(errmsg("llm_gateway: %d rows left pending by the previous worker are locked by another session and stay pending",
						busy)));
}

/* Complete the item's row, if it has one; false: another session holds it locked. */
bool
logwriter_complete(LogWriter *w, LlmWorkItem *item)
{
	LogRow		row;
	MemoryContext old;
	RowResult	r;

	if (!item->logged)
		return true;
	old = MemoryContextSwitchTo(GetPerTupleMemoryContext(w->estate));
	complete_row(item, &row);
	MemoryContextSwitchTo(old);
	r = update_row(w, item->request_id, &row, false);
	ResetPerTupleExprContext(w->estate);
	return r != ROW_BUSY;
}

/*-------------------------------------------------------------------------
 *
 * request_log.c
 *	  llm.requests writes, batched, in the worker's own transactions.
 *
 * runs in: worker.
 *
 * Each turn of the worker loop opens at most two short transactions: one
 * that inserts the "pending" rows of every call taken in that turn (and
 * commits before any of them reaches a provider), one that completes the
 * rows of every call that finished.  Batching keeps logging from
 * throttling throughput; being the worker's own transactions, no caller's
 * ROLLBACK can remove a row.
 *
 * A row is first built as datums over the table's columns (LogRow); it is
 * then written one of two ways:
 *
 *	- directly: heap insert or update plus the table's index entries, with
 *	  no parse, plan or executor start-up.  This is the path of every call,
 *	  taken while llm.requests is the plain table the extension created
 *	  (same columns, no triggers, rules, extra CHECK constraints or
 *	  partitions), so nothing the executor would do is skipped: the values
 *	  are the worker's own and satisfy the table's constraints by
 *	  construction, and indexes an administrator added are maintained.
 *	- through SPI, when the table has been changed in any of those ways:
 *	  the executor then runs the triggers, defaults and constraints.
 *
 * A batch that fails (the extension dropped under us) is rolled back and
 * reported by the caller; it never takes the worker down.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/genam.h"
#include "access/htup_details.h"
#include "access/stratnum.h"
#include "access/table.h"
#include "access/tableam.h"
#include "access/xact.h"
#include "catalog/dependency.h"
#include "catalog/namespace.h"
#include "catalog/pg_class.h"
#include "catalog/pg_type.h"
#include "commands/dbcommands.h"
#include "commands/sequence.h"
#include "executor/executor.h"
#include "executor/spi.h"
#include "lib/stringinfo.h"
#include "miscadmin.h"
#include "nodes/makefuncs.h"
#include "pgstat.h"
#include "utils/builtins.h"
#include "utils/fmgroids.h"
#include "utils/jsonb.h"
#include "utils/lsyscache.h"
#include "utils/rel.h"
#include "utils/relcache.h"
#include "utils/snapmgr.h"
#include "utils/timestamp.h"

#include "worker/attempt.h"
#include "llm_gateway.h"
#include "worker/request_log.h"
#include "worker/worker_session.h"

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

/* The direct path's handles, valid inside one batch. */
typedef struct LogTable
{
	Relation	rel;
	EState	   *estate;
	ResultRelInfo *rri;
	Relation	pkey;			/* one of rri's index relations */
	Oid			seqid;			/* the identity sequence of id */
	TupleTableSlot *oldslot;
	TupleTableSlot *newslot;
} LogTable;

static LogTable direct;
static bool direct_open = false;
static Oid	cached_relid = InvalidOid;	/* llm.requests ... */
static Oid	cached_seqid = InvalidOid;	/* ... and the sequence of its id */
static bool in_batch = false;
static bool spi_open = false;	/* SPI connected in this batch */
static SPIPlanPtr insert_plan = NULL;
static SPIPlanPtr complete_plan = NULL;

/* llm.requests, or InvalidOid when the extension is not installed. */
static Oid
requests_relid(void)
{
	Oid			nsp = get_namespace_oid("llm", true);

	return OidIsValid(nsp) ? get_relname_relid("requests", nsp) : InvalidOid;
}

/* Why the log cannot be written, or NULL if it can (inside a batch). */
char *
reqlog_unavailable_reason(void)
{
	if (!OidIsValid(requests_relid()))
		return psprintf("extension llm_gateway is not installed in database \"%s\"",
						get_database_name(MyDatabaseId));
	return NULL;
}

/* The SPI path and the start-up update connect on first use in a batch. */
static void
need_spi(void)
{
	if (spi_open)
		return;
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	spi_open = true;
}

/*
 * Is llm.requests still the table the extension created, so that writing
 * heap and index entries directly is what the executor would do?
 */
static bool
table_is_plain(Relation rel)
{
	TupleDesc	desc = RelationGetDescr(rel);
	int			i;

	if (rel->rd_rel->relkind != RELKIND_RELATION || rel->rd_rel->relispartition ||
		rel->rd_rel->relhastriggers || rel->rd_rel->relhasrules || rel->trigdesc != NULL ||
		desc->natts != NUM_LOG_COLUMNS)
		return false;
	/* our NOT NULLs and the one status CHECK, nothing an administrator added */
	if (desc->constr && (desc->constr->num_check > 1 || desc->constr->has_generated_stored))
		return false;
	for (i = 0; i < NUM_LOG_COLUMNS; i++)
	{
		Form_pg_attribute att = TupleDescAttr(desc, i);

		if (att->attisdropped || att->atttypid != log_columns[i].type ||
			strcmp(NameStr(att->attname), log_columns[i].name) != 0)
			return false;
	}
	return true;
}

/* Open llm.requests for direct writes; false leaves the SPI path to it. */
static bool
open_direct(Oid relid)
{
	Relation	rel = table_open(relid, RowExclusiveLock);
	Oid			pkey_oid;
	RangeTblEntry *rte;
	int			i;

	pkey_oid = RelationGetPrimaryKeyIndex(rel);
	if (!table_is_plain(rel) || !OidIsValid(pkey_oid))
	{
		table_close(rel, NoLock);
		return false;
	}

	memset(&direct, 0, sizeof(direct));
	direct.rel = rel;
	/* a dropped and re-created table has a new OID; an abort forgets both */
	if (relid != cached_relid)
	{
		cached_seqid = getIdentitySequence(relid, COL_ID + 1, false);
		cached_relid = relid;
	}
	direct.seqid = cached_seqid;
	direct.estate = CreateExecutorState();
	rte = makeNode(RangeTblEntry);
	rte->rtekind = RTE_RELATION;
	rte->relid = relid;
	rte->relkind = rel->rd_rel->relkind;
	rte->rellockmode = RowExclusiveLock;
	ExecInitRangeTable(direct.estate, list_make1(rte));
	direct.rri = makeNode(ResultRelInfo);
	InitResultRelInfo(direct.rri, rel, 1, NULL, 0);
	ExecOpenIndices(direct.rri, false);
	for (i = 0; i < direct.rri->ri_NumIndices; i++)
		if (RelationGetRelid(direct.rri->ri_IndexRelationDescs[i]) == pkey_oid)
			direct.pkey = direct.rri->ri_IndexRelationDescs[i];
	if (direct.pkey == NULL)
		elog(ERROR, "primary key index of llm.requests is not open");
	direct.estate->es_output_cid = GetCurrentCommandId(true);
	direct.oldslot = table_slot_create(rel, NULL);
	direct.newslot = MakeSingleTupleTableSlot(RelationGetDescr(rel), &TTSOpsVirtual);
	direct_open = true;
	return true;
}

static void
close_direct(void)
{
	if (!direct_open)
		return;
	ExecDropSingleTupleTableSlot(direct.oldslot);
	ExecDropSingleTupleTableSlot(direct.newslot);
	ExecCloseIndices(direct.rri);
	FreeExecutorState(direct.estate);
	table_close(direct.rel, NoLock);	/* the lock is held to commit */
	direct_open = false;
}

bool
reqlog_open_batch(void)
{
	Oid			relid;

	SetCurrentStatementStartTimestamp();
	StartTransactionCommand();
	PushActiveSnapshot(GetTransactionSnapshot());
	in_batch = true;
	relid = requests_relid();
	if (!OidIsValid(relid) || !worker_session_enter())
		return false;
	(void) open_direct(relid);
	return true;
}

void
reqlog_close_batch(void)
{
	close_direct();
	if (spi_open)
		SPI_finish();
	spi_open = false;
	PopActiveSnapshot();
	CommitTransactionCommand();
	in_batch = false;
	pgstat_report_stat(false);
}

/* After an ERROR inside a batch: roll back; the caller flushed the error. */
void
reqlog_abort_batch(void)
{
	/* the abort releases the relation, its indexes and the executor memory */
	direct_open = false;
	spi_open = false;			/* the abort cleans SPI up too */
	AbortCurrentTransaction();
	in_batch = false;
	/* the plans may refer to dropped objects; prepare them again next time */
	insert_plan = NULL;
	complete_plan = NULL;
	cached_relid = InvalidOid;
}

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

/* ---------------------------------------------------------------------
 * The direct path
 * ---------------------------------------------------------------------
 */

static int64
direct_insert(LogRow *row)
{
	TupleTableSlot *slot = direct.newslot;
	int64		id = nextval_internal(direct.seqid, false);

	row_set_int8(row, COL_ID, id, true);
	ExecClearTuple(slot);
	memcpy(slot->tts_values, row->values, sizeof(row->values));
	memcpy(slot->tts_isnull, row->isnull, sizeof(row->isnull));
	ExecStoreVirtualTuple(slot);

	table_tuple_insert(direct.rel, slot, direct.estate->es_output_cid, 0, NULL);
	(void) ExecInsertIndexTuples(direct.rri, slot, direct.estate, false, false, NULL, NIL);
	ResetPerTupleExprContext(direct.estate);
	return id;
}

static void
direct_update(int64 id, LogRow *row)
{
	ScanKeyData key;
	IndexScanDesc scan;
	TupleTableSlot *old = direct.oldslot;
	TupleTableSlot *new = direct.newslot;
	bool		found;
	bool		update_indexes;
	int			i;

	ScanKeyInit(&key, 1, BTEqualStrategyNumber, F_INT8EQ, Int64GetDatum(id));
	scan = index_beginscan(direct.rel, direct.pkey, GetActiveSnapshot(), 1, 0);
	index_rescan(scan, &key, 1, NULL, 0);
	found = index_getnext_slot(scan, ForwardScanDirection, old);
	index_endscan(scan);
	if (!found)
		return;					/* deleted by an administrator: nothing to complete */

	slot_getallattrs(old);
	ExecClearTuple(new);
	for (i = 0; i < NUM_LOG_COLUMNS; i++)
	{
		bool		take = row->change[i] == CHANGE_SET ||
			(row->change[i] == CHANGE_KEEP && !row->isnull[i]);

		new->tts_values[i] = take ? row->values[i] : old->tts_values[i];
		new->tts_isnull[i] = take ? row->isnull[i] : old->tts_isnull[i];
	}
	ExecStoreVirtualTuple(new);

	simple_table_tuple_update(direct.rel, &old->tts_tid, new, GetActiveSnapshot(), &update_indexes);
	if (update_indexes)
		(void) ExecInsertIndexTuples(direct.rri, new, direct.estate, true, false, NULL, NIL);
	ExecClearTuple(old);
	ResetPerTupleExprContext(direct.estate);
}

/* ---------------------------------------------------------------------
 * The SPI path, for a table that is no longer the one we created
 * ---------------------------------------------------------------------
 */

/*
 * Prepare INSERT (RETURNING id) or UPDATE ... WHERE id = $1 over the
 * columns the row changes; the statement's parameters are those columns
 * in table order.
 */
static SPIPlanPtr
prepare_for(const LogRow *row, bool insert)
{
	StringInfoData sql;
	StringInfoData cols;
	Oid			types[NUM_LOG_COLUMNS + 1];
	int			nargs = 0;
	int			i;
	SPIPlanPtr	plan;

	need_spi();
	initStringInfo(&sql);
	initStringInfo(&cols);
	if (!insert)
		types[nargs++] = INT8OID;	/* $1: the id */
	for (i = 0; i < NUM_LOG_COLUMNS; i++)
	{
		const char *name = log_columns[i].name;

		if (row->change[i] == CHANGE_NONE)
			continue;
		types[nargs++] = log_columns[i].type;
		if (cols.len > 0)
			appendStringInfoString(&cols, ", ");
		if (insert)
			appendStringInfoString(&cols, name);
		else if (row->change[i] == CHANGE_KEEP)
			appendStringInfo(&cols, "%s = coalesce($%d, %s)", name, nargs, name);
		else
			appendStringInfo(&cols, "%s = $%d", name, nargs);
	}
	if (insert)
	{
		appendStringInfo(&sql, "INSERT INTO llm.requests (%s) VALUES (", cols.data);
		for (i = 1; i <= nargs; i++)
			appendStringInfo(&sql, "%s$%d", i > 1 ? ", " : "", i);
		appendStringInfoString(&sql, ") RETURNING id");
	}
	else
		appendStringInfo(&sql, "UPDATE llm.requests SET %s WHERE id = $1", cols.data);

	plan = SPI_prepare(sql.data, nargs, types);
	if (plan == NULL)
		elog(ERROR, "could not prepare llm.requests statement: %s",
			 SPI_result_code_string(SPI_result));
	SPI_keepplan(plan);
	return plan;
}

/* The row's changed columns as the statement's parameters, after first. */
static int
spi_args(const LogRow *row, Datum *values, char *nulls, int first)
{
	int			n = first;
	int			i;

	for (i = 0; i < NUM_LOG_COLUMNS; i++)
	{
		if (row->change[i] == CHANGE_NONE)
			continue;
		values[n] = row->values[i];
		nulls[n] = row->isnull[i] ? 'n' : ' ';
		n++;
	}
	return n;
}

static int64
spi_insert(const LogRow *row)
{
	Datum		values[NUM_LOG_COLUMNS];
	char		nulls[NUM_LOG_COLUMNS];
	bool		isnull;
	int			ret;

	need_spi();
	if (insert_plan == NULL)
		insert_plan = prepare_for(row, true);
	(void) spi_args(row, values, nulls, 0);
	ret = SPI_execute_plan(insert_plan, values, nulls, false, 1);
	if (ret != SPI_OK_INSERT_RETURNING || SPI_processed != 1)
		elog(ERROR, "could not insert into llm.requests: %s", SPI_result_code_string(ret));
	return DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull));
}

static void
spi_update(int64 id, const LogRow *row)
{
	Datum		values[NUM_LOG_COLUMNS + 1];
	char		nulls[NUM_LOG_COLUMNS + 1];
	int			ret;

	need_spi();
	if (complete_plan == NULL)
		complete_plan = prepare_for(row, false);
	values[0] = Int64GetDatum(id);
	nulls[0] = ' ';
	(void) spi_args(row, values, nulls, 1);
	ret = SPI_execute_plan(complete_plan, values, nulls, false, 0);
	if (ret != SPI_OK_UPDATE)
		elog(ERROR, "could not update llm.requests: %s", SPI_result_code_string(ret));
}

/* ---------------------------------------------------------------------
 * Entry points
 * ---------------------------------------------------------------------
 */

void
reqlog_insert_pending(LlmWorkItem *item)
{
	LogRow		row;

	Assert(in_batch);
	pending_row(item, &row);
	item->request_id = direct_open ? direct_insert(&row) : spi_insert(&row);
	item->logged = true;
}

void
reqlog_complete(LlmWorkItem *item)
{
	LogRow		row;

	Assert(in_batch);
	if (!item->logged)
		return;
	complete_row(item, &row);
	if (direct_open)
		direct_update(item->request_id, &row);
	else
		spi_update(item->request_id, &row);
}

/*
 * At worker start: rows a previous worker left pending may or may not have
 * reached the provider.  Say so rather than leave them pending forever.
 */
void
reqlog_mark_unknown(void)
{
	int			ret;

	need_spi();
	ret = SPI_execute("UPDATE llm.requests SET status = 'unknown', finished_at = now(), "
					  "       error = 'the gateway worker stopped before the call finished; "
					  "the provider may or may not have received it' "
					  " WHERE status = 'pending'", false, 0);
	if (ret != SPI_OK_UPDATE)
		elog(ERROR, "could not update llm.requests: %s", SPI_result_code_string(ret));
	if (SPI_processed > 0)
		ereport(LOG,
				(errmsg("llm_gateway: marked %llu calls left pending by the previous worker as unknown",
						(unsigned long long) SPI_processed)));
}

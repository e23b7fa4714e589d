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
 * The plans are prepared once and kept; a plan whose table was dropped
 * and re-created is re-planned by the plan cache.  A batch that fails
 * (the extension dropped under us) is rolled back and reported by the
 * caller; it never takes the worker down.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/xact.h"
#include "catalog/namespace.h"
#include "catalog/pg_type.h"
#include "commands/dbcommands.h"
#include "executor/spi.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "utils/builtins.h"
#include "utils/jsonb.h"
#include "utils/lsyscache.h"
#include "utils/snapmgr.h"
#include "utils/timestamp.h"

#include "attempt.h"
#include "llm_gateway.h"
#include "request_log.h"

static SPIPlanPtr insert_plan = NULL;
static SPIPlanPtr complete_plan = NULL;
static bool in_batch = false;

static const char *insert_sql =
"INSERT INTO llm.requests (status, alias, provider, upstream_model, role_name, tags, "
"                          request_body, created_at) "
"VALUES ('pending', $1, $2, $3, $4, $5::jsonb, $6, $7) RETURNING id";

static const char *complete_sql =
"UPDATE llm.requests SET status = $2, finished_at = $3, attempts = $4, http_status = $5, "
"       input_tokens = $6, output_tokens = $7, cache_read_tokens = $8, cache_write_tokens = $9, "
"       stop_reason = $10, latency_ms = $11, error_code = $12, error = $13, "
"       response_body = $14, request_body = coalesce(request_body, $15), "
"       provider = coalesce($16, provider), upstream_model = coalesce($17, upstream_model), "
"       attempts_detail = $18::jsonb, cost_usd = $19::numeric "
" WHERE id = $1";

/* Why the log cannot be written, or NULL if it can (inside a batch). */
char *
reqlog_unavailable_reason(void)
{
	Oid			nsp = get_namespace_oid("llm", true);

	if (!OidIsValid(nsp) || !OidIsValid(get_relname_relid("requests", nsp)))
		return psprintf("extension llm_gateway is not installed in database \"%s\"",
						get_database_name(MyDatabaseId));
	return NULL;
}

bool
reqlog_open_batch(void)
{
	SetCurrentStatementStartTimestamp();
	StartTransactionCommand();
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	PushActiveSnapshot(GetTransactionSnapshot());
	in_batch = true;
	return reqlog_unavailable_reason() == NULL;
}

void
reqlog_close_batch(void)
{
	SPI_finish();
	PopActiveSnapshot();
	CommitTransactionCommand();
	in_batch = false;
	pgstat_report_stat(false);
}

/* After an ERROR inside a batch: roll back; the caller flushed the error. */
void
reqlog_abort_batch(void)
{
	AbortCurrentTransaction();
	in_batch = false;
	/* the plans may refer to dropped objects; prepare them again next time */
	insert_plan = NULL;
	complete_plan = NULL;
}

static SPIPlanPtr
prepare(const char *sql, int nargs, Oid *types)
{
	SPIPlanPtr	plan = SPI_prepare(sql, nargs, types);

	if (plan == NULL)
		elog(ERROR, "could not prepare llm.requests statement: %s",
			 SPI_result_code_string(SPI_result));
	SPI_keepplan(plan);
	return plan;
}

static Datum
text_datum(const char *s, char *nulls, int i)
{
	if (s == NULL)
	{
		nulls[i] = 'n';
		return (Datum) 0;
	}
	nulls[i] = ' ';
	return CStringGetTextDatum(s);
}

void
reqlog_insert_pending(LlmWorkItem *item)
{
	Datum		values[7];
	char		nulls[7];
	bool		isnull;
	int			ret;

	if (insert_plan == NULL)
	{
		Oid			types[7] = {TEXTOID, TEXTOID, TEXTOID, TEXTOID, TEXTOID, JSONBOID, TIMESTAMPTZOID};

		insert_plan = prepare(insert_sql, 7, types);
	}
	values[0] = text_datum(item->alias, nulls, 0);
	values[1] = text_datum(item->has_target ? item->target.provider_name : NULL, nulls, 1);
	values[2] = text_datum(item->has_target ? item->target.upstream_model : NULL, nulls, 2);
	values[3] = text_datum(item->role, nulls, 3);
	values[4] = text_datum(item->tags, nulls, 4);
	if (llm_log_bodies == LLM_LOG_BODIES_ALL)
	{
		values[5] = JsonbPGetDatum(item->request);
		nulls[5] = ' ';
	}
	else
	{
		values[5] = (Datum) 0;
		nulls[5] = 'n';
	}
	values[6] = TimestampTzGetDatum(item->submitted_at);
	nulls[6] = ' ';

	ret = SPI_execute_plan(insert_plan, values, nulls, false, 1);
	if (ret != SPI_OK_INSERT_RETURNING || SPI_processed != 1)
		elog(ERROR, "could not insert into llm.requests: %s", SPI_result_code_string(ret));
	item->request_id = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0],
												   SPI_tuptable->tupdesc, 1, &isnull));
	item->logged = true;
}

static Datum
int8_datum(int64 v, bool present, char *nulls, int i)
{
	nulls[i] = present ? ' ' : 'n';
	return Int64GetDatum(v);
}

void
reqlog_complete(LlmWorkItem *item)
{
	Datum		values[19];
	char		nulls[19];
	bool		keep_bodies;
	int			ret;

	if (!item->logged)
		return;
	if (complete_plan == NULL)
	{
		Oid			types[19] = {INT8OID, TEXTOID, TIMESTAMPTZOID, INT4OID, INT4OID,
			INT8OID, INT8OID, INT8OID, INT8OID, TEXTOID, FLOAT8OID, TEXTOID, TEXTOID,
		TEXTOID, JSONBOID, TEXTOID, TEXTOID, TEXTOID, TEXTOID};

		complete_plan = prepare(complete_sql, 19, types);
	}
	keep_bodies = llm_log_bodies == LLM_LOG_BODIES_ALL ||
		(llm_log_bodies == LLM_LOG_BODIES_ERRORS && !item->ok);

	values[0] = Int64GetDatum(item->request_id);
	nulls[0] = ' ';
	values[1] = text_datum(item->status, nulls, 1);
	values[2] = TimestampTzGetDatum(GetCurrentTimestamp());
	nulls[2] = ' ';
	values[3] = Int32GetDatum(item->attempts);
	nulls[3] = ' ';
	values[4] = Int32GetDatum((int32) item->http_status);
	nulls[4] = item->http_status > 0 ? ' ' : 'n';
	values[5] = int8_datum(item->answer.input_tokens, item->ok, nulls, 5);
	values[6] = int8_datum(item->answer.output_tokens, item->ok, nulls, 6);
	values[7] = int8_datum(item->answer.cache_read_input_tokens, item->ok, nulls, 7);
	values[8] = int8_datum(item->answer.cache_creation_input_tokens, item->ok, nulls, 8);
	values[9] = text_datum(item->ok ? item->answer.stop_reason : NULL, nulls, 9);
	values[10] = Float8GetDatum(item->latency_ms);
	nulls[10] = ' ';
	values[11] = text_datum(item->ok ? NULL : unpack_sql_state(item->error.sqlerrcode), nulls, 11);
	values[12] = text_datum(item->ok ? NULL : item->error.message, nulls, 12);
	values[13] = text_datum(keep_bodies ? item->response_body : NULL, nulls, 13);
	if (keep_bodies && llm_log_bodies == LLM_LOG_BODIES_ERRORS)
	{
		values[14] = JsonbPGetDatum(item->request);
		nulls[14] = ' ';
	}
	else
	{
		values[14] = (Datum) 0;
		nulls[14] = 'n';
	}
	values[15] = text_datum(item->has_target ? item->target.provider_name : NULL, nulls, 15);
	values[16] = text_datum(item->has_target ? item->target.upstream_model : NULL, nulls, 16);
	values[17] = text_datum(item->attempt_log.len > 1 ?
							psprintf("%s]", item->attempt_log.data) : NULL, nulls, 17);
	values[18] = text_datum(item->cost_usd, nulls, 18);

	ret = SPI_execute_plan(complete_plan, values, nulls, false, 0);
	if (ret != SPI_OK_UPDATE)
		elog(ERROR, "could not update llm.requests: %s", SPI_result_code_string(ret));
}

/*
 * At worker start: rows a previous worker left pending may or may not have
 * reached the provider.  Say so rather than leave them pending forever.
 */
void
reqlog_mark_unknown(void)
{
	int			ret;

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

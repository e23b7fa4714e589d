/*-------------------------------------------------------------------------
 *
 * retention.c
 *	  llm.log_retention: the worker deletes the rows of llm.requests older
 *	  than that, a small batch at a time, off the call path.
 *
 * runs in: worker (retention_turn, retention_wait_ms); the GUC is defined
 * in every process.
 *
 * A batch is one short transaction at the end of a worker turn, after that
 * turn's calls were sent and their rows written: at most
 * RETENTION_BATCH_ROWS rows, oldest first through the created_at index,
 * never a 'pending' row (its call may still be running, or its fate is
 * still to be recorded as unknown), never a row another session holds
 * (SKIP LOCKED).  A table lock held elsewhere (LOCK TABLE, an index build)
 * makes the batch give up after RETENTION_LOCK_TIMEOUT rather than stall
 * every call; any failure skips the batch and tries again later, it never
 * fails a call or the worker.  Small batches at a steady pace let
 * autovacuum reclaim the space as it goes: no bloat spike, no long lock.
 *
 * Pace: while a backlog remains, the next batch follows after
 * RETENTION_BACKLOG_IDLE_MS when no call is in flight and
 * RETENTION_BACKLOG_BUSY_MS otherwise (so at least ~86 million rows a day
 * under load); once caught up, the log is looked at again every
 * RETENTION_CAUGHT_UP_MS.  Changing the setting (a reload) starts a batch
 * at the next turn.
 *
 * The batch runs as llm_gateway_worker (worker_session_enter), through SPI
 * with schema-qualified names and the worker's fixed search_path; the
 * table's row-level security lets that role see every row (policy
 * worker_all), it has no BYPASSRLS.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/xact.h"
#include "catalog/namespace.h"
#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "utils/builtins.h"
#include "utils/datetime.h"
#include "utils/guc.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/snapmgr.h"
#include "utils/timeout.h"
#include "utils/timestamp.h"

#include "worker/retention.h"
#include "worker/worker_session.h"

#define RETENTION_BATCH_ROWS		1000
#define RETENTION_LOCK_TIMEOUT		"50ms"	/* the worker's calls wait meanwhile */
#define RETENTION_STATEMENT_TIMEOUT_MS	5000
#define RETENTION_BACKLOG_IDLE_MS	50
#define RETENTION_BACKLOG_BUSY_MS	1000
#define RETENTION_CAUGHT_UP_MS		60000
#define RETENTION_FAILED_MS			10000

/* Oldest first, pending rows and rows someone else holds left alone. */
#define RETENTION_SQL \
	"DELETE FROM llm.requests WHERE id IN (" \
	" SELECT id FROM llm.requests" \
	"  WHERE created_at < $1 AND status <> 'pending'" \
	"  ORDER BY created_at LIMIT $2" \
	"  FOR UPDATE SKIP LOCKED)"

/* The parsed setting (the GUC's extra). */
typedef struct RetentionSetting
{
	bool		set;			/* false: keep every row */
	Interval	keep;			/* > 0 */
} RetentionSetting;

static char *llm_log_retention = NULL;
static const RetentionSetting *retention = NULL;
static TimestampTz next_run = 0;	/* 0: at the next turn */
static bool failing = false;	/* the last batch failed (logged once) */

/*
 * An interval as interval_in reads it, without throwing: check hooks run
 * in the postmaster too, where an ERROR would be fatal.
 */
static bool
check_log_retention(char **newval, void **extra, GucSource source)
{
	RetentionSetting *s = malloc(sizeof(RetentionSetting));	/* GUC frees it */

	if (s == NULL)
		return false;
	memset(s, 0, sizeof(*s));
	if (*newval != NULL && (*newval)[0] != '\0')
	{
		char		workbuf[256];
		char	   *field[MAXDATEFIELDS];
		int			ftype[MAXDATEFIELDS];
		int			nf;
		int			dtype = 0;
		int			dterr;
		struct pg_itm_in itm;
		Interval	zero;

		memset(&itm, 0, sizeof(itm));
		dterr = ParseDateTime(*newval, workbuf, sizeof(workbuf), field, ftype,
							  MAXDATEFIELDS, &nf);
		if (dterr == 0)
			dterr = DecodeInterval(field, ftype, nf, INTERVAL_FULL_RANGE, &dtype, &itm);
		if (dterr == DTERR_BAD_FORMAT)
		{
			memset(&itm, 0, sizeof(itm));
			dterr = DecodeISO8601Interval(*newval, &dtype, &itm);
		}
		if (dterr != 0 || dtype != DTK_DELTA || itmin2interval(&itm, &s->keep) != 0)
		{
			GUC_check_errdetail("\"%s\" is not an interval, such as '30 days'.", *newval);
			free(s);
			return false;
		}
		memset(&zero, 0, sizeof(zero));
		if (!DatumGetBool(DirectFunctionCall2(interval_gt, IntervalPGetDatum(&s->keep),
											  IntervalPGetDatum(&zero))))
		{
			GUC_check_errdetail("The retention must be positive; an empty value keeps every row.");
			free(s);
			return false;
		}
		s->set = true;
	}
	*extra = s;
	return true;
}

static void
assign_log_retention(const char *newval, void *extra)
{
	retention = (const RetentionSetting *) extra;
	next_run = 0;
}

void
retention_define_gucs(void)
{
	DefineCustomStringVariable("llm.log_retention",
							   "Rows of llm.requests older than this are deleted by the gateway worker; empty keeps every row.",
							   "An interval such as '30 days'.  The worker deletes at most 1000 rows at a time, "
							   "oldest first, never a pending row, without waiting for locks; usage rollups "
							   "are kept.",
							   &llm_log_retention,
							   "",
							   PGC_SIGHUP,
							   0,
							   check_log_retention, assign_log_retention, NULL);
}

long
retention_wait_ms(long timeout_ms)
{
	long		ms = 0;

	if (retention == NULL || !retention->set)
		return timeout_ms;
	if (next_run != 0)
		ms = Max((long) ((next_run - GetCurrentTimestamp() + 999) / 1000), 0);
	return timeout_ms < 0 ? ms : Min(timeout_ms, ms);
}

/* SET LOCAL, above any database or role setting (as request_log.c does). */
static void
set_local(const char *name, const char *value)
{
	(void) set_config_option(name, value, PGC_SUSET, PGC_S_SESSION,
							 GUC_ACTION_LOCAL, true, 0, false);
}

/* Delete one batch in its own transaction; rows deleted, -1 on failure. */
static int64
delete_batch(TimestampTz now)
{
	MemoryContext caller = CurrentMemoryContext;
	volatile int64 deleted = 0;

	PG_TRY();
	{
		Oid			nsp;

		SetCurrentStatementStartTimestamp();
		StartTransactionCommand();
		set_local("lock_timeout", RETENTION_LOCK_TIMEOUT);
		set_local("synchronous_commit", "off");
		enable_timeout_after(STATEMENT_TIMEOUT, RETENTION_STATEMENT_TIMEOUT_MS);
		PushActiveSnapshot(GetTransactionSnapshot());
		nsp = get_namespace_oid("llm", true);
		/* the extension and its role: nothing to do where they are missing */
		if (OidIsValid(nsp) && OidIsValid(get_relname_relid("requests", nsp)) &&
			worker_session_enter())
		{
			Oid			types[2] = {TIMESTAMPTZOID, INT4OID};
			Datum		values[2];
			int			rc;

			values[0] = DirectFunctionCall2(timestamptz_mi_interval, TimestampTzGetDatum(now),
											IntervalPGetDatum(&retention->keep));
			values[1] = Int32GetDatum(RETENTION_BATCH_ROWS);
			SPI_connect();
			rc = SPI_execute_with_args(RETENTION_SQL, 2, types, values, NULL, false, 0);
			if (rc != SPI_OK_DELETE)
				elog(ERROR, "deleting expired rows of llm.requests: SPI result %d", rc);
			deleted = (int64) SPI_processed;
			SPI_finish();
		}
		disable_timeout(STATEMENT_TIMEOUT, true);
		CHECK_FOR_INTERRUPTS();
		PopActiveSnapshot();
		CommitTransactionCommand();
		pgstat_report_stat(false);
	}
	PG_CATCH();
	{
		ErrorData  *edata;
		bool		fired;

		MemoryContextSwitchTo(caller);
		edata = CopyErrorData();
		FlushErrorState();
		fired = get_timeout_indicator(STATEMENT_TIMEOUT, true);
		disable_timeout(STATEMENT_TIMEOUT, false);
		if (fired)
			QueryCancelPending = false;
		AbortCurrentTransaction();
		/* contention is expected now and then; anything else is said once */
		ereport(failing || edata->sqlerrcode == ERRCODE_LOCK_NOT_AVAILABLE ? DEBUG1 : LOG,
				(errmsg("llm_gateway: could not delete expired rows of llm.requests; trying again later"),
				 errdetail("%s", edata->message)));
		if (edata->sqlerrcode != ERRCODE_LOCK_NOT_AVAILABLE)
			failing = true;
		FreeErrorData(edata);
		deleted = -1;
	}
	PG_END_TRY();
	MemoryContextSwitchTo(caller);
	if (deleted >= 0)
		failing = false;
	return deleted;
}

void
retention_turn(bool idle)
{
	TimestampTz now;
	int64		deleted;
	int			delay_ms;

	if (retention == NULL || !retention->set)
		return;
	now = GetCurrentTimestamp();
	if (next_run != 0 && now < next_run)
		return;
	deleted = delete_batch(now);
	if (deleted < 0)
		delay_ms = RETENTION_FAILED_MS;
	else if (deleted < RETENTION_BATCH_ROWS)
		delay_ms = RETENTION_CAUGHT_UP_MS;
	else
		delay_ms = idle ? RETENTION_BACKLOG_IDLE_MS : RETENTION_BACKLOG_BUSY_MS;
	next_run = TimestampTzPlusMilliseconds(GetCurrentTimestamp(), delay_ms);
}

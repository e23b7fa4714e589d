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
 * The rows themselves are written by log_writer.c, through the executor's
 * simple insert/update path (the logical-replication apply worker's).
 *
 * Failures: every transaction runs with lock_timeout and a statement
 * timeout.  A batch that fails on a lock, a timeout or a deadlock writes
 * nothing and is retried next turn (REQLOG_RETRY).  A batch that fails
 * otherwise is redone with each row in its own subtransaction, so the one
 * row an added constraint or trigger refuses fails alone (its item gets
 * log_error) and the others are written.  Not on the normal path: a
 * subtransaction per row would overflow the subxid cache under load.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/xact.h"
#include "commands/dbcommands.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "utils/guc.h"
#include "utils/memutils.h"
#include "utils/snapmgr.h"
#include "utils/timeout.h"

#include "worker/attempt.h"
#include "llm_gateway.h"
#include "worker/log_writer.h"
#include "worker/request_log.h"
#include "worker/worker_session.h"
#include "common/llm_errors.h"

/*
 * Bounds on every log transaction.  The lock wait is short: while the
 * worker waits, no call's transfer progresses.
 */
#define LOG_LOCK_TIMEOUT		"1s"
#define LOG_STATEMENT_TIMEOUT_MS	10000

/* A batch: what to write, and for which items. */
typedef enum BatchKind
{
	BATCH_PENDING,				/* insert the items' pending rows */
	BATCH_COMPLETE,				/* complete the items' rows */
	BATCH_UNKNOWN				/* mark rows a previous worker left pending */
} BatchKind;

typedef struct Batch
{
	BatchKind	kind;
	dlist_head *items;			/* NULL for BATCH_UNKNOWN */
	ReqlogPrepareFn prepare;
} Batch;

typedef enum TryResult
{
	TRY_OK,
	TRY_UNAVAILABLE,
	TRY_FAILED
} TryResult;

static bool unknown_done = false;	/* rows of previous workers marked */
static bool retrying = false;	/* the last batch was put off (for the log) */


/*
 * SET LOCAL: the session source outranks every database, role and
 * override-level setting, and the transaction's end restores them.
 */
static void
set_local(const char *name, const char *value)
{
	(void) set_config_option(name, value, PGC_SUSET, PGC_S_SESSION,
							 GUC_ACTION_LOCAL, true, 0, false);
}

/*
 * Start a log transaction.  synchronous: the commit waits for the WAL
 * flush (and a synchronous standby), whatever synchronous_commit the
 * database or a role sets; otherwise it is asynchronous.
 */
static void
begin_txn(bool synchronous)
{
	SetCurrentStatementStartTimestamp();
	StartTransactionCommand();
	set_local("lock_timeout", LOG_LOCK_TIMEOUT);
	set_local("synchronous_commit", synchronous ? "on" : "off");
	/* statement_timeout is armed by postgres.c only; arm it ourselves */
	enable_timeout_after(STATEMENT_TIMEOUT, LOG_STATEMENT_TIMEOUT_MS);
	PushActiveSnapshot(GetTransactionSnapshot());
}

static void
end_txn(void)
{
	/* a timeout that fired after the last check fails the batch, not the loop */
	disable_timeout(STATEMENT_TIMEOUT, true);
	CHECK_FOR_INTERRUPTS();
	PopActiveSnapshot();
	CommitTransactionCommand();
	pgstat_report_stat(false);
}

/* After an error: no timeout may be left to cancel the worker's next wait. */
static void
stop_statement_timeout(void)
{
	bool		fired = get_timeout_indicator(STATEMENT_TIMEOUT, true);

	disable_timeout(STATEMENT_TIMEOUT, false);
	if (fired)
		QueryCancelPending = false;
}

/* One item's row, inside a batch (any prepare callback has run). */
static void
write_item(LogWriter *w, BatchKind kind, LlmWorkItem *item)
{
	if (kind == BATCH_PENDING)
		logwriter_insert(w, item);
	else if (!logwriter_complete(w, item))
		item->log_deferred = true;
}

/*
 * Row by row: one item in its own subtransaction (with its own executor
 * state, which the subtransaction's abort throws away).  A transient error
 * aborts the whole batch; any other is the item's alone.
 */
static void
write_item_alone(Oid relid, Batch *b, LlmWorkItem *item)
{
	MemoryContext cxt = CurrentMemoryContext;
	ResourceOwner owner = CurrentResourceOwner;

	BeginInternalSubTransaction(NULL);
	MemoryContextSwitchTo(cxt);
	PG_TRY();
	{
		LogWriter  *w;

		if (b->kind == BATCH_PENDING && b->prepare)
			b->prepare(item);
		w = logwriter_open(relid);
		write_item(w, b->kind, item);
		logwriter_close(w);
		ReleaseCurrentSubTransaction();
	}
	PG_CATCH();
	{
		ErrorData  *edata;

		edata = llm_subxact_caught(cxt, owner);
		if (llm_error_is_transient(edata->sqlerrcode))
			ReThrowError(edata);
		item->log_error = MemoryContextStrdup(item->cxt, edata->message);
		item->log_deferred = false;
		if (b->kind == BATCH_PENDING)
		{
			item->logged = false;
			item->request_id = 0;
		}
		FreeErrorData(edata);
	}
	PG_END_TRY();
	MemoryContextSwitchTo(cxt);
	CurrentResourceOwner = owner;
}

/* Forget what an attempt wrote: it was rolled back, or is about to be redone. */
static void
reset_items(Batch *b)
{
	dlist_iter	it;

	if (b->items == NULL)
		return;
	dlist_foreach(it, b->items)
	{
		LlmWorkItem *item = dlist_container(LlmWorkItem, node, it.cur);

		item->log_error = NULL;
		item->log_deferred = false;
		if (b->kind == BATCH_PENDING)
		{
			item->logged = false;
			item->request_id = 0;
		}
	}
}

/* One attempt at a batch, in one transaction; an error is returned in *error. */
static TryResult
try_batch(Batch *b, bool row_by_row, ErrorData **error, char **unavailable)
{
	MemoryContext caller = CurrentMemoryContext;
	volatile TryResult result = TRY_OK;

	reset_items(b);
	PG_TRY();
	{
		Oid			relid;
		dlist_iter	it;

		begin_txn(b->kind == BATCH_PENDING && llm_durable_before_send);
		relid = logwriter_relid();
		/* the extension's role: it comes with the tables */
		if (!OidIsValid(relid) || !worker_session_enter())
		{
			*unavailable = MemoryContextStrdup(caller,
											   psprintf("extension llm_gateway is not installed in database \"%s\"",
														get_database_name(MyDatabaseId)));
			result = TRY_UNAVAILABLE;
		}
		else if (row_by_row)
		{
			dlist_foreach(it, b->items)
				write_item_alone(relid, b, dlist_container(LlmWorkItem, node, it.cur));
		}
		else
		{
			LogWriter  *w;

			/* route resolution may read tables: before the writer is open */
			if (b->kind == BATCH_PENDING && b->prepare)
				dlist_foreach(it, b->items)
					b->prepare(dlist_container(LlmWorkItem, node, it.cur));
			w = logwriter_open(relid);
			if (b->kind == BATCH_UNKNOWN)
				logwriter_mark_unknown(w);
			else
				dlist_foreach(it, b->items)
					write_item(w, b->kind, dlist_container(LlmWorkItem, node, it.cur));
			logwriter_close(w);
		}
		end_txn();
	}
	PG_CATCH();
	{
		MemoryContextSwitchTo(caller);
		*error = CopyErrorData();
		FlushErrorState();
		stop_statement_timeout();
		AbortCurrentTransaction();
		reset_items(b);
		result = TRY_FAILED;
	}
	PG_END_TRY();
	MemoryContextSwitchTo(caller);
	return result;
}

/* Write a batch: at once, else row by row (see the file header). */
static ReqlogResult
run_batch(Batch *b, char **reason)
{
	ErrorData  *err = NULL;
	TryResult	r;
	dlist_iter	it;

	*reason = NULL;
	r = try_batch(b, false, &err, reason);
	if (r == TRY_FAILED && !llm_error_is_transient(err->sqlerrcode) && b->kind != BATCH_UNKNOWN)
	{
		ereport(LOG,
				(errmsg("llm_gateway: writing a batch of llm.requests failed; writing its rows one by one"),
				 errdetail("%s", err->message)));
		FreeErrorData(err);
		err = NULL;
		r = try_batch(b, true, &err, reason);
	}
	if (r == TRY_UNAVAILABLE)
		return REQLOG_UNAVAILABLE;
	if (r == TRY_FAILED && llm_error_is_transient(err->sqlerrcode))
	{
		if (!retrying)
			ereport(LOG,
					(errmsg("llm_gateway: llm.requests cannot be written now; retrying every turn"),
					 errdetail("%s", err->message)));
		retrying = true;
		*reason = pstrdup(err->message);
		FreeErrorData(err);
		return REQLOG_RETRY;
	}
	if (retrying)
		ereport(LOG, (errmsg("llm_gateway: llm.requests is written again")));
	retrying = false;
	if (r == TRY_FAILED)
	{
		/* failed outside its rows (at commit, say): every row failed */
		ereport(LOG,
				(errmsg("llm_gateway: could not write llm.requests"),
				 errdetail("%s", err->message)));
		if (b->items != NULL)
			dlist_foreach(it, b->items)
		{
			LlmWorkItem *item = dlist_container(LlmWorkItem, node, it.cur);

			item->log_error = MemoryContextStrdup(item->cxt, err->message);
		}
		*reason = pstrdup(err->message);
		FreeErrorData(err);
	}
	return REQLOG_OK;
}

/* ---------------------------------------------------------------------
 * Entry points
 * ---------------------------------------------------------------------
 */

/*
 * Mark the rows previous workers left pending as unknown.  OK also when
 * the marking failed for good (a trigger refusing it, say: the rows stay
 * pending and the error is in the server log).
 */
ReqlogResult
reqlog_mark_unknown(char **reason)
{
	Batch		b = {BATCH_UNKNOWN, NULL, NULL};
	ReqlogResult r = run_batch(&b, reason);

	if (r == REQLOG_OK)
		unknown_done = true;
	return r;
}

/*
 * Insert the pending rows of items, in one transaction that commits before
 * any of them is sent: synchronously unless llm.durable_before_send is off
 * (the log flusher then makes it durable while the requests travel).
 */
ReqlogResult
reqlog_write_pending(dlist_head *items, ReqlogPrepareFn prepare, char **reason)
{
	Batch		b = {BATCH_PENDING, items, prepare};

	/* first the previous workers' rows, or ours would be marked with them */
	if (!unknown_done)
	{
		ReqlogResult r = reqlog_mark_unknown(reason);

		if (r != REQLOG_OK)
			return r;
	}
	return run_batch(&b, reason);
}

/*
 * Complete the rows of finished items (those with a pending row), in one
 * asynchronous transaction: losing it in a crash leaves a row the next
 * worker marks unknown, never a missing row.
 */
ReqlogResult
reqlog_write_completions(dlist_head *items, char **reason)
{
	Batch		b = {BATCH_COMPLETE, items, NULL};

	return run_batch(&b, reason);
}

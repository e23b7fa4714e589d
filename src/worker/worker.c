/*-------------------------------------------------------------------------
 *
 * worker.c
 *	  The gateway's background worker: main and event loop.
 *
 * runs in: worker (one per cluster, connected to llm.database).
 *
 * One turn of the loop, top to bottom:
 *	 wait on {latch, postmaster death, curl's epoll set} until curl's timer;
 *	 reload the configuration on SIGHUP;
 *	 let curl progress and answer the calls whose transfers finished;
 *	 stop the transfers of calls their backends abandoned;
 *	 take new calls: resolve routes and commit their pending log rows in
 *	 one transaction, then start their transfers (calls whose rows cannot
 *	 be written yet wait, unsent, for a later turn);
 *	 complete the log rows of finished calls in one transaction (rows that
 *	 cannot be completed yet are retried next turn).
 * Nothing sleeps on a timer of its own: every wake-up is the latch, a
 * socket, curl's timer or postmaster death.
 *
 * SIGTERM uses die(): the next CHECK_FOR_INTERRUPTS() exits (code 1, so
 * the postmaster restarts us unless it is shutting down), and the channel's
 * exit callback fails the calls still in flight so no backend waits on a
 * worker that is gone.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <sched.h>

#include "access/xact.h"
#include "access/xlog.h"
#include "lib/ilist.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "postmaster/bgworker.h"
#include "postmaster/interrupt.h"
#include "storage/ipc.h"
#include "storage/latch.h"
#include "storage/lwlock.h"
#include "storage/proc.h"
#include "tcop/tcopprot.h"
#include "utils/guc.h"
#include "utils/memutils.h"

#include "worker/attempt.h"
#include "worker/embed_batch.h"
#include "worker/fair_share.h"
#include "channel/channel.h"
#include "worker/health.h"
#include "worker/http.h"
#include "llm_gateway.h"
#include "worker/log_flusher.h"
#include "worker/request_log.h"
#include "worker/route_cache.h"
#include "worker/quota.h"
#include "worker/worker_session.h"
#include "worker/retention.h"
#include "worker/vertex_token.h"

#define TAKE_BATCH 256

/* the longest a caller waits for its row while the log is locked */
#define LLM_ROW_WAIT_MS 2000
/* while log rows wait to be written, the loop wakes at least this often */
#define LOG_RETRY_MS 100


PGDLLEXPORT void llm_worker_main(Datum main_arg);

static LlmWorkItem **items_by_slot;	/* the item holding each slot, or NULL */
static dlist_head finished = DLIST_STATIC_INIT(finished);	/* rows to complete */
static dlist_head unlogged = DLIST_STATIC_INIT(unlogged);	/* pending rows to write */
static dlist_head waiting = DLIST_STATIC_INIT(waiting);	/* backing off */
static MemoryContext loop_cxt;
static XLogRecPtr unflushed_lsn = InvalidXLogRecPtr;	/* pending rows to flush */

/*
 * In a PG_CATCH of one call's work: back to the loop's memory context, the
 * error taken off the stack (and logged) to fail that call with.  No
 * transaction is open to release LWLocks; the loop holds none between steps.
 */
static ErrorData *
call_error_caught(MemoryContext old, const char *what)
{
	ErrorData  *edata;

	MemoryContextSwitchTo(old);
	LWLockReleaseAll();
	edata = CopyErrorData();
	FlushErrorState();
	ereport(LOG, (errmsg("llm_gateway worker: %s: %s", what, edata->message)));
	return edata;
}

/*
 * Run one step of one call's work (send, retry, take the answer, cancel,
 * deliver).  An ERROR inside it (an allocation, a value the numeric code
 * cannot compute) fails that call alone, with the error's SQLSTATE, and the
 * worker goes on with the others: nothing a call carries may take down the
 * calls of every other session.
 */
static void
guarded(void (*step) (LlmWorkItem *), LlmWorkItem *item)
{
	MemoryContext old = CurrentMemoryContext;

	PG_TRY();
	{
		step(item);
	}
	PG_CATCH();
	{
		ErrorData  *edata = call_error_caught(old, "call failed while being processed");

		/* delivering never raises (the channel reports a failure instead) */
		if (item->state != LLM_ITEM_FINISHED)
			item_fail(item, "error", edata->sqlerrcode,
					  psprintf("the gateway could not process the call: %s", edata->message),
					  edata->detail, "The other calls were not affected; see the server log.");
		FreeErrorData(edata);
	}
	PG_END_TRY();
}

static void
forget(LlmWorkItem *item)
{
	if (items_by_slot[item->slot] == item)
		items_by_slot[item->slot] = NULL;
}

/* A finished item waits in `finished` until its row is completed. */
static void
to_finished(LlmWorkItem *item)
{
	forget(item);
	dlist_push_tail(&finished, &item->node);
}

/* After an item ran (sent, retried, answered): file it by its new state. */
static void
file_item(LlmWorkItem *item)
{
	if (item->state == LLM_ITEM_FINISHED)
		to_finished(item);
	else if (item->state == LLM_ITEM_WAITING)
		dlist_push_tail(&waiting, &item->node);
	/* SENDING: curl holds it until its transfer ends */
}

/* Resolve a call's route once, inside its pending row's transaction. */
static void
prepare_item(LlmWorkItem *item)
{
	/* a batch retried after a lock timeout calls this again */
	if (item->state == LLM_ITEM_NEW && item->cand == NULL)
		item_resolve(item);
	if (item->state == LLM_ITEM_NEW && item->quota == NULL)
		quota_admit(item);		/* needs the route: its targets' prices */
}

/* A call that will have no audit row: fail it unsent (unless it already failed) and free it. */
static void
drop_unlogged(LlmWorkItem *item, const char *why, const char *hint)
{
	item->logged = false;
	if (item->state != LLM_ITEM_FINISHED)
		item_fail(item, "error", ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
				  psprintf("could not write the audit row of the call: %s", why),
				  "No call is sent without its audit row.", hint);
	else
		ereport(LOG,
				(errmsg("llm_gateway: the audit row of a call that failed before it was sent could not be written: %s",
						why)));
	guarded(item_deliver, item);
	forget(item);
	item_free(item);
}

/*
 * Make the work item of a submitted slot.  A call its backend abandoned
 * before we saw it is logged as cancelled.  Copying the call out of shared
 * memory can fail (the payload's segment cannot be mapped): that call then
 * fails alone, before it has a row or is sent; NULL.
 */
static LlmWorkItem *
take_item(int slot)
{
	MemoryContext old = CurrentMemoryContext;
	bool		running = channel_start(slot);
	LlmWorkItem *volatile item = NULL;

	PG_TRY();
	{
		item = item_create(slot);
	}
	PG_CATCH();
	{
		ErrorData  *edata = call_error_caught(old, "could not take a call");
		StringInfoData payload;

		if (running)
		{
			initStringInfo(&payload);
			appendStringInfo(&payload, "the gateway could not take the call: %s", edata->message);
			appendStringInfoChar(&payload, '\0');
			appendStringInfoChar(&payload, '\0');
			appendStringInfoString(&payload, "Nothing was sent; retry the call.");
			appendStringInfoChar(&payload, '\0');
			channel_finish(slot, LLM_OUTCOME_ERROR, edata->sqlerrcode, payload.data, payload.len);
		}
		else
			channel_release_abandoned(slot);
		FreeErrorData(edata);
		return NULL;
	}
	PG_END_TRY();

	if (!running)
	{
		item->status = "cancelled";
		item->error.sqlerrcode = ERRCODE_QUERY_CANCELED;
		item->error.message = MemoryContextStrdup(item->cxt, "the call was cancelled before it was sent");
		item->state = LLM_ITEM_FINISHED;
		item->delivered = true;
		channel_release_abandoned(slot);
	}
	else
		items_by_slot[slot] = item;
	return item;
}

/* Take the calls backends submitted since the last turn. */
static void
take_new_calls(void)
{
	int			slots[TAKE_BATCH];
	int			n;
	dlist_head	fresh;
	dlist_mutable_iter it;
	ReqlogResult res;
	char	   *reason;

	dlist_init(&fresh);
	while ((n = channel_take_submitted(slots, TAKE_BATCH)) > 0)
	{
		int			i;

		for (i = 0; i < n; i++)
		{
			LlmWorkItem *item = take_item(slots[i]);

			if (item == NULL)
				continue;
			dlist_push_tail(&fresh, &item->node);
		}
		if (n < TAKE_BATCH)
			break;
	}
	dlist_foreach_modify(it, &fresh)
	{
		LlmWorkItem *item = dlist_container(LlmWorkItem, node, it.cur);

		dlist_delete(&item->node);
		dlist_push_tail(&unlogged, &item->node);
	}
	if (dlist_is_empty(&unlogged))
		return;

	/* pending rows commit before any provider is contacted */
	res = reqlog_write_pending(&unlogged, prepare_item, &reason);
	if (res == REQLOG_RETRY)
	{
		/* no row written: the calls wait, unsent, until their deadline */
		TimestampTz now = GetCurrentTimestamp();

		dlist_foreach_modify(it, &unlogged)
		{
			LlmWorkItem *item = dlist_container(LlmWorkItem, node, it.cur);

			if (item->deadline > now)
				continue;
			dlist_delete(&item->node);
			drop_unlogged(item, reason, NULL);
		}
		return;
	}
	if (res == REQLOG_OK && !llm_durable_before_send)
		unflushed_lsn = Max(unflushed_lsn, XactLastCommitEnd);

	dlist_foreach_modify(it, &unlogged)
	{
		LlmWorkItem *item = dlist_container(LlmWorkItem, node, it.cur);

		dlist_delete(&item->node);
		if (res == REQLOG_UNAVAILABLE)
		{
			drop_unlogged(item, reason,
						  "Run CREATE EXTENSION llm_gateway in the database named by llm.database.");
			continue;
		}
		if (item->log_error)
		{
			drop_unlogged(item, item->log_error,
						  "A constraint or trigger on llm.requests refused the row.");
			continue;
		}
		if (item->state == LLM_ITEM_NEW)
		{
			item->state = LLM_ITEM_READY;
			guarded(item_send, item);
		}
		file_item(item);
	}
}

static void
handle_cancels(void)
{
	LlmCancelEntry entries[TAKE_BATCH];
	int			n;

	while ((n = channel_take_cancels(entries, TAKE_BATCH)) > 0)
	{
		int			i;

		for (i = 0; i < n; i++)
		{
			LlmWorkItem *item = items_by_slot[entries[i].slot];

			if (item == NULL || item->generation != entries[i].generation ||
				item->state == LLM_ITEM_FINISHED)
				continue;
			if (item->state == LLM_ITEM_NEW)
			{
				/* its pending row is not written yet: logged as cancelled with it */
				item_cancel(item);
				continue;
			}
			if (item->state == LLM_ITEM_WAITING)
				dlist_delete(&item->node);
			guarded(item_cancel, item);
			to_finished(item);
		}
	}
}

/* Calls whose embedding batch's exchange ended: settle each like a single attempt. */
static int
file_settled_embeddings(void)
{
	LlmWorkItem *item;
	int			n = 0;

	while ((item = embed_batch_next_settled()) != NULL)
	{
		if (item->state != LLM_ITEM_FINISHED)
			guarded(item_settle_attempt, item);
		file_item(item);
		n++;
	}
	return n;
}

/*
 * Send the embedding batches that are due; ms until the next is (-1:
 * none).  A call settled here (a batch that could not be sent) may fall
 * over at once into a new batch: send again until none is left over.
 */
static long
send_embed_batches(long retry_ms)
{
	long		ms = embed_batch_send_due();

	while (file_settled_embeddings() > 0)
		ms = embed_batch_send_due();
	if (ms < 0)
		return retry_ms;
	return retry_ms < 0 ? ms : Min(ms, retry_ms);
}

static void
handle_finished_transfers(void)
{
	LlmHttpTransfer *t;

	while ((t = http_next_done()) != NULL)
	{
		LlmWorkItem *item;

		/* a Vertex token fetch, not a call's attempt */
		if (vertex_token_transfer_done(t))
			continue;
		if (embed_batch_transfer_done(t))
		{
			file_settled_embeddings();
			continue;
		}
		item = t->owner;
		guarded(item_transfer_done, item);
		file_item(item);
	}
}

/* Send the attempts whose backoff is over; returns ms until the next one (-1: none). */
static long
handle_due_retries(void)
{
	dlist_mutable_iter it;
	dlist_head	due;
	TimestampTz now = GetCurrentTimestamp();
	long		next = -1;
	int			ndue = 0;
	int			nrate = 0;

	/* take the due ones out first: sending may put them back in `waiting` */
	dlist_init(&due);
	dlist_foreach_modify(it, &waiting)
	{
		LlmWorkItem *item = dlist_container(LlmWorkItem, node, it.cur);

		if (item->retry_at <= now)
		{
			dlist_delete(&item->node);
			dlist_push_tail(&due, &item->node);
			ndue++;
			if (item->throttled && !item->waiting_for_slot)
				nrate++;
		}
	}
	/* several compete for rate tokens: fewest-loaded backend first */
	if (nrate > 1)
		fair_order_due(&due, ndue, items_by_slot);
	fair_grant_freed_slots(&waiting, &due, items_by_slot);
	forget_freed_slots();
	dlist_foreach_modify(it, &due)
	{
		LlmWorkItem *item = dlist_container(LlmWorkItem, node, it.cur);

		dlist_delete(&item->node);
		guarded(item_retry, item);
		file_item(item);
	}

	dlist_foreach_modify(it, &waiting)
	{
		LlmWorkItem *item = dlist_container(LlmWorkItem, node, it.cur);
		long		ms = TimestampDifferenceMilliseconds(now, item->retry_at);

		if (next < 0 || ms < next)
			next = Max(ms, 1);
	}
	return next;
}

/* How long the loop may wait: until curl's timer or the next retry. */
static long
wait_timeout(long retry_ms)
{
	long		curl_ms = http_timeout_ms();

	/* log rows waiting to be written (a lock held elsewhere) are retried */
	if (!dlist_is_empty(&unlogged) || !dlist_is_empty(&finished))
		retry_ms = retry_ms < 0 ? LOG_RETRY_MS : Min(retry_ms, LOG_RETRY_MS);

	if (curl_ms < 0)
		return retry_ms;
	if (retry_ms < 0)
		return curl_ms;
	return Min(curl_ms, retry_ms);
}


static void
complete_log_rows(void)
{
	dlist_iter	iter;
	dlist_mutable_iter it;
	ReqlogResult res;
	char	   *reason;

	if (dlist_is_empty(&finished))
		return;
	/* items without a row (never logged) need not wait for the batch */
	dlist_foreach(iter, &finished)
	{
		LlmWorkItem *item = dlist_container(LlmWorkItem, node, iter.cur);

		if (!item->logged)
			guarded(item_deliver, item);
	}
	res = reqlog_write_completions(&finished, &reason);

	/*
	 * Committed rows (or rows that cannot be completed: they stay pending
	 * and the next worker marks them unknown): now their backends return,
	 * and their next statement sees the finished row.  A row the log's
	 * locks put off (the whole batch, or one row an administrator holds)
	 * is tried again next turn; its caller waits for it at most
	 * LLM_ROW_WAIT_MS, then gets its answer while the row waits.
	 */
	dlist_foreach_modify(it, &finished)
	{
		LlmWorkItem *item = dlist_container(LlmWorkItem, node, it.cur);

		if (res == REQLOG_RETRY || (res == REQLOG_OK && item->log_deferred))
		{
			TimestampTz done_at = TimestampTzPlusMilliseconds(item->submitted_at,
															  (int64) item->latency_ms);

			if (GetCurrentTimestamp() >= TimestampTzPlusMilliseconds(done_at, LLM_ROW_WAIT_MS))
				guarded(item_deliver, item);
			continue;
		}
		if (item->log_error)
			ereport(WARNING,
					(errmsg("llm_gateway: could not complete row %lld of llm.requests: %s",
							(long long) item->request_id, item->log_error)));
		dlist_delete(&item->node);
		guarded(item_deliver, item);
		item_free(item);
	}
}

/*
 * How long the worker's recent waits lasted before work came (moving
 * average, microseconds; 0 = no waits measured yet).
 */
static double recent_wait_us = 0;

/*
 * Wait for the next event.  With llm.poll_us > 0, while few calls are in
 * flight and recent waits ended within llm.poll_us, poll for up to that
 * long first: a worker that is still awake when a backend submits or a
 * provider answers saves a process wake-up, which on some machines
 * (virtual CPUs that halt when idle) costs more than the rest of the
 * hand-off.  Polling adapts like the backends' (channel): when work comes
 * less often than that, the worker sleeps at once and spends no CPU.  The
 * poll yields the CPU to anything else runnable.
 */
static int
wait_for_events(WaitEventSet *wes, long timeout_ms, WaitEvent *events, int nevents)
{
	TimestampTz start = GetCurrentTimestamp();
	int			n = -1;

	if (llm_poll_us > 0 && timeout_ms != 0 && http_active() <= LLM_POLL_MAX_IN_FLIGHT &&
		recent_wait_us > 0 && recent_wait_us <= llm_poll_us)
	{
		TimestampTz until = start + llm_poll_us;
		TimestampTz now = start;

		if (timeout_ms > 0)
			until = Min(until, start + (TimestampTz) timeout_ms * 1000);

		/*
		 * Read the latch rather than wait on it: a backend setting a latch
		 * whose owner is not waiting only writes a flag, no signal.  A
		 * signal for us (SIGTERM, SIGHUP) sets the latch too.
		 */
		do
		{
			if (MyLatch->is_set || http_ready())
			{
				n = WaitEventSetWait(wes, 0, events, nevents, PG_WAIT_EXTENSION);
				break;
			}
			sched_yield();
			now = GetCurrentTimestamp();
		} while (now < until);
		if (n < 0 && timeout_ms > 0)
			timeout_ms = Max(timeout_ms - (now - start) / 1000, 0);
	}
	if (n < 0)
		n = WaitEventSetWait(wes, timeout_ms, events, nevents, PG_WAIT_EXTENSION);
	if (n > 0)
	{
		double		us = (double) (GetCurrentTimestamp() - start);

		recent_wait_us = recent_wait_us > 0 ? recent_wait_us * 0.875 + us * 0.125 : us;
	}
	return n;
}

void
llm_worker_main(Datum main_arg)
{
	WaitEventSet *wes;
	char	   *unavailable;
	int			epoll_pos;
	long		retry_ms = -1;

	pqsignal(SIGHUP, SignalHandlerForConfigReload);
	pqsignal(SIGTERM, die);
	BackgroundWorkerUnblockSignals();

	/* a failure to connect is published, so callers fail at once */
	channel_worker_connecting();
	BackgroundWorkerInitializeConnection(llm_database, NULL, 0);
	channel_worker_connected();
	/* before any SQL: the database owner's settings must not reach us */
	worker_session_init();
	pgstat_report_appname("llm_gateway worker");

	/* the log's transactions commit asynchronously; see log_pending() */
	SetConfigOption("synchronous_commit", "off", PGC_SUSET, PGC_S_SESSION);

	loop_cxt = AllocSetContextCreate(TopMemoryContext, "llm worker loop",
									 ALLOCSET_DEFAULT_SIZES);
	items_by_slot = MemoryContextAllocZero(TopMemoryContext,
										   sizeof(LlmWorkItem *) * channel_get()->nslots);
	routes_init();
	http_init();
	/* counts and probes of the calls a previous worker died with */
	health_worker_started();

	unavailable = NULL;
	if (reqlog_mark_unknown(&unavailable) != REQLOG_UNAVAILABLE)
		unavailable = NULL;
	channel_worker_log_unavailable(unavailable);
	quota_worker_start();		/* after the dead worker's rows became unknown */
	if (unavailable)
		ereport(LOG,
				(errmsg("llm_gateway worker: %s; calls will fail until it is", unavailable)));

	channel_worker_attach();
	ereport(LOG, (errmsg("llm_gateway worker started (database \"%s\")", llm_database)));

	wes = CreateWaitEventSet(TopMemoryContext, 3);
	AddWaitEventToSet(wes, WL_LATCH_SET, PGINVALID_SOCKET, MyLatch, NULL);
	AddWaitEventToSet(wes, WL_EXIT_ON_PM_DEATH, PGINVALID_SOCKET, NULL, NULL);
	epoll_pos = AddWaitEventToSet(wes, WL_SOCKET_READABLE, http_socket_fd(), NULL, NULL);

	for (;;)
	{
		WaitEvent	events[3];
		int			nevents;
		int			i;
		bool		sockets_ready = false;

		/* a turn's scratch memory; reset at the end of the turn */
		MemoryContextSwitchTo(loop_cxt);
		pgstat_report_activity(STATE_IDLE, NULL);
		nevents = wait_for_events(wes, retention_wait_ms(wait_timeout(retry_ms)),
								  events, lengthof(events));
		for (i = 0; i < nevents; i++)
		{
			if (events[i].events & WL_LATCH_SET)
				ResetLatch(MyLatch);
			if (events[i].pos == epoll_pos)
				sockets_ready = true;
		}
		CHECK_FOR_INTERRUPTS();
		if (ConfigReloadPending)
		{
			ConfigReloadPending = false;
			ProcessConfigFile(PGC_SIGHUP);
			/* llm.master_key_file or the file may have changed: decrypt again */
			routes_invalidate();
		}
		pgstat_report_activity(STATE_RUNNING, "llm_gateway: serving calls");

		http_drive(sockets_ready);
		handle_finished_transfers();
		handle_cancels();
		(void) handle_due_retries();
		take_new_calls();
		(void) send_embed_batches(-1);
		/* new transfers: let curl start them in this turn */
		http_drive(false);
		handle_finished_transfers();
		complete_log_rows();
		retry_ms = send_embed_batches(handle_due_retries());
		if (retry_ms >= 0)
			http_drive(false);

		/* this turn's requests are on their way: now make its log durable */
		if (!XLogRecPtrIsInvalid(unflushed_lsn))
		{
			logflush_request(unflushed_lsn);
			unflushed_lsn = InvalidXLogRecPtr;
		}
		/* off the call path: this turn's calls are sent and logged */
		retention_turn(http_active() == 0);

		MemoryContextReset(loop_cxt);
	}
}

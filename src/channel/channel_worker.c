/*-------------------------------------------------------------------------
 *
 * channel_worker.c
 *	  The worker half of the channel: attach, take submitted calls and
 *	  cancel notices, start a call, deliver its outcome, detach.
 *
 * runs in: the worker.  See channel.h for the slot state machine and who
 * frees what.
 *
 * Nothing here may raise an ERROR out of the worker's loop: a payload that
 * cannot be allocated fails that one call (53200 for its caller).
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "miscadmin.h"
#include "storage/ipc.h"
#include "storage/lwlock.h"
#include "utils/memutils.h"

#include "channel/channel_internal.h"
#include "llm_gateway.h"

/* while connecting to llm.database: the error that ends the attempt */
static bool connecting = false;
static char connect_error[LLM_PROBLEM_TEXT_LEN];
static emit_log_hook_type prev_emit_log_hook = NULL;

static void
publish_problem(LlmWorkerProblem problem, const char *text)
{
	SpinLockAcquire(&channel->mutex);
	channel->worker_problem = problem;
	strlcpy(channel->worker_problem_text, text ? text : "",
			sizeof(channel->worker_problem_text));
	SpinLockRelease(&channel->mutex);
}

/* Remember the (FATAL) error of a failing connection attempt. */
static void
connect_emit_log_hook(ErrorData *edata)
{
	if (connecting && edata->elevel >= ERROR && edata->message)
		strlcpy(connect_error, edata->message, sizeof(connect_error));
	if (prev_emit_log_hook)
		prev_emit_log_hook(edata);
}

/*
 * The worker exits before it could connect (llm.database does not exist
 * or does not accept connections): publish why, so callers fail at once
 * instead of waiting for a worker.  The postmaster starts the worker again
 * a second later and a successful attempt clears it.
 */
static void
connect_exit_callback(int code, Datum arg)
{
	if (!connecting)
		return;
	publish_problem(LLM_WORKER_CANNOT_CONNECT,
					connect_error[0] ? connect_error : "the worker exited while connecting");
}

void
channel_worker_connecting(void)
{
	channel_get();
	connecting = true;
	connect_error[0] = '\0';
	prev_emit_log_hook = emit_log_hook;
	emit_log_hook = connect_emit_log_hook;
	before_shmem_exit(connect_exit_callback, (Datum) 0);
}

void
channel_worker_connected(void)
{
	connecting = false;
	emit_log_hook = prev_emit_log_hook;
	publish_problem(LLM_WORKER_OK, NULL);
}

/*
 * Whether llm.database has the extension, as the worker found at start
 * (reason NULL: it has): callers from other databases are told.
 */
void
channel_worker_log_unavailable(const char *reason)
{
	publish_problem(reason ? LLM_WORKER_NO_EXTENSION : LLM_WORKER_OK, reason);
}

/*
 * Finish a slot held by a gone worker (incarnation) so its backend stops
 * waiting: RUNNING ones fail, abandoned ones are freed.
 */
static void
fail_running_slot(int i, uint32 incarnation)
{
	LlmSlot    *slot = &channel->slots[i];
	uint32		st = pg_atomic_read_u32(&slot->state);

	if (slot->worker_incarnation != incarnation || incarnation == 0)
		return;
	if (st == LLM_SLOT_RUNNING)
	{
		int			procno = slot->backend_procno;

		slot->failure = LLM_FAILURE_WORKER_EXITED;
		pg_write_barrier();
		if (pg_atomic_compare_exchange_u32(&slot->state, &st, LLM_SLOT_DONE))
		{
			pg_atomic_fetch_add_u64(&channel->stats.completed, 1);
			wake_procno(procno);
			return;
		}
		/* st now holds the state that beat us */
	}
	if (st == LLM_SLOT_ABANDONED)
		release_slot(i);
}

/*
 * Registered with before_shmem_exit, not on_shmem_exit: it frees DSA
 * chunks, whose segments dsm_backend_shutdown unmaps before the
 * on_shmem_exit callbacks run.
 */
static void
worker_exit_callback(int code, Datum arg)
{
	channel_worker_detach();
}

/*
 * The worker announces itself, then settles calls a previous worker left
 * behind: RUNNING ones fail (their backends get an error at once),
 * abandoned ones are freed.  Submitted ones are simply taken up.
 */
void
channel_worker_attach(void)
{
	uint32		mine;
	int			i;

	channel_dsa();
	SpinLockAcquire(&channel->mutex);
	channel->worker_pid = MyProcPid;
	channel->worker_latch = MyLatch;
	mine = ++channel->worker_incarnation;
	if (mine == 0)
		mine = ++channel->worker_incarnation;	/* 0 means "not taken" */
	SpinLockRelease(&channel->mutex);

	for (i = 0; i < channel->nslots; i++)
	{
		uint32		held = channel->slots[i].worker_incarnation;

		if (held != 0 && held != mine)
			fail_running_slot(i, held);
	}
	before_shmem_exit(worker_exit_callback, (Datum) 0);
}

void
channel_worker_detach(void)
{
	uint32		mine;
	int			i;

	if (channel == NULL || channel_area == NULL)
		return;
	SpinLockAcquire(&channel->mutex);
	if (channel->worker_pid != MyProcPid)
	{
		SpinLockRelease(&channel->mutex);
		return;
	}
	mine = channel->worker_incarnation;
	channel->worker_pid = 0;
	channel->worker_latch = NULL;
	SpinLockRelease(&channel->mutex);

	for (i = 0; i < channel->nslots; i++)
		fail_running_slot(i, mine);
}

/* Pop up to max submitted slot numbers. */
int
channel_take_submitted(int *slots, int max)
{
	int			n = 0;

	SpinLockAcquire(&channel->mutex);
	while (n < max && channel->submit_count > 0)
	{
		slots[n++] = submit_ring()[channel->submit_head];
		channel->submit_head = (channel->submit_head + 1) % channel->nslots;
		channel->submit_count--;
	}
	SpinLockRelease(&channel->mutex);
	return n;
}

int
channel_take_cancels(LlmCancelEntry *out, int max)
{
	int			n = 0;

	SpinLockAcquire(&channel->mutex);
	while (n < max && channel->cancel_count > 0)
	{
		out[n++] = cancel_ring()[channel->cancel_head];
		channel->cancel_head = (channel->cancel_head + 1) % cancel_ring_size();
		channel->cancel_count--;
	}
	SpinLockRelease(&channel->mutex);
	return n;
}

/*
 * Take a submitted slot: SUBMITTED -> RUNNING.  False if the backend
 * abandoned it first; the caller then logs it and releases it.
 */
bool
channel_start(int i)
{
	LlmSlot    *slot = &channel->slots[i];
	uint32		expected = LLM_SLOT_SUBMITTED;
	uint32		mine;

	SpinLockAcquire(&channel->mutex);
	mine = channel->worker_incarnation;
	SpinLockRelease(&channel->mutex);

	/* before the CAS: a backend that sees RUNNING checks this holder lives */
	slot->worker_incarnation = mine;
	return pg_atomic_compare_exchange_u32(&slot->state, &expected, LLM_SLOT_RUNNING);
}

uint32
channel_slot_generation(int i)
{
	return channel->slots[i].generation;
}


/*
 * The worker holds the call back for its provider's max_concurrency or
 * requests_per_minute (or no longer does): llm.statement_progress counts it
 * as queued.  Only a statistic, so a plain atomic store.
 */
void
channel_slot_throttled(int i, bool throttled)
{
	pg_atomic_write_u32(&channel->slots[i].throttled, throttled ? 1 : 0);
}

void
channel_release_abandoned(int i)
{
	release_slot(i);
}

/* The request payload of a slot the worker holds. */
LlmRequestMsg *
channel_request(int i)
{
	/* mapping the payload's segment can raise an ERROR: the caller catches it */
	return channel_address(channel->slots[i].request);
}

/*
 * An answer chunk, or InvalidDsaPointer if there is no shared memory for
 * it.  The worker runs this outside any transaction, so after an ERROR
 * (dsm_create failing while the area grows) nothing but that failed
 * allocation holds LWLocks: release them, log, and go on.
 */
static dsa_pointer
alloc_answer(Size size)
{
	MemoryContext cxt = CurrentMemoryContext;
	volatile dsa_pointer dp = InvalidDsaPointer;

	PG_TRY();
	{
		dp = channel_alloc(size);
	}
	PG_CATCH();
	{
		ErrorData  *edata;

		MemoryContextSwitchTo(cxt);
		LWLockReleaseAll();
		edata = CopyErrorData();
		FlushErrorState();
		ereport(LOG,
				(errmsg("llm_gateway worker: no shared memory for an answer of %zu bytes: %s",
						size, edata->message)));
		FreeErrorData(edata);
		dp = InvalidDsaPointer;
	}
	PG_END_TRY();
	return dp;
}

/*
 * Deliver the outcome of a RUNNING slot (its log row is complete) and
 * wake its backend: RUNNING -> DONE.  If the backend has gone, free
 * everything instead.  Without shared memory for the answer the slot is
 * DONE with LLM_FAILURE_NO_MEMORY.  Never raises an ERROR.
 */
void
channel_finish(int i, LlmOutcome outcome, int sqlerrcode, const char *text, Size len)
{
	LlmSlot    *slot = &channel->slots[i];
	int			procno = slot->backend_procno;
	uint32		expected = LLM_SLOT_RUNNING;
	dsa_pointer dp;

	if (pg_atomic_read_u32(&slot->state) == LLM_SLOT_ABANDONED)
	{
		release_slot(i);
		return;
	}

	dp = alloc_answer(offsetof(LlmResponseMsg, text) + len);
	if (DsaPointerIsValid(dp))
	{
		LlmResponseMsg *resp = dsa_get_address(channel_area, dp);	/* ours: mapped */

		resp->outcome = outcome;
		resp->sqlerrcode = sqlerrcode;
		resp->len = len;
		memcpy(resp->text, text, len);
	}
	else
		slot->failure = LLM_FAILURE_NO_MEMORY;
	slot->response = dp;
	pg_write_barrier();

	if (pg_atomic_compare_exchange_u32(&slot->state, &expected, LLM_SLOT_DONE))
	{
		pg_atomic_fetch_add_u64(&channel->stats.completed, 1);
		wake_procno(procno);	/* read before the CAS: see channel.h */
		return;
	}
	release_slot(i);			/* abandoned meanwhile; frees dp too */
}

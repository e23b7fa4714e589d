/*-------------------------------------------------------------------------
 *
 * channel_backend.c
 *	  The backend half of the channel: claim a slot, submit the call, wait
 *	  for its answer, take it, free the slot; or abandon it.
 *
 * runs in: backends (llm_messages, llm_complete through channel_call; the
 * llm_submit family through the handle primitives).  See channel.h for
 * the slot state machine and who frees what.
 *
 * A session may hold many calls at once (handles); it records each open
 * one, so its exit abandons them all.  An ERROR before a slot is
 * published gives the slot back at once; after, channel_call's PG_CATCH
 * abandons its call (freed at once if the worker no longer holds it,
 * otherwise left for the worker to free), while the handle API leaves the
 * decision to its caller (llm_await keeps a call on a timeout).
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <sched.h>

#include "access/htup_details.h"
#include "access/xlog.h"
#include "catalog/pg_database.h"
#include "commands/dbcommands.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "storage/ipc.h"
#include "storage/proc.h"
#include "utils/memutils.h"
#include "utils/syscache.h"
#include "utils/timestamp.h"

#include "backend/call_result.h"
#include "backend/progress.h"
#include "channel/channel_internal.h"
#include "common/llm_errors.h"
#include "llm_gateway.h"

/* how often a waiting backend checks that the worker holding its call lives */
#define LLM_LIVENESS_CHECK_MS	500

/* the backend waits this long past the call's deadline for the worker's verdict */
#define LLM_DEADLINE_GRACE_MS	2000

/*
 * The calls this session has open, indexed by slot number (a slot is
 * open in at most one session, so the index is unique).  The exit
 * callback abandons every one; channel_call's PG_CATCH abandons its own.
 */
typedef struct OpenCall
{
	bool		open;
	uint32		generation;		/* the slot's, when we claimed it */
	int			timeout_ms;		/* the call's own deadline ... */
	TimestampTz submitted;		/* ... counted from here */
} OpenCall;

static OpenCall *open_calls = NULL; /* channel->nslots entries */
static int	n_open = 0;
static bool exit_callback_registered = false;

/* how long this session's recent calls took to be answered (moving average) */
static double recent_answer_us = 0;

/*
 * Calls cannot be served here: on a standby (the worker runs only on a
 * primary, and could not write the log), or while the worker reports that
 * it cannot connect to llm.database and that database is indeed missing or
 * closed to connections.  Raised before a slot is taken, and while a
 * submitted call waits for a worker to take it.
 */
LlmWorkerProblem
channel_worker_problem(char *text, Size len)
{
	LlmWorkerProblem problem;

	channel_get();
	SpinLockAcquire(&channel->mutex);
	problem = channel->worker_problem;
	strlcpy(text, channel->worker_problem_text, len);
	SpinLockRelease(&channel->mutex);
	return problem;
}

/*
 * Does llm.database exist and accept connections?  A worker's published
 * failure to connect may be a second old: once the database is there (the
 * postmaster starts the worker again every second), callers wait for it.
 */
static bool
database_connectable(void)
{
	Oid			dbid = get_database_oid(llm_database, true);
	HeapTuple	tup;
	bool		ok;

	if (!OidIsValid(dbid))
		return false;
	tup = SearchSysCache1(DATABASEOID, ObjectIdGetDatum(dbid));
	if (!HeapTupleIsValid(tup))
		return false;
	ok = ((Form_pg_database) GETSTRUCT(tup))->datallowconn;
	ReleaseSysCache(tup);
	return ok;
}

void
channel_check_serving(void)
{
	char		text[LLM_PROBLEM_TEXT_LEN];

	if (RecoveryInProgress())
		ereport(ERROR,
				(errcode(ERRCODE_READ_ONLY_SQL_TRANSACTION),
				 errmsg("llm_gateway calls cannot be served on a standby server"),
				 errdetail("The gateway's worker runs only on the primary, where each call's audit row is written."),
				 errhint("Call the primary server.")));

	if (channel_worker_problem(text, sizeof(text)) == LLM_WORKER_CANNOT_CONNECT &&
		!database_connectable())
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("the llm_gateway worker cannot connect to database \"%s\" named by llm.database",
						llm_database),
				 errdetail_internal("%s", text),
				 errhint("Set llm.database in postgresql.conf to the database where CREATE EXTENSION llm_gateway was run, and restart the server.")));
}

/*
 * The fairness level this backend waits at (llm_fair_level of the calls it
 * held when it began to wait), -1 while it is not counted as waiting.  A
 * static, not a local: the exit callback uncounts a backend that a FATAL
 * interrupt ends in its sleep.
 */
static int	waiting_level = -1;

/*
 * Stop being counted as waiting without a slot (an ERROR or exit in the
 * sleep): a slot that was owed to us may now suit a backend at a higher
 * level that went back to sleep, so wake them to look again.
 */
static void
stop_waiting(void)
{
	if (waiting_level < 0)
		return;
	SpinLockAcquire(&channel->mutex);
	channel->waiting_by_level[waiting_level]--;
	SpinLockRelease(&channel->mutex);
	waiting_level = -1;
	ConditionVariableBroadcast(&channel->slot_freed);
}

/*
 * Under channel->mutex: may a backend at this level take a free slot now?
 * Only if the free slots outnumber the backends waiting at lower levels
 * (holding fewer calls): those are owed the slots first.
 */
static bool
slot_for_level(int level)
{
	int			owed = 0;
	int			l;

	for (l = 0; l < level; l++)
		owed += channel->waiting_by_level[l];
	return channel->nfree > owed;
}

/*
 * Claim a free slot; -1 if none is free for us and !wait, else wait
 * (interruptibly) for one.  held: the calls this session holds, which
 * ranks it behind backends holding fewer (see LLM_FAIR_LEVELS).  A
 * backend that holds calls waits too (a pipeline never errors for want of
 * a slot); the one that holds none is served first.
 */
static int
claim_slot(bool wait, int held)
{
	/* volatile: set inside PG_TRY, read after it */
	volatile int level = llm_fair_level(held);
	volatile int i = -1;
	volatile bool waited = false;

	PG_TRY();
	{
		for (;;)
		{
			SpinLockAcquire(&channel->mutex);
			if (channel->free_head >= 0 && slot_for_level(level))
			{
				i = channel->free_head;
				channel->free_head = free_next()[i];
				channel->nfree--;
				if (waiting_level >= 0)
					channel->waiting_by_level[waiting_level]--;
				waiting_level = -1;
			}
			else if (wait && waiting_level < 0)
			{
				/* counted before we sleep: a slot freed from now on is ours first */
				channel->waiting_by_level[level]++;
				waiting_level = level;
			}
			SpinLockRelease(&channel->mutex);
			if (i >= 0 || !wait)
				break;
			if (!waited)
				pg_atomic_fetch_add_u64(&channel->stats.waited_for_slot, 1);
			waited = true;

			/*
			 * The first call only prepares the sleep and returns, so the
			 * free list is read again after we are on the wait list: a
			 * release in between broadcasts to us.
			 */
			ConditionVariableSleep(&channel->slot_freed, PG_WAIT_EXTENSION);
		}
	}
	PG_CATCH();
	{
		stop_waiting();
		PG_RE_THROW();
	}
	PG_END_TRY();
	if (waited)
		ConditionVariableCancelSleep();
	return i;
}

/*
 * Give up on our call: tell the worker, or free the slot ourselves if the
 * worker is done with it.  Safe to call from an exit callback.  True if
 * the call was still in flight (the worker aborts it), false if it had
 * finished (its answer is dropped).
 */
static bool
abandon_slot(int i)
{
	LlmSlot    *slot = &channel->slots[i];

	for (;;)
	{
		uint32		st = pg_atomic_read_u32(&slot->state);

		if (st == LLM_SLOT_SUBMITTED || st == LLM_SLOT_RUNNING)
		{
			if (pg_atomic_compare_exchange_u32(&slot->state, &st, LLM_SLOT_ABANDONED))
			{
				pg_atomic_fetch_add_u64(&channel->stats.abandoned, 1);
				SpinLockAcquire(&channel->mutex);
				/* a full ring only delays the abort: the worker sees ABANDONED on finish */
				if (channel->cancel_count < cancel_ring_size())
				{
					int			pos = (channel->cancel_head + channel->cancel_count) % cancel_ring_size();

					cancel_ring()[pos].slot = i;
					cancel_ring()[pos].generation = slot->generation;
					channel->cancel_count++;
				}
				SpinLockRelease(&channel->mutex);
				wake_worker();
				return true;
			}
			continue;			/* state moved under us; look again */
		}
		if (st == LLM_SLOT_DONE)
		{
			release_slot(i);
			return false;
		}
		elog(WARNING, "llm_gateway: abandoning slot %d in unexpected state %u", i, st);
		return false;
	}
}

/*
 * In a PG_CATCH after a shared-memory operation failed: report it as
 * 53200 with the cause in the detail.  The failed operation may still hold
 * the area's LWLocks; the transaction's abort releases them.
 */
static void
rethrow_as_no_memory(MemoryContext cxt, const char *what, Size size)
{
	ErrorData  *edata;

	MemoryContextSwitchTo(cxt);
	edata = CopyErrorData();
	FlushErrorState();
	ereport(ERROR,
			(errcode(ERRCODE_OUT_OF_MEMORY),
			 size > 0 ? errmsg("no shared memory left for %s (%zu bytes)", what, size)
			 : errmsg("could not map the shared memory of %s", what),
			 errdetail_internal("%s", edata->message),
			 errhint("Raise llm.shared_memory_mb, or send a smaller history; check the space in /dev/shm.")));
}

static void
raise_worker_failure(LlmSlot *slot)
{
	if (slot->failure == LLM_FAILURE_NO_MEMORY)
		ereport(ERROR,
				(errcode(ERRCODE_OUT_OF_MEMORY),
				 errmsg("no shared memory left for the provider's answer"),
				 errdetail("The call reached the provider; llm.requests records it."),
				 errhint("Raise llm.shared_memory_mb or lower llm.max_response_bytes; check the space in /dev/shm.")));
	ereport(ERROR,
			(errcode(ERRCODE_LLM_WORKER_UNAVAILABLE),
			 errmsg("the llm_gateway worker exited while serving the call"),
			 errdetail("The call may have reached the provider; llm.requests records it."),
			 errhint("The worker restarts by itself; retry the call.")));
}

/* Copy the DONE slot's answer into result, or raise the worker's failure. */
static void
take_response(LlmSlot *slot, LlmCallResult *result)
{
	MemoryContext cxt = CurrentMemoryContext;
	LlmResponseMsg *resp = NULL;

	if (!DsaPointerIsValid(slot->response))
		raise_worker_failure(slot);
	PG_TRY();
	{
		resp = channel_address(slot->response);
	}
	PG_CATCH();
	{
		rethrow_as_no_memory(cxt, "the provider's answer", 0);
	}
	PG_END_TRY();
	result->outcome = resp->outcome;
	result->sqlerrcode = resp->sqlerrcode;
	result->len = resp->len;
	result->text = palloc(resp->len + 1);
	memcpy(result->text, resp->text, resp->len);
	result->text[resp->len] = '\0';
}

/*
 * Poll for the answer rather than sleep, while it is still in state st,
 * when this session's recent answers came within llm.poll_us and few calls
 * are in flight: a backend that is awake when its answer lands saves a
 * wake-up.  Bounded by llm.poll_us from the submission; false if it did
 * not poll.
 */
static bool
poll_for_answer(LlmSlot *slot, uint32 st, TimestampTz submitted)
{
	TimestampTz until = submitted + llm_poll_us;

	if (llm_poll_us <= 0 || recent_answer_us <= 0 || recent_answer_us > llm_poll_us ||
		channel_calls_in_flight() > LLM_POLL_MAX_IN_FLIGHT || GetCurrentTimestamp() >= until)
		return false;
	while (pg_atomic_read_u32(&slot->state) == st && !InterruptPending &&
		   GetCurrentTimestamp() < until)
		sched_yield();
	return true;
}

static void
note_answer_time(TimestampTz submitted)
{
	double		us = (double) (GetCurrentTimestamp() - submitted);

	recent_answer_us = recent_answer_us > 0 ? recent_answer_us * 0.875 + us * 0.125 : us;
}

/*
 * The worker that took our RUNNING call is gone without finishing it (it
 * was killed before its exit callback ran): finish the slot ourselves.
 * Whoever wins the CAS to DONE (we, the dead worker's callback, or the
 * next worker settling its predecessor's slots) counts it.
 */
static void
fail_orphaned_slot(LlmSlot *slot)
{
	uint32		expected = LLM_SLOT_RUNNING;

	slot->failure = LLM_FAILURE_WORKER_EXITED;
	pg_write_barrier();
	if (pg_atomic_compare_exchange_u32(&slot->state, &expected, LLM_SLOT_DONE))
		pg_atomic_fetch_add_u64(&channel->stats.completed, 1);
}

/* The worker that holds a RUNNING slot, alive? */
static bool
holder_alive(LlmSlot *slot)
{
	uint32		incarnation;
	pid_t		pid;

	SpinLockAcquire(&channel->mutex);
	incarnation = channel->worker_incarnation;
	pid = channel->worker_pid;
	SpinLockRelease(&channel->mutex);
	return pid != 0 && incarnation == slot->worker_incarnation;
}


/* The session's record of an open call; ERROR if h is not open here. */
static OpenCall *
open_call(LlmHandle h)
{
	if (!channel_handle_open(h))
		elog(ERROR, "llm_gateway: call handle %d/%u is not open in this session",
			 h.slot, h.generation);
	return &open_calls[h.slot];
}

bool
channel_handle_open(LlmHandle h)
{
	return open_calls != NULL && h.slot >= 0 && h.slot < channel->nslots &&
		open_calls[h.slot].open && open_calls[h.slot].generation == h.generation;
}

static void
close_call(int i)
{
	open_calls[i].open = false;
	n_open--;
}

/* The backend waits this long for the worker's verdict on a call. */
static TimestampTz
call_deadline(const OpenCall *oc)
{
	/* int64: timeout_ms may be INT_MAX */
	return oc->submitted + ((int64) oc->timeout_ms + LLM_DEADLINE_GRACE_MS) * INT64CONST(1000);
}

static void
backend_exit_callback(int code, Datum arg)
{
	int			i;

	if (channel == NULL)
		return;
	stop_waiting();
	if (open_calls == NULL)
		return;
	for (i = 0; i < channel->nslots && n_open > 0; i++)
		if (open_calls[i].open)
		{
			close_call(i);
			abandon_slot(i);
		}
}

static bool submit(const LlmRequestMsg *hdr, const char *data, Size data_len, int timeout_ms,
				   bool wait, LlmHandle *h);

/* How many calls one session may hold open: the GUC, within the slots. */
static int
session_call_limit(void)
{
	return Min(llm_max_handles_per_session, channel->nslots);
}

/*
 * Hand one call to the worker and return at once.
 *
 * hdr is the fixed part of the message; data (data_len bytes) follows it;
 * timeout_ms is the call's own deadline.  Waits (interruptibly) for a free
 * slot when all are taken.  The handle stays open, and the session's exit
 * abandons it, until channel_take() or channel_abandon() closes it.
 */
LlmHandle
channel_submit(const LlmRequestMsg *hdr, const char *data, Size data_len, int timeout_ms)
{
	LlmHandle	h;

	(void) submit(hdr, data, data_len, timeout_ms, true, &h);
	return h;
}

/*
 * channel_submit that never waits, for a caller that holds other calls and
 * can take their answers meanwhile (the pipeline node): false when no slot
 * is free now or the session holds its limit of calls.
 */
bool
channel_try_submit(const LlmRequestMsg *hdr, const char *data, Size data_len, int timeout_ms,
				   LlmHandle *h)
{
	return submit(hdr, data, data_len, timeout_ms, false, h);
}

/* The number of calls this session holds open. */
int
channel_session_calls(void)
{
	return n_open;
}

static bool
submit(const LlmRequestMsg *hdr, const char *data, Size data_len, int timeout_ms, bool wait,
	   LlmHandle *h)
{
	MemoryContext cxt = CurrentMemoryContext;
	Size		size = offsetof(LlmRequestMsg, data) + data_len;
	LlmSlot    *slot;
	int			i;

	channel_dsa();
	if (!exit_callback_registered)
	{
		before_shmem_exit(backend_exit_callback, (Datum) 0);
		exit_callback_registered = true;
	}
	if (open_calls == NULL)
		open_calls = MemoryContextAllocZero(TopMemoryContext,
											sizeof(OpenCall) * channel->nslots);
	/* waiting for a slot could not help: only this session frees its own */
	if (n_open >= session_call_limit() && !wait)
		return false;
	if (n_open >= session_call_limit())
		ereport(ERROR,
				(errcode(ERRCODE_CONFIGURATION_LIMIT_EXCEEDED),
				 errmsg("this session already has %d llm_gateway calls in flight", n_open),
				 errdetail("llm.max_handles_per_session is %d and llm.max_inflight is %d.",
						   llm_max_handles_per_session, channel->nslots),
				 errhint("Await or cancel some of this session's calls (llm_await, llm_cancel) before submitting more.")));

	i = claim_slot(wait, n_open);
	if (i < 0)
		return false;
	slot = &channel->slots[i];
	PG_TRY();
	{
		dsa_pointer dp = InvalidDsaPointer;
		LlmRequestMsg *msg;

		PG_TRY();
		{
			dp = channel_alloc(size);
		}
		PG_CATCH();
		{
			rethrow_as_no_memory(cxt, "the call's request", size);
		}
		PG_END_TRY();
		if (!DsaPointerIsValid(dp))
			ereport(ERROR,
					(errcode(ERRCODE_OUT_OF_MEMORY),
					 errmsg("no shared memory left for the call's request (%zu bytes)", size),
					 errdetail("llm.shared_memory_mb (%d MB) is in use by the calls in flight.",
							   llm_shared_memory_mb),
					 errhint("Raise llm.shared_memory_mb, or send a smaller history.")));
		slot->request = dp;		/* release_slot frees it from here on */
		msg = dsa_get_address(channel_area, dp);	/* ours: mapped */
		memcpy(msg, hdr, offsetof(LlmRequestMsg, data));
		memcpy(msg->data, data, data_len);
	}
	PG_CATCH();
	{
		release_slot(i);		/* not published: the worker never saw it */
		PG_RE_THROW();
	}
	PG_END_TRY();

	/* nothing below can raise, so the call is open as soon as it is published */
	slot->generation++;
	slot->backend_procno = MyProc->pgprocno;
	slot->worker_incarnation = 0;
	slot->failure = LLM_FAILURE_NONE;
	slot->response = InvalidDsaPointer;
	pg_atomic_write_u32(&slot->throttled, 0);
	/* counted before the worker can see it, so it never ends first */
	pg_atomic_fetch_add_u64(&channel->stats.submitted, 1);
	pg_write_barrier();
	pg_atomic_write_u32(&slot->state, LLM_SLOT_SUBMITTED);
	open_calls[i].open = true;
	open_calls[i].generation = slot->generation;
	open_calls[i].timeout_ms = timeout_ms;
	open_calls[i].submitted = GetCurrentTimestamp();
	n_open++;
	progress_call_submitted(i);

	SpinLockAcquire(&channel->mutex);
	submit_ring()[(channel->submit_head + channel->submit_count) % channel->nslots] = i;
	channel->submit_count++;
	SpinLockRelease(&channel->mutex);
	wake_worker();

	h->slot = i;
	h->generation = open_calls[i].generation;
	return true;
}

/*
 * Can channel_take() be called on h now: the call is DONE, or the worker
 * owes its verdict past the call's deadline (take then raises LL009)?
 * Finishes a RUNNING call whose worker died; raises when no worker can
 * come to take a SUBMITTED one.
 */
static bool
call_ready(LlmHandle h, TimestampTz now)
{
	OpenCall   *oc = open_call(h);
	LlmSlot    *slot = &channel->slots[h.slot];

	for (;;)
	{
		uint32		st = pg_atomic_read_u32(&slot->state);

		if (st == LLM_SLOT_DONE)
			return true;
		if (st == LLM_SLOT_RUNNING && !holder_alive(slot))
		{
			fail_orphaned_slot(slot);
			continue;
		}
		if (st == LLM_SLOT_SUBMITTED)
			channel_check_serving();	/* no worker can come to take it */
		return now >= call_deadline(oc);
	}
}

bool
channel_poll(LlmHandle h)
{
	return call_ready(h, GetCurrentTimestamp());
}

/*
 * Wait on the latch until one of the n open calls can be taken (see
 * channel_poll) and return its index; -1 once timeout_ms has passed
 * (timeout_ms < 0: no limit but the calls' own deadlines).  Interrupts
 * raise as usual and leave the calls open: the caller decides whether
 * to abandon them.
 */
int
channel_wait(const LlmHandle *handles, int n, int timeout_ms)
{
	TimestampTz until = timeout_ms >= 0 ?
		GetCurrentTimestamp() + (int64) timeout_ms * INT64CONST(1000) : DT_NOEND;

	for (;;)
	{
		TimestampTz wake_at = until;
		TimestampTz now = GetCurrentTimestamp();
		long		wait_ms;
		long		notice_ms;
		int			j;

		for (j = 0; j < n; j++)
		{
			if (call_ready(handles[j], now))
				return j;
			wake_at = Min(wake_at, call_deadline(&open_calls[handles[j].slot]));
		}
		if (timeout_ms >= 0 && now >= until)
			return -1;
		wait_ms = TimestampDifferenceMilliseconds(now, wake_at);
		/* llm.progress_notice: sent from here, so serial calls and pipelines both send it */
		notice_ms = progress_notice_tick();
		if (notice_ms >= 0)
			wait_ms = Min(wait_ms, notice_ms);

		if (n == 1)
		{
			LlmSlot    *slot = &channel->slots[handles[0].slot];

			if (poll_for_answer(slot, pg_atomic_read_u32(&slot->state),
								open_calls[handles[0].slot].submitted))
			{
				CHECK_FOR_INTERRUPTS();
				continue;
			}
		}
		(void) WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
						 Max(Min(wait_ms, LLM_LIVENESS_CHECK_MS), 1), PG_WAIT_EXTENSION);
		ResetLatch(MyLatch);
		CHECK_FOR_INTERRUPTS();
	}
}

/*
 * Close h, which channel_poll() found ready: copy its answer into result
 * (palloc'd) and free the slot; or raise the worker's failure, or LL009
 * if the worker owes its verdict past the deadline (the call is then
 * abandoned).  The handle is closed however this returns.
 */
void
channel_take(LlmHandle h, LlmCallResult *result)
{
	OpenCall   *oc = open_call(h);
	LlmSlot    *slot = &channel->slots[h.slot];
	int			i = h.slot;

	if (pg_atomic_read_u32(&slot->state) != LLM_SLOT_DONE)
	{
		int			timeout_ms = oc->timeout_ms;
		bool		overdue = GetCurrentTimestamp() >= call_deadline(oc);

		close_call(i);
		abandon_slot(i);
		progress_call_taken(i, NULL);
		if (!overdue)
			elog(ERROR, "llm_gateway: call in slot %d taken before it finished", i);
		ereport(ERROR,
				(errcode(ERRCODE_LLM_PROVIDER_TIMEOUT),
				 errmsg("no answer from the llm_gateway worker within %d ms", timeout_ms),
				 errhint("Check that the worker runs (llm.gateway_status()) and the server log.")));
	}
	note_answer_time(oc->submitted);
	pg_read_barrier();			/* the response before DONE */
	close_call(i);
	PG_TRY();
	{
		take_response(slot, result);
	}
	PG_CATCH();
	{
		release_slot(i);
		progress_call_taken(i, NULL);	/* the worker's failure: never raises */
		PG_RE_THROW();
	}
	PG_END_TRY();
	release_slot(i);
	llm_call_usage(result);
	progress_call_taken(i, result);
}

/*
 * Give up on h: the worker aborts the transfer (the log row says
 * cancelled).  True if the call was in flight, false if it had finished
 * (its answer is dropped) or h is not open (so a PG_CATCH may call it
 * whether or not the handle was taken).
 */
bool
channel_abandon(LlmHandle h)
{
	if (!channel_handle_open(h))
		return false;
	close_call(h.slot);
	progress_call_abandoned(h.slot);
	return abandon_slot(h.slot);
}

/*
 * One call from start to end: submit, wait, take.  Cancel,
 * statement_timeout, termination and every other ERROR abandon it.  On
 * return result holds a palloc'd copy of the answer or error, and the
 * call's log row is committed.
 */
void
channel_call(const LlmRequestMsg *hdr, const char *data, Size data_len,
			 int timeout_ms, LlmCallResult *result)
{
	LlmHandle	h = channel_submit(hdr, data, data_len, timeout_ms);

	PG_TRY();
	{
		(void) channel_wait(&h, 1, -1);
		channel_take(h, result);
	}
	PG_CATCH();
	{
		(void) channel_abandon(h);
		PG_RE_THROW();
	}
	PG_END_TRY();
}

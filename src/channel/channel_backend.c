/*-------------------------------------------------------------------------
 *
 * channel_backend.c
 *	  The backend half of the channel: claim a slot, submit the call, wait
 *	  for its answer, take it, free the slot; or abandon it.
 *
 * runs in: backends (llm_messages, llm_complete).  See channel.h for the
 * slot state machine and who frees what.
 *
 * Every ERROR after the slot is claimed (cancel, statement_timeout, the
 * call's deadline, the worker's exit, a shared-memory failure while
 * allocating the request or taking the answer) goes through one PG_CATCH
 * that gives the slot back: freed at once if the worker no longer holds
 * it, otherwise abandoned for the worker to free.
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

#include "channel/channel_internal.h"
#include "common/llm_errors.h"
#include "llm_gateway.h"

/* how often a waiting backend checks that the worker holding its call lives */
#define LLM_LIVENESS_CHECK_MS	500

/* the backend waits this long past the call's deadline for the worker's verdict */
#define LLM_DEADLINE_GRACE_MS	2000

/* the slot this process is waiting on, for the exit callback */
static int	my_slot = -1;
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

/* Wait (interruptibly) for a free slot and claim it. */
static int
claim_slot(void)
{
	int			i = -1;
	bool		waited = false;

	for (;;)
	{
		SpinLockAcquire(&channel->mutex);
		if (channel->free_head >= 0)
		{
			i = channel->free_head;
			channel->free_head = free_next()[i];
		}
		SpinLockRelease(&channel->mutex);
		if (i >= 0)
			break;
		if (!waited)
			pg_atomic_fetch_add_u64(&channel->stats.waited_for_slot, 1);
		waited = true;

		/*
		 * The first call only prepares the sleep and returns, so the free
		 * list is read again after we are on the wait list: a release in
		 * between broadcasts to us.
		 */
		ConditionVariableSleep(&channel->slot_freed, PG_WAIT_EXTENSION);
	}
	if (waited)
		ConditionVariableCancelSleep();
	return i;
}

/*
 * Give up on our call: tell the worker, or free the slot ourselves if the
 * worker is done with it.  Safe to call from an exit callback.
 */
static void
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
				return;
			}
			continue;			/* state moved under us; look again */
		}
		if (st == LLM_SLOT_DONE)
		{
			release_slot(i);
			return;
		}
		elog(WARNING, "llm_gateway: abandoning slot %d in unexpected state %u", i, st);
		return;
	}
}

static void
backend_exit_callback(int code, Datum arg)
{
	if (my_slot >= 0 && channel != NULL)
	{
		int			i = my_slot;

		my_slot = -1;
		abandon_slot(i);
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

/* Wait until the slot is DONE; raise at the deadline or an interrupt. */
static void
wait_done(LlmSlot *slot, int timeout_ms, TimestampTz submitted)
{
	/* int64: timeout_ms may be INT_MAX */
	TimestampTz deadline = submitted +
		((int64) timeout_ms + LLM_DEADLINE_GRACE_MS) * INT64CONST(1000);

	for (;;)
	{
		uint32		st = pg_atomic_read_u32(&slot->state);
		long		wait_ms;

		if (st == LLM_SLOT_DONE)
			break;
		if (st == LLM_SLOT_RUNNING && !holder_alive(slot))
		{
			fail_orphaned_slot(slot);
			continue;
		}
		if (st == LLM_SLOT_SUBMITTED)
			channel_check_serving();	/* no worker can come to take it */

		wait_ms = TimestampDifferenceMilliseconds(GetCurrentTimestamp(), deadline);
		if (wait_ms <= 0)
			ereport(ERROR,
					(errcode(ERRCODE_LLM_PROVIDER_TIMEOUT),
					 errmsg("no answer from the llm_gateway worker within %d ms", timeout_ms),
					 errhint("Check that the worker runs (llm.gateway_status()) and the server log.")));

		if (poll_for_answer(slot, st, submitted))
		{
			CHECK_FOR_INTERRUPTS();
			continue;
		}
		(void) WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
						 Min(wait_ms, LLM_LIVENESS_CHECK_MS), PG_WAIT_EXTENSION);
		ResetLatch(MyLatch);
		CHECK_FOR_INTERRUPTS();
	}
	note_answer_time(submitted);
	pg_read_barrier();			/* the response before DONE */
}

/*
 * Hand one call to the worker and wait for its answer.
 *
 * hdr is the fixed part of the message; data (data_len bytes) follows it.
 * Waits on the process latch; cancel, statement_timeout and termination
 * abandon the call (the worker aborts the transfer).  On return result
 * holds a palloc'd copy of the answer or error, and the call's log row is
 * committed.
 */
void
channel_call(const LlmRequestMsg *hdr, const char *data, Size data_len,
			 int timeout_ms, LlmCallResult *result)
{
	MemoryContext cxt = CurrentMemoryContext;
	Size		size = offsetof(LlmRequestMsg, data) + data_len;
	volatile bool published = false;
	LlmSlot    *slot;
	int			i;

	channel_dsa();
	if (!exit_callback_registered)
	{
		before_shmem_exit(backend_exit_callback, (Datum) 0);
		exit_callback_registered = true;
	}

	i = claim_slot();
	slot = &channel->slots[i];
	PG_TRY();
	{
		dsa_pointer dp = InvalidDsaPointer;
		LlmRequestMsg *msg;
		TimestampTz submitted;

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

		slot->generation++;
		slot->backend_procno = MyProc->pgprocno;
		slot->worker_incarnation = 0;
		slot->failure = LLM_FAILURE_NONE;
		slot->response = InvalidDsaPointer;
		/* counted before the worker can see it, so it never ends first */
		pg_atomic_fetch_add_u64(&channel->stats.submitted, 1);
		pg_write_barrier();
		pg_atomic_write_u32(&slot->state, LLM_SLOT_SUBMITTED);
		published = true;
		my_slot = i;

		SpinLockAcquire(&channel->mutex);
		submit_ring()[(channel->submit_head + channel->submit_count) % channel->nslots] = i;
		channel->submit_count++;
		SpinLockRelease(&channel->mutex);
		submitted = GetCurrentTimestamp();
		wake_worker();

		wait_done(slot, timeout_ms, submitted);
		take_response(slot, result);
	}
	PG_CATCH();
	{
		my_slot = -1;
		if (published)
			abandon_slot(i);
		else
			release_slot(i);
		PG_RE_THROW();
	}
	PG_END_TRY();

	my_slot = -1;
	release_slot(i);
}

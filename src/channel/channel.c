/*-------------------------------------------------------------------------
 *
 * channel.c
 *	  The shared-memory channel between calling backends and the worker.
 *
 * runs in: backends (channel_call) and the worker (channel_worker_*,
 * channel_take_*, channel_start, channel_finish).  See channel.h for the
 * slot state machine and who frees what.
 *
 * Locking: channel->mutex (a spinlock) guards the free list, both rings and
 * the worker fields; it is held for a handful of instructions only.  Slot
 * state moves by compare-and-swap outside the lock.  The DSA area has its
 * own locks.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <sched.h>

#include "miscadmin.h"
#include "pgstat.h"
#include "storage/ipc.h"
#include "storage/lwlock.h"
#include "storage/proc.h"
#include "storage/shmem.h"
#include "utils/memutils.h"
#include "utils/timestamp.h"

#include "channel/channel.h"
#include "common/llm_errors.h"
#include "llm_gateway.h"

/* first DSA segment, inside the fixed shared memory */
#define LLM_DSA_INITIAL_SIZE	(4 * 1024 * 1024)

/* how often a waiting backend checks that the worker holding its call lives */
#define LLM_LIVENESS_CHECK_MS	500

/* the longest a statement waits for its session's last log row */
#define LLM_LOGGED_WAIT_MS	5000

/* the backend waits this long past the call's deadline for the worker's verdict */
#define LLM_DEADLINE_GRACE_MS	2000

static LlmChannel *channel = NULL;
static dsa_area *area = NULL;

/* backend: the slot this process is waiting on, for the exit callback */
static int	my_slot = -1;

/* backend: the slot of its last call while the worker completes the row */
static int	detached_slot = -1;
static uint32 detached_generation = 0;
static bool exit_callback_registered = false;

/* backend: how long its recent calls took to be answered (moving average) */
static double recent_answer_us = 0;

static inline int *
free_next(void)
{
	return (int *) ((char *) channel + channel->free_next_off);
}

static inline int *
submit_ring(void)
{
	return (int *) ((char *) channel + channel->submit_ring_off);
}

static inline LlmCancelEntry *
cancel_ring(void)
{
	return (LlmCancelEntry *) ((char *) channel + channel->cancel_ring_off);
}

static inline int
cancel_ring_size(void)
{
	return channel->nslots * 2;
}

Size
channel_shmem_size(void)
{
	Size		size;

	size = MAXALIGN(add_size(offsetof(LlmChannel, slots),
							 mul_size(sizeof(LlmSlot), llm_max_inflight)));
	size = add_size(size, MAXALIGN(mul_size(sizeof(int), llm_max_inflight)));
	size = add_size(size, MAXALIGN(mul_size(sizeof(int), llm_max_inflight)));
	size = add_size(size, MAXALIGN(mul_size(sizeof(LlmCancelEntry), llm_max_inflight * 2)));
	size = add_size(size, LLM_DSA_INITIAL_SIZE);
	return size;
}

/*
 * Create or find the channel.  Called from the shmem startup hook with
 * AddinShmemInitLock held, in the postmaster (and again after a crash
 * restart, when shared memory is new).
 */
void
channel_shmem_init(void)
{
	bool		found;
	Size		off;
	int			i;
	dsa_area   *a;

	channel = ShmemInitStruct("llm_gateway channel", channel_shmem_size(), &found);
	if (found)
		return;

	memset(channel, 0, offsetof(LlmChannel, slots));
	SpinLockInit(&channel->mutex);
	channel->nslots = llm_max_inflight;
	ConditionVariableInit(&channel->slot_freed);
	pg_atomic_init_u64(&channel->stats.submitted, 0);
	pg_atomic_init_u64(&channel->stats.completed, 0);
	pg_atomic_init_u64(&channel->stats.abandoned, 0);
	pg_atomic_init_u64(&channel->stats.waited_for_slot, 0);

	off = MAXALIGN(offsetof(LlmChannel, slots) + sizeof(LlmSlot) * channel->nslots);
	channel->free_next_off = off;
	off += MAXALIGN(sizeof(int) * channel->nslots);
	channel->submit_ring_off = off;
	off += MAXALIGN(sizeof(int) * channel->nslots);
	channel->cancel_ring_off = off;
	off += MAXALIGN(sizeof(LlmCancelEntry) * channel->nslots * 2);
	channel->dsa_off = off;
	channel->dsa_size = LLM_DSA_INITIAL_SIZE;

	for (i = 0; i < channel->nslots; i++)
	{
		LlmSlot    *slot = &channel->slots[i];

		pg_atomic_init_u32(&slot->state, LLM_SLOT_FREE);
		slot->generation = 0;
		slot->backend_procno = -1;
		slot->worker_incarnation = 0;
		slot->failure = LLM_FAILURE_NONE;
		slot->request = InvalidDsaPointer;
		slot->response = InvalidDsaPointer;
		free_next()[i] = (i + 1 < channel->nslots) ? i + 1 : -1;
	}
	channel->free_head = 0;

	channel->lwlock_tranche = GetNamedLWLockTranche("llm_gateway")[0].lock.tranche;
	a = dsa_create_in_place((char *) channel + channel->dsa_off, channel->dsa_size,
							channel->lwlock_tranche, NULL);
	dsa_set_size_limit(a, (size_t) llm_shared_memory_mb * 1024 * 1024);
}

LlmChannel *
channel_get(void)
{
	bool		found;

	if (channel == NULL)
	{
		LWLockAcquire(AddinShmemInitLock, LW_EXCLUSIVE);
		channel = ShmemInitStruct("llm_gateway channel", channel_shmem_size(), &found);
		LWLockRelease(AddinShmemInitLock);
		if (!found)
			elog(ERROR, "llm_gateway shared memory is not initialised");
	}
	return channel;
}

/*
 * This process's handle on the payload area.  The handle and its mappings
 * live for the whole process: they are in TopMemoryContext and pinned, so
 * no transaction abort detaches them.
 */
dsa_area *
channel_dsa(void)
{
	if (area == NULL)
	{
		MemoryContext old = MemoryContextSwitchTo(TopMemoryContext);

		channel_get();
		area = dsa_attach_in_place((char *) channel + channel->dsa_off, NULL);
		dsa_pin_mapping(area);
		MemoryContextSwitchTo(old);
	}
	return area;
}

/* Put a slot back on the free list and wake one backend waiting for one. */
static void
release_slot(int i)
{
	LlmSlot    *slot = &channel->slots[i];

	if (DsaPointerIsValid(slot->request))
		dsa_free(area, slot->request);
	if (DsaPointerIsValid(slot->response))
		dsa_free(area, slot->response);
	slot->request = InvalidDsaPointer;
	slot->response = InvalidDsaPointer;
	slot->backend_procno = -1;
	pg_atomic_write_u32(&slot->state, LLM_SLOT_FREE);

	SpinLockAcquire(&channel->mutex);
	free_next()[i] = channel->free_head;
	channel->free_head = i;
	SpinLockRelease(&channel->mutex);

	ConditionVariableBroadcast(&channel->slot_freed);
}

/* Set the latch of the backend that holds the slot's call. */
static void
wake_backend(LlmSlot *slot)
{
	SetLatch(&GetPGProcByNumber(slot->backend_procno)->procLatch);
}

static void
wake_worker(void)
{
	Latch	   *latch;

	SpinLockAcquire(&channel->mutex);
	latch = channel->worker_latch;
	SpinLockRelease(&channel->mutex);
	if (latch)
		SetLatch(latch);
}

/* ---------------------------------------------------------------------
 * Backend side
 * ---------------------------------------------------------------------
 */

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
		ConditionVariableSleep(&channel->slot_freed, PG_WAIT_EXTENSION);
	}
	if (waited)
		ConditionVariableCancelSleep();
	return i;
}

/*
 * Give up on our call: tell the worker, or clean up ourselves if the
 * answer is already there.  Safe to call from an exit callback.
 */
static void
abandon_slot(int i)
{
	LlmSlot    *slot = &channel->slots[i];

	for (;;)
	{
		uint32		st = pg_atomic_read_u32(&slot->state);

		if (st == LLM_SLOT_SUBMITTED || st == LLM_SLOT_RUNNING || st == LLM_SLOT_ANSWERED)
		{
			if (pg_atomic_compare_exchange_u32(&slot->state, &st, LLM_SLOT_ABANDONED))
			{
				bool		queued = false;

				SpinLockAcquire(&channel->mutex);
				if (channel->cancel_count < cancel_ring_size())
				{
					int			pos = (channel->cancel_head + channel->cancel_count) % cancel_ring_size();

					cancel_ring()[pos].slot = i;
					cancel_ring()[pos].generation = slot->generation;
					channel->cancel_count++;
					queued = true;
				}
				SpinLockRelease(&channel->mutex);
				/* a full ring only delays the abort: the worker sees ABANDONED on finish */
				(void) queued;
				pg_atomic_fetch_add_u64(&channel->stats.abandoned, 1);
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
		abandon_slot(my_slot);
		my_slot = -1;
	}
}

static void
raise_worker_failure(LlmSlot *slot)
{
	if (slot->failure == LLM_FAILURE_NO_MEMORY)
		ereport(ERROR,
				(errcode(ERRCODE_LLM_RESPONSE_TOO_LARGE),
				 errmsg("no shared memory left for the provider's answer"),
				 errhint("Raise llm.shared_memory_mb or lower llm.max_response_bytes.")));
	ereport(ERROR,
			(errcode(ERRCODE_LLM_WORKER_UNAVAILABLE),
			 errmsg("the llm_gateway worker exited while serving the call"),
			 errdetail("The call may have reached the provider; llm.requests records it."),
			 errhint("The worker restarts by itself; retry the call.")));
}

/* Copy the slot's answer into result; false if the worker left none. */
static bool
take_response(LlmSlot *slot, LlmCallResult *result)
{
	LlmResponseMsg *resp;

	if (!DsaPointerIsValid(slot->response))
		return false;
	resp = dsa_get_address(area, slot->response);
	result->outcome = resp->outcome;
	result->sqlerrcode = resp->sqlerrcode;
	result->len = resp->len;
	result->text = palloc(resp->len + 1);
	memcpy(result->text, resp->text, resp->len);
	result->text[resp->len] = '\0';
	return true;
}

static uint64
calls_in_flight(void)
{
	return pg_atomic_read_u64(&channel->stats.submitted) -
		pg_atomic_read_u64(&channel->stats.completed) -
		pg_atomic_read_u64(&channel->stats.abandoned);
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
		calls_in_flight() > LLM_POLL_MAX_IN_FLIGHT || GetCurrentTimestamp() >= until)
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
 * Hand one call to the worker and wait for its answer.
 *
 * on_answer (if not NULL) runs once on the answer, as soon as it has been
 * taken: while the worker completes the call's log row when it can.
 * hdr is the fixed part of the message; data (data_len bytes) follows it.
 * Waits on the process latch; cancel, statement_timeout and termination
 * abandon the call (the worker aborts the transfer).  On return result
 * holds a palloc'd copy of the answer or error.
 */
void
channel_call(const LlmRequestMsg *hdr, const char *data, Size data_len,
			 int timeout_ms, LlmCallResult *result, LlmAnswerHook on_answer, void *arg)
{
	LlmSlot    *slot;
	dsa_pointer dp;
	int			i;
	Size		size = offsetof(LlmRequestMsg, data) + data_len;
	TimestampTz deadline;
	volatile bool answered = false; /* result holds the answer */
	TimestampTz submitted;

	channel_dsa();
	if (!exit_callback_registered)
	{
		before_shmem_exit(backend_exit_callback, (Datum) 0);
		exit_callback_registered = true;
	}

	detached_slot = -1;			/* the worker logs this call after the last one */
	i = claim_slot();
	slot = &channel->slots[i];

	dp = dsa_allocate_extended(area, size, DSA_ALLOC_NO_OOM | DSA_ALLOC_HUGE);
	if (!DsaPointerIsValid(dp))
	{
		release_slot(i);
		ereport(ERROR,
				(errcode(ERRCODE_OUT_OF_MEMORY),
				 errmsg("no shared memory left for the call's request (%zu bytes)", size),
				 errhint("Raise llm.shared_memory_mb, or send a smaller history.")));
	}
	{
		LlmRequestMsg *msg = dsa_get_address(area, dp);

		memcpy(msg, hdr, offsetof(LlmRequestMsg, data));
		memcpy(msg->data, data, data_len);
	}

	slot->generation++;
	slot->backend_procno = MyProc->pgprocno;
	slot->worker_incarnation = 0;
	slot->failure = LLM_FAILURE_NONE;
	slot->request = dp;
	slot->response = InvalidDsaPointer;
	pg_write_barrier();
	pg_atomic_write_u32(&slot->state, LLM_SLOT_SUBMITTED);

	SpinLockAcquire(&channel->mutex);
	submit_ring()[(channel->submit_head + channel->submit_count) % channel->nslots] = i;
	channel->submit_count++;
	SpinLockRelease(&channel->mutex);
	pg_atomic_fetch_add_u64(&channel->stats.submitted, 1);
	my_slot = i;
	submitted = GetCurrentTimestamp();
	wake_worker();

	deadline = TimestampTzPlusMilliseconds(submitted, timeout_ms + LLM_DEADLINE_GRACE_MS);
	PG_TRY();
	{
		for (;;)
		{
			uint32		st = pg_atomic_read_u32(&slot->state);
			long		wait_ms;
			TimestampTz now;

			if (st == LLM_SLOT_DONE)
				break;

			if (st == LLM_SLOT_ANSWERED)
			{
				/* take the answer now; the row is being completed meanwhile */
				if (!answered)
				{
					note_answer_time(submitted);
					pg_read_barrier();
					answered = take_response(slot, result);
					if (answered && on_answer)
						on_answer(result, arg);
				}
				if (answered)
				{
					/* leave the slot to the worker, which frees it once logged */
					uint32		generation = slot->generation;

					if (pg_atomic_compare_exchange_u32(&slot->state, &st, LLM_SLOT_DETACHED))
					{
						/* from here on the slot may be freed and reused at any time */
						detached_slot = i;
						detached_generation = generation;
						break;
					}
					continue;	/* DONE meanwhile (the worker was quick, or exited) */
				}
			}

			if (st == LLM_SLOT_RUNNING || st == LLM_SLOT_ANSWERED)
			{
				uint32		incarnation;
				pid_t		pid;

				SpinLockAcquire(&channel->mutex);
				incarnation = channel->worker_incarnation;
				pid = channel->worker_pid;
				SpinLockRelease(&channel->mutex);
				if (pid == 0 || incarnation != slot->worker_incarnation)
				{
					/* re-read: the exit callback may have just finished it */
					st = pg_atomic_read_u32(&slot->state);
					if (st == LLM_SLOT_DONE || (st == LLM_SLOT_ANSWERED && answered))
						break;
					slot->failure = LLM_FAILURE_WORKER_EXITED;
					raise_worker_failure(slot);
				}
			}

			now = GetCurrentTimestamp();
			wait_ms = TimestampDifferenceMilliseconds(now, deadline);
			if (wait_ms <= 0)
				ereport(ERROR,
						(errcode(ERRCODE_LLM_PROVIDER_TIMEOUT),
						 errmsg("no answer from the llm_gateway worker within %d ms", timeout_ms),
						 errhint("Check that the worker runs (llm.gateway_status()) and the server log.")));

			if ((st == LLM_SLOT_SUBMITTED || st == LLM_SLOT_RUNNING) &&
				poll_for_answer(slot, st, submitted))
			{
				CHECK_FOR_INTERRUPTS();
				continue;
			}
			(void) WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
							 Min(wait_ms, LLM_LIVENESS_CHECK_MS), PG_WAIT_EXTENSION);
			ResetLatch(MyLatch);
			CHECK_FOR_INTERRUPTS();
		}
	}
	PG_CATCH();
	{
		my_slot = -1;
		abandon_slot(i);
		PG_RE_THROW();
	}
	PG_END_TRY();

	my_slot = -1;
	pg_read_barrier();
	if (detached_slot == i)
		return;					/* DETACHED: the worker frees it */
	if (answered)
	{
		release_slot(i);
		return;
	}
	if (!take_response(slot, result))
	{
		LlmSlot		copy = *slot;

		release_slot(i);
		raise_worker_failure(&copy);
	}
	release_slot(i);
	if (on_answer)
		on_answer(result, arg);
}

/* Has this session a detached call it has not yet seen logged? */
bool
channel_call_detached(void)
{
	return detached_slot >= 0;
}

/*
 * Is this session's last call still being logged by the worker?  Once it
 * is not, the call is forgotten: statements that start later take their
 * snapshots after the row's commit.
 */
bool
channel_call_unlogged(void)
{
	LlmSlot    *slot;

	if (detached_slot < 0)
		return false;
	slot = &channel->slots[detached_slot];
	if (pg_atomic_read_u32(&slot->state) == LLM_SLOT_DETACHED &&
		slot->generation == detached_generation)
		return true;
	detached_slot = -1;
	return false;
}

/*
 * Wait until the worker has completed the log row of this session's last
 * call (at once if it has), then forget the call: at most a transaction
 * away.  A worker that exits frees the slot too, and a wait that takes
 * implausibly long gives up rather than hold the statement (the row then
 * still says "pending").
 */
void
channel_wait_logged(void)
{
	TimestampTz give_up = TimestampTzPlusMilliseconds(GetCurrentTimestamp(), LLM_LOGGED_WAIT_MS);

	while (channel_call_unlogged())
	{
		long		ms = TimestampDifferenceMilliseconds(GetCurrentTimestamp(), give_up);

		if (ms <= 0)
			break;
		(void) WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
						 Min(ms, LLM_LIVENESS_CHECK_MS), PG_WAIT_EXTENSION);
		ResetLatch(MyLatch);
		CHECK_FOR_INTERRUPTS();
	}
	detached_slot = -1;
}

/* ---------------------------------------------------------------------
 * Worker side
 * ---------------------------------------------------------------------
 */

/* Finish a RUNNING slot of a gone worker so its backend stops waiting. */
static void
fail_running_slot(int i, uint32 incarnation)
{
	LlmSlot    *slot = &channel->slots[i];
	uint32		st = pg_atomic_read_u32(&slot->state);

	if (slot->worker_incarnation != incarnation || incarnation == 0)
		return;
	/* detached: the backend has its answer; the row stays for "unknown" */
	if (st == LLM_SLOT_DETACHED)
	{
		wake_backend(slot);
		release_slot(i);
		return;
	}
	/* answered: the backend takes the answer; the row stays for "unknown" */
	if (st == LLM_SLOT_ANSWERED &&
		pg_atomic_compare_exchange_u32(&slot->state, &st, LLM_SLOT_DONE))
	{
		wake_backend(slot);
		return;
	}
	if (st == LLM_SLOT_RUNNING)
	{
		slot->failure = LLM_FAILURE_WORKER_EXITED;
		pg_write_barrier();
		if (pg_atomic_compare_exchange_u32(&slot->state, &st, LLM_SLOT_DONE))
		{
			wake_backend(slot);
			return;
		}
	}
	if (st == LLM_SLOT_ABANDONED)
		release_slot(i);
}

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
	on_shmem_exit(worker_exit_callback, (Datum) 0);
}

void
channel_worker_detach(void)
{
	uint32		mine;
	int			i;

	if (channel == NULL)
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

	slot->worker_incarnation = mine;
	return pg_atomic_compare_exchange_u32(&slot->state, &expected, LLM_SLOT_RUNNING);
}

uint32
channel_slot_generation(int i)
{
	return channel->slots[i].generation;
}

bool
channel_slot_abandoned(int i)
{
	return pg_atomic_read_u32(&channel->slots[i].state) == LLM_SLOT_ABANDONED;
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
	return dsa_get_address(area, channel->slots[i].request);
}

/*
 * Deliver the outcome of a RUNNING slot and wake its backend: ANSWERED when
 * the call's log row is still to be completed (channel_row_done follows),
 * DONE otherwise.  If the backend has gone, free everything instead.
 * Returns whether channel_row_done is owed.
 */
bool
channel_finish(int i, LlmOutcome outcome, int sqlerrcode, const char *text, Size len,
			   bool row_pending)
{
	LlmSlot    *slot = &channel->slots[i];
	dsa_pointer dp;
	uint32		expected = LLM_SLOT_RUNNING;

	if (pg_atomic_read_u32(&slot->state) == LLM_SLOT_ABANDONED)
	{
		release_slot(i);
		return false;
	}

	dp = dsa_allocate_extended(area, offsetof(LlmResponseMsg, text) + len,
							   DSA_ALLOC_NO_OOM | DSA_ALLOC_HUGE);
	if (DsaPointerIsValid(dp))
	{
		LlmResponseMsg *resp = dsa_get_address(area, dp);

		resp->outcome = outcome;
		resp->sqlerrcode = sqlerrcode;
		resp->len = len;
		memcpy(resp->text, text, len);
	}
	else
	{
		slot->failure = LLM_FAILURE_NO_MEMORY;
		row_pending = false;	/* nothing to take early */
	}
	slot->response = dp;
	pg_write_barrier();

	if (pg_atomic_compare_exchange_u32(&slot->state, &expected,
									   row_pending ? LLM_SLOT_ANSWERED : LLM_SLOT_DONE))
	{
		pg_atomic_fetch_add_u64(&channel->stats.completed, 1);
		wake_backend(slot);
		return row_pending;
	}
	release_slot(i);			/* abandoned meanwhile */
	return false;
}

/*
 * The call's log row is complete: ANSWERED -> DONE, or free the slot its
 * backend detached from or abandoned.
 */
void
channel_row_done(int i)
{
	LlmSlot    *slot = &channel->slots[i];
	uint32		expected = LLM_SLOT_ANSWERED;

	if (pg_atomic_compare_exchange_u32(&slot->state, &expected, LLM_SLOT_DONE))
		wake_backend(slot);
	else if (expected == LLM_SLOT_DETACHED)
	{
		/* a statement of that session may be waiting for this row */
		wake_backend(slot);
		release_slot(i);
	}
	else if (expected == LLM_SLOT_ABANDONED)
		release_slot(i);
}

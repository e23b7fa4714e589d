/*-------------------------------------------------------------------------
 *
 * channel_shmem.c
 *	  The channel's shared part: sizing and creating its shared memory,
 *	  the payload area (DSA), the slots' free list and the wake-ups.
 *
 * runs in: the postmaster (size, init), backends and the worker (the
 * rest).  See channel.h for the slot state machine and who frees what.
 *
 * Locking: channel->mutex (a spinlock) guards the free list, both rings
 * and the worker fields; it is held for a handful of instructions only.
 * Slot state moves by compare-and-swap outside the lock.  The DSA area has
 * its own LWLocks, which an ERROR while it grows leaves held until the
 * transaction's abort (backends) or LWLockReleaseAll (the worker).
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <limits.h>

#include "miscadmin.h"
#include "storage/lwlock.h"
#include "storage/proc.h"
#include "storage/shmem.h"
#include "utils/guc.h"
#include "utils/memutils.h"

#include "channel/channel_internal.h"
#include "llm_gateway.h"

LlmChannel *channel = NULL;
dsa_area   *channel_area = NULL;

/* llm.max_handles_per_session (see channel_submit) */
int			llm_max_handles_per_session = 256;

/*
 * llm.debug_fail_shm_alloc (developer option, superuser only, hidden):
 * the Nth payload allocation or answer mapping of this process from now
 * raises the ERROR dsm_create raises when /dev/shm is full.  In a
 * backend, 1 fails the request's allocation and 2 the taking of the
 * answer; in the worker (set in postgresql.conf), 1 fails the mapping of
 * its next call's request and 2 that call's answer allocation.  Tests use it; 0 (the default) never fails.
 */
static int	debug_fail_shm_alloc = 0;
static int	fail_countdown = 0;

static void
assign_debug_fail(int newval, void *extra)
{
	fail_countdown = newval;
}

void
channel_define_gucs(void)
{
	DefineCustomIntVariable("llm.debug_fail_shm_alloc",
							"Developer option: the Nth shared-memory payload operation from now fails.",
							"Used by the tests of the out-of-memory paths; 0 never fails.",
							&debug_fail_shm_alloc,
							0, 0, INT_MAX,
							PGC_SUSET,
							GUC_NO_SHOW_ALL | GUC_NOT_IN_SAMPLE,
							NULL, assign_debug_fail, NULL);

	/* PGC_SUSET: the bound keeps one role from taking every slot */
	DefineCustomIntVariable("llm.max_handles_per_session",
							"The most calls one session may have in flight at once (llm_submit handles included).",
							"Capped by llm.max_inflight.",
							&llm_max_handles_per_session,
							256, 1, INT_MAX,
							PGC_SUSET,
							0,
							NULL, NULL, NULL);
}

static void
injected_fault(void)
{
	if (fail_countdown > 0 && --fail_countdown == 0)
		ereport(ERROR,
				(errcode(ERRCODE_DISK_FULL),
				 errmsg("could not resize shared memory segment: No space left on device"),
				 errdetail("Raised by llm.debug_fail_shm_alloc.")));
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
		pg_atomic_init_u32(&slot->throttled, 0);
		slot->generation = 0;
		slot->backend_procno = -1;
		slot->worker_incarnation = 0;
		slot->failure = LLM_FAILURE_NONE;
		slot->request = InvalidDsaPointer;
		slot->response = InvalidDsaPointer;
		free_next()[i] = (i + 1 < channel->nslots) ? i + 1 : -1;
	}
	channel->free_head = 0;
	channel->nfree = channel->nslots;

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
 * no transaction abort detaches them (dsm_backend_shutdown does, after the
 * before_shmem_exit callbacks).
 */
dsa_area *
channel_dsa(void)
{
	if (channel_area == NULL)
	{
		MemoryContext old = MemoryContextSwitchTo(TopMemoryContext);

		channel_get();
		channel_area = dsa_attach_in_place((char *) channel + channel->dsa_off, NULL);
		dsa_pin_mapping(channel_area);
		MemoryContextSwitchTo(old);
	}
	return channel_area;
}

/*
 * A payload chunk: InvalidDsaPointer when llm.shared_memory_mb is used up;
 * an ERROR when the area cannot grow (dsm_create), possibly with the
 * area's LWLocks still held: callers catch it.
 */
dsa_pointer
channel_alloc(Size size)
{
	injected_fault();
	return dsa_allocate_extended(channel_area, size, DSA_ALLOC_NO_OOM | DSA_ALLOC_HUGE);
}

/* The address of a payload; mapping its segment can raise an ERROR. */
void *
channel_address(dsa_pointer dp)
{
	injected_fault();
	return dsa_get_address(channel_area, dp);
}

/*
 * Calls in flight: read the end counters first and submitted last, so
 * that (submitted never lagging its completions, see LlmChannelStats) the
 * difference cannot go below zero.
 */
int64
channel_calls_in_flight(void)
{
	uint64		ended;
	uint64		submitted;

	ended = pg_atomic_read_u64(&channel->stats.completed);
	ended += pg_atomic_read_u64(&channel->stats.abandoned);
	pg_read_barrier();
	submitted = pg_atomic_read_u64(&channel->stats.submitted);
	return submitted >= ended ? (int64) (submitted - ended) : 0;
}

/*
 * Put a slot back on the free list, wake the backends waiting for one,
 * then free its payloads.  The slot is back first: a payload whose
 * segment cannot be mapped here raises an ERROR in dsa_free, and that
 * must cost its memory, never the slot.
 */
void
release_slot(int i)
{
	LlmSlot    *slot = &channel->slots[i];
	dsa_pointer request = slot->request;
	dsa_pointer response = slot->response;

	slot->request = InvalidDsaPointer;
	slot->response = InvalidDsaPointer;
	slot->backend_procno = -1;
	pg_atomic_write_u32(&slot->state, LLM_SLOT_FREE);

	SpinLockAcquire(&channel->mutex);
	free_next()[i] = channel->free_head;
	channel->free_head = i;
	channel->nfree++;
	SpinLockRelease(&channel->mutex);

	ConditionVariableBroadcast(&channel->slot_freed);

	if (DsaPointerIsValid(request))
		dsa_free(channel_area, request);
	if (DsaPointerIsValid(response))
		dsa_free(channel_area, response);
}

/* Set the latch of a backend (by procno; -1: none). */
void
wake_procno(int procno)
{
	if (procno >= 0)
		SetLatch(&GetPGProcByNumber(procno)->procLatch);
}

void
wake_worker(void)
{
	Latch	   *latch;

	SpinLockAcquire(&channel->mutex);
	latch = channel->worker_latch;
	SpinLockRelease(&channel->mutex);
	if (latch)
		SetLatch(latch);
}

/*-------------------------------------------------------------------------
 *
 * log_flusher.c
 *	  The log flusher: makes the request log durable without putting a WAL
 *	  flush on the path of a call.
 *
 * runs in: the flusher background worker (llm_flusher_main) and the
 * gateway worker (logflush_request).
 *
 * With llm.durable_before_send = off (an opt-in; by default the pending
 * rows' commit is synchronous and the flusher idles), the gateway worker
 * commits its llm.requests transactions asynchronously, starts the
 * provider transfers, then asks the flusher to flush the WAL up to those
 * commits.  The flusher
 * does nothing but XLogFlush(), so the disk's flush latency overlaps the
 * provider's answer instead of adding to it.  It flushes at most every
 * llm.flush_interval_ms: a flush costs the machine more than a call's own
 * work (measured on a VM: about 100 us of CPU and exits to the host, which
 * slowed every sequential call by 80-130 us when each had its own flush),
 * so under a stream of calls one flush serves the pending rows of several;
 * a call after a quiet spell is flushed at once.
 *
 * Without a flusher attached (it is starting, or restarting after an
 * error) the gateway worker flushes itself, so durability never silently
 * falls back to the WAL writer's schedule.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <sys/resource.h>

#include "access/xlog.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "port/atomics.h"
#include "postmaster/bgworker.h"
#include "postmaster/interrupt.h"
#include "storage/ipc.h"
#include "storage/latch.h"
#include "storage/lwlock.h"
#include "storage/shmem.h"
#include "storage/spin.h"
#include "tcop/tcopprot.h"
#include "utils/guc.h"
#include "utils/timestamp.h"

#include "llm_gateway.h"
#include "worker/log_flusher.h"

typedef struct LlmLogFlusher
{
	slock_t		mutex;			/* protects latch and pid */
	Latch	   *latch;			/* the flusher's, NULL while none runs */
	pid_t		pid;
	pg_atomic_uint64 requested; /* flush the WAL at least this far */
} LlmLogFlusher;

static LlmLogFlusher *flusher = NULL;

/* the flusher's nice value (see llm_flusher_main) */
#define LLM_FLUSHER_NICE 10

PGDLLEXPORT void llm_flusher_main(Datum main_arg);

Size
logflush_shmem_size(void)
{
	return MAXALIGN(sizeof(LlmLogFlusher));
}

/* Called from the shmem startup hook with AddinShmemInitLock held. */
void
logflush_shmem_init(void)
{
	bool		found;

	flusher = ShmemInitStruct("llm_gateway log flusher", logflush_shmem_size(), &found);
	if (found)
		return;
	SpinLockInit(&flusher->mutex);
	flusher->latch = NULL;
	flusher->pid = 0;
	pg_atomic_init_u64(&flusher->requested, InvalidXLogRecPtr);
}

static LlmLogFlusher *
get_flusher(void)
{
	bool		found;

	if (flusher == NULL)
	{
		LWLockAcquire(AddinShmemInitLock, LW_EXCLUSIVE);
		flusher = ShmemInitStruct("llm_gateway log flusher", logflush_shmem_size(), &found);
		LWLockRelease(AddinShmemInitLock);
		if (!found)
			elog(ERROR, "llm_gateway shared memory is not initialised");
	}
	return flusher;
}

/* The flusher's pid, 0 while none runs (llm.gateway_status()). */
pid_t
logflush_pid(void)
{
	LlmLogFlusher *f = get_flusher();
	pid_t		pid;

	SpinLockAcquire(&f->mutex);
	pid = f->pid;
	SpinLockRelease(&f->mutex);
	return pid;
}

/*
 * Gateway worker: have the WAL up to lsn flushed soon.  Cheap when the
 * flusher is busy (its latch is only marked); flushes here when no flusher
 * is attached.
 */
void
logflush_request(XLogRecPtr lsn)
{
	LlmLogFlusher *f = get_flusher();
	uint64		cur = pg_atomic_read_u64(&f->requested);
	Latch	   *latch;

	if (XLogRecPtrIsInvalid(lsn))
		return;
	while (cur < lsn)
	{
		if (pg_atomic_compare_exchange_u64(&f->requested, &cur, lsn))
			break;
	}

	SpinLockAcquire(&f->mutex);
	latch = f->latch;
	SpinLockRelease(&f->mutex);
	if (latch)
		SetLatch(latch);
	else
		XLogFlush(lsn);
}

static void
flusher_detach(int code, Datum arg)
{
	SpinLockAcquire(&flusher->mutex);
	if (flusher->pid == MyProcPid)
	{
		flusher->latch = NULL;
		flusher->pid = 0;
	}
	SpinLockRelease(&flusher->mutex);
}

void
llm_flusher_main(Datum main_arg)
{
	TimestampTz last_flush;

	pqsignal(SIGHUP, SignalHandlerForConfigReload);
	pqsignal(SIGTERM, die);
	BackgroundWorkerUnblockSignals();

	/*
	 * No call waits for a flush, so a flush may wait for a CPU: at a lower
	 * priority the flusher's share of the kernel's I/O work gives way to
	 * the backends, the worker and whatever serves the provider.
	 */
	if (setpriority(PRIO_PROCESS, 0, LLM_FLUSHER_NICE) != 0)
		ereport(LOG,
				(errmsg("llm_gateway log flusher could not lower its priority: %m")));

	get_flusher();
	SpinLockAcquire(&flusher->mutex);
	flusher->latch = MyLatch;
	flusher->pid = MyProcPid;
	SpinLockRelease(&flusher->mutex);
	on_shmem_exit(flusher_detach, (Datum) 0);

	last_flush = 0;
	for (;;)
	{
		XLogRecPtr	target;

		/* reset before reading: a request made after the read sets it again */
		ResetLatch(MyLatch);
		CHECK_FOR_INTERRUPTS();
		if (ConfigReloadPending)
		{
			ConfigReloadPending = false;
			ProcessConfigFile(PGC_SIGHUP);
		}

		target = pg_atomic_read_u64(&flusher->requested);
		if (target > GetFlushRecPtr(NULL))
		{
			long		wait_ms = TimestampDifferenceMilliseconds(GetCurrentTimestamp(),
																  TimestampTzPlusMilliseconds(last_flush, llm_flush_interval_ms));

			/* too soon after the last flush: let more commits join the next one */
			if (wait_ms > 0)
			{
				(void) WaitLatch(MyLatch, WL_TIMEOUT | WL_EXIT_ON_PM_DEATH, wait_ms, PG_WAIT_EXTENSION);
				continue;
			}
			last_flush = GetCurrentTimestamp();
			XLogFlush(pg_atomic_read_u64(&flusher->requested));
			continue;
		}
		(void) WaitLatch(MyLatch, WL_LATCH_SET | WL_EXIT_ON_PM_DEATH, -1, PG_WAIT_EXTENSION);
	}
}

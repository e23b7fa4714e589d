/*-------------------------------------------------------------------------
 *
 * worker_timing.c
 *	  Per-call CPU cost of the worker's quota and usage-rollup work, so
 *	  make bench (and an operator, through llm.gateway_status()) can say
 *	  what each adds per call at load, apart from the call's other work.
 *
 * runs in: worker (adds), any backend (reads).
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <time.h>

#include "storage/shmem.h"
#include "storage/spin.h"

#include "worker/worker_timing.h"

typedef struct LlmWorkerTiming
{
	slock_t		mutex;			/* readers copy a kind's pair under it */
	uint64		calls[LLM_TIMED_NKINDS];
	uint64		ns[LLM_TIMED_NKINDS];
} LlmWorkerTiming;

static LlmWorkerTiming *timing = NULL;

Size
worker_timing_shmem_size(void)
{
	return MAXALIGN(sizeof(LlmWorkerTiming));
}

void
worker_timing_shmem_init(void)
{
	bool		found;

	timing = ShmemInitStruct("llm_gateway worker timing", worker_timing_shmem_size(), &found);
	if (!found)
	{
		memset(timing, 0, sizeof(LlmWorkerTiming));
		SpinLockInit(&timing->mutex);
	}
}

uint64
worker_cpu_ns(void)
{
	struct timespec ts;

	if (clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts) != 0)
		return 0;
	return (uint64) ts.tv_sec * UINT64CONST(1000000000) + (uint64) ts.tv_nsec;
}

void
worker_timing_add(LlmTimedWork kind, uint64 calls, uint64 ns)
{
	SpinLockAcquire(&timing->mutex);
	timing->calls[kind] += calls;
	timing->ns[kind] += ns;
	SpinLockRelease(&timing->mutex);
}

void
worker_timing_read(LlmTimedWork kind, uint64 *calls, uint64 *ns)
{
	SpinLockAcquire(&timing->mutex);
	*calls = timing->calls[kind];
	*ns = timing->ns[kind];
	SpinLockRelease(&timing->mutex);
}

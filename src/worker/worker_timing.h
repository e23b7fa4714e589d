/*-------------------------------------------------------------------------
 *
 * worker_timing.h
 *	  What pieces of the worker's per-call work cost in its own CPU time,
 *	  counted in shared memory for llm.gateway_status() and make bench.
 *
 *-------------------------------------------------------------------------
 */
#ifndef LLM_WORKER_TIMING_H
#define LLM_WORKER_TIMING_H

typedef enum LlmTimedWork
{
	LLM_TIMED_QUOTA,			/* quota admission + settling (quota.c) */
	LLM_TIMED_ROLLUP,			/* the usage rollup's aggregation + upsert (usage_rollup.c) */
	LLM_TIMED_NKINDS
} LlmTimedWork;

extern Size worker_timing_shmem_size(void);
extern void worker_timing_shmem_init(void);

/* the calling thread's CPU time in ns (0 if the clock is unavailable) */
extern uint64 worker_cpu_ns(void);

/* worker: `calls` calls took `ns` of its CPU time in `kind` */
extern void worker_timing_add(LlmTimedWork kind, uint64 calls, uint64 ns);

/* any process: the totals since the server started */
extern void worker_timing_read(LlmTimedWork kind, uint64 *calls, uint64 *ns);

#endif							/* LLM_WORKER_TIMING_H */

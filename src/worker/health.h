/*-------------------------------------------------------------------------
 *
 * health.h
 *	  Target health (circuit breakers) and provider load (concurrency and
 *	  rate limits), in shared memory so views can show them.
 *
 * runs in: worker (the only writer, except for resets) and backends
 * (views, llm.reset_circuit()).
 *
 *-------------------------------------------------------------------------
 */
#ifndef LLM_HEALTH_H
#define LLM_HEALTH_H

#include "utils/timestamp.h"

#define LLM_BREAKER_CLOSED		0
#define LLM_BREAKER_OPEN		1
#define LLM_BREAKER_HALF_OPEN	2	/* one probe allowed */

#define LLM_PROVIDER_NAME_LEN	64

/* Bounds of the two shared hash tables (entries are freed when idle). */
#define LLM_MAX_TARGETS		4096
#define LLM_MAX_PROVIDERS	512

/* A target with a failure history; a healthy target has no entry. */
typedef struct LlmTargetHealth
{
	int64		route_id;		/* hash key */
	int			state;
	int			consecutive_failures;
	bool		probe_in_flight;
	TimestampTz open_until;
	int64		successes;		/* since the entry was created */
	int64		failures;
	TimestampTz last_failure_at;
} LlmTargetHealth;

/* A provider with calls in flight or queued, or a bucket still refilling. */
typedef struct LlmProviderLoad
{
	char		name[LLM_PROVIDER_NAME_LEN];	/* hash key */
	int			in_flight;		/* never below 0 */
	int			queued;			/* never below 0 */
	int			max_concurrency;	/* 0 = unlimited */
	int			requests_per_minute;	/* 0 = unlimited */
	double		tokens;			/* token bucket */
	TimestampTz refilled_at;
	int64		throttled;		/* attempts that had to wait */
} LlmProviderLoad;

extern Size health_shmem_size(void);
extern void health_shmem_init(void);

/* worker start: forget what a previous worker left in flight */
extern void health_worker_started(void);

/* worker: circuit breakers */
extern bool health_allow(int64 route_id);
extern void health_report(int64 route_id, bool success, int threshold, int cooldown_ms);
extern void health_abandon(int64 route_id);

/* worker: provider limits; returns ms to wait (0 = go, -1 = wait for a slot) */
extern long provider_limits_acquire(const char *provider, int max_concurrency, int rpm);
extern void provider_limits_release(const char *provider);
extern void provider_limits_queued(const char *provider, int delta);

#endif							/* LLM_HEALTH_H */

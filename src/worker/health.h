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

#include "storage/spin.h"
#include "utils/timestamp.h"

#define LLM_BREAKER_CLOSED		0
#define LLM_BREAKER_OPEN		1
#define LLM_BREAKER_HALF_OPEN	2	/* one probe allowed */

#define LLM_PROVIDER_NAME_LEN	64

typedef struct LlmTargetHealth
{
	int64		route_id;		/* 0 = unused entry */
	int			state;
	int			consecutive_failures;
	bool		probe_in_flight;
	TimestampTz open_until;
	int64		successes;
	int64		failures;
	TimestampTz last_failure_at;
} LlmTargetHealth;

typedef struct LlmProviderLoad
{
	char		name[LLM_PROVIDER_NAME_LEN];	/* "" = unused entry */
	int			in_flight;
	int			queued;
	int			max_concurrency;	/* 0 = unlimited */
	int			requests_per_minute;	/* 0 = unlimited */
	double		tokens;			/* token bucket */
	TimestampTz refilled_at;
	int64		throttled;		/* attempts that had to wait */
} LlmProviderLoad;

typedef struct LlmHealth
{
	slock_t		mutex;
	int			ntargets;
	int			nproviders;
	LlmTargetHealth *targets_unused;	/* layout marker; arrays follow */
} LlmHealth;

extern Size health_shmem_size(void);
extern void health_shmem_init(void);

/* worker: circuit breakers */
extern bool health_allow(int64 route_id);
extern void health_report(int64 route_id, bool success, int threshold, int cooldown_ms);
extern void health_abandon(int64 route_id);

/* worker: provider limits; returns ms to wait (0 = go, -1 = wait for a slot) */
extern long provider_limits_acquire(const char *provider, int max_concurrency, int rpm);
extern void provider_limits_release(const char *provider);
extern void provider_limits_queued(const char *provider, int delta);

#endif							/* LLM_HEALTH_H */

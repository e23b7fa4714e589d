/*-------------------------------------------------------------------------
 *
 * health.c
 *	  Circuit breakers per target and load per provider (concurrency and
 *	  token-bucket rate limits), in shared memory.
 *
 * runs in: worker (decisions and updates) and backends (the views and
 * llm.reset_circuit()).
 *
 * One spinlock guards both tables; every critical section is a short
 * scan and a few assignments.  The tables are small (LLM_MAX_TARGETS
 * targets, LLM_MAX_PROVIDERS providers), so entries are found by a linear
 * scan; a target or provider that finds no free entry is simply not
 * tracked (its calls are never refused for lack of bookkeeping).
 *
 * Breaker: after llm.breaker_failures consecutive failed calls on a target
 * (each after its own retries; a route's breaker_failures option overrides
 * it, 0 disables) it opens for llm.breaker_cooldown_ms (or the route's
 * breaker_cooldown_ms) and is skipped; then one probe is let through
 * (half-open): success closes it, failure opens it again.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <math.h>

#include "catalog/pg_type.h"
#include "funcapi.h"
#include "miscadmin.h"
#include "storage/lwlock.h"
#include "storage/shmem.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/timestamp.h"

#include "worker/health.h"
#include "llm_gateway.h"

#define LLM_MAX_TARGETS		4096
#define LLM_MAX_PROVIDERS	512

static LlmHealth *health = NULL;

PG_FUNCTION_INFO_V1(llm_circuit_state);
PG_FUNCTION_INFO_V1(llm_provider_load);
PG_FUNCTION_INFO_V1(llm_reset_circuit);

static inline LlmTargetHealth *
targets(void)
{
	return (LlmTargetHealth *) ((char *) health + MAXALIGN(sizeof(LlmHealth)));
}

static inline LlmProviderLoad *
providers(void)
{
	return (LlmProviderLoad *) ((char *) targets() + MAXALIGN(sizeof(LlmTargetHealth) * LLM_MAX_TARGETS));
}

Size
health_shmem_size(void)
{
	return MAXALIGN(sizeof(LlmHealth)) +
		MAXALIGN(sizeof(LlmTargetHealth) * LLM_MAX_TARGETS) +
		MAXALIGN(sizeof(LlmProviderLoad) * LLM_MAX_PROVIDERS);
}

/* Called from the shmem startup hook with AddinShmemInitLock held. */
void
health_shmem_init(void)
{
	bool		found;

	health = ShmemInitStruct("llm_gateway health", health_shmem_size(), &found);
	if (!found)
	{
		memset(health, 0, health_shmem_size());
		SpinLockInit(&health->mutex);
		health->ntargets = LLM_MAX_TARGETS;
		health->nproviders = LLM_MAX_PROVIDERS;
	}
}

static void
attach(void)
{
	bool		found;

	if (health == NULL)
	{
		LWLockAcquire(AddinShmemInitLock, LW_EXCLUSIVE);
		health = ShmemInitStruct("llm_gateway health", health_shmem_size(), &found);
		LWLockRelease(AddinShmemInitLock);
	}
}

/* The entry of a target, created on first use; NULL if the table is full. Lock held. */
static LlmTargetHealth *
target_entry(int64 route_id)
{
	LlmTargetHealth *free_entry = NULL;
	int			i;

	for (i = 0; i < health->ntargets; i++)
	{
		LlmTargetHealth *t = &targets()[i];

		if (t->route_id == route_id)
			return t;
		if (t->route_id == 0 && free_entry == NULL)
			free_entry = t;
	}
	if (free_entry)
	{
		memset(free_entry, 0, sizeof(*free_entry));
		free_entry->route_id = route_id;
	}
	return free_entry;
}

static LlmProviderLoad *
provider_entry(const char *name)
{
	LlmProviderLoad *free_entry = NULL;
	int			i;

	for (i = 0; i < health->nproviders; i++)
	{
		LlmProviderLoad *p = &providers()[i];

		if (strncmp(p->name, name, LLM_PROVIDER_NAME_LEN) == 0)
			return p;
		if (p->name[0] == '\0' && free_entry == NULL)
			free_entry = p;
	}
	if (free_entry)
	{
		memset(free_entry, 0, sizeof(*free_entry));
		strlcpy(free_entry->name, name, LLM_PROVIDER_NAME_LEN);
	}
	return free_entry;
}

/* May the worker send an attempt to this target now? */
bool
health_allow(int64 route_id)
{
	LlmTargetHealth *t;
	bool		allow = true;

	attach();
	SpinLockAcquire(&health->mutex);
	t = target_entry(route_id);
	if (t && t->state == LLM_BREAKER_OPEN)
	{
		if (GetCurrentTimestamp() >= t->open_until)
		{
			t->state = LLM_BREAKER_HALF_OPEN;
			t->probe_in_flight = true;
		}
		else
			allow = false;
	}
	else if (t && t->state == LLM_BREAKER_HALF_OPEN)
	{
		if (t->probe_in_flight)
			allow = false;
		else
			t->probe_in_flight = true;
	}
	SpinLockRelease(&health->mutex);
	return allow;
}

/* The outcome of a target for one call (after its retries). */
void
health_report(int64 route_id, bool success, int threshold, int cooldown_ms)
{
	LlmTargetHealth *t;

	attach();
	SpinLockAcquire(&health->mutex);
	t = target_entry(route_id);
	if (t)
	{
		t->probe_in_flight = false;
		if (success)
		{
			t->successes++;
			t->consecutive_failures = 0;
			t->state = LLM_BREAKER_CLOSED;
		}
		else
		{
			t->failures++;
			t->consecutive_failures++;
			t->last_failure_at = GetCurrentTimestamp();
			if (threshold > 0 &&
				(t->state == LLM_BREAKER_HALF_OPEN || t->consecutive_failures >= threshold))
			{
				t->state = LLM_BREAKER_OPEN;
				t->open_until = TimestampTzPlusMilliseconds(GetCurrentTimestamp(), cooldown_ms);
			}
		}
	}
	SpinLockRelease(&health->mutex);
}

/* A call gave up on a target without a verdict (cancelled): free its probe. */
void
health_abandon(int64 route_id)
{
	LlmTargetHealth *t;

	attach();
	SpinLockAcquire(&health->mutex);
	t = target_entry(route_id);
	if (t)
		t->probe_in_flight = false;
	SpinLockRelease(&health->mutex);
}

/*
 * Take a slot and a token of a provider's limits.  0: go; > 0: wait that
 * many ms for the next token; -1: wait until a transfer of this provider
 * ends.  The limits come from the provider's options on every call, so a
 * change applies at once.
 */
long
provider_limits_acquire(const char *provider, int max_concurrency, int rpm)
{
	LlmProviderLoad *p;
	long		wait = 0;
	TimestampTz now = GetCurrentTimestamp();

	attach();
	SpinLockAcquire(&health->mutex);
	p = provider_entry(provider);
	if (p)
	{
		p->max_concurrency = max_concurrency;
		if (p->requests_per_minute != rpm)
		{
			/* a new or changed limit starts with one second's worth of tokens */
			p->requests_per_minute = rpm;
			p->tokens = Max(1.0, rpm / 60.0);
			p->refilled_at = now;
		}
		if (rpm > 0)
		{
			double		capacity = Max(1.0, rpm / 60.0);
			double		elapsed = (now - p->refilled_at) / 1000000.0;

			p->tokens = Min(capacity, p->tokens + elapsed * rpm / 60.0);
			p->refilled_at = now;
		}
		if (max_concurrency > 0 && p->in_flight >= max_concurrency)
			wait = -1;
		else if (rpm > 0 && p->tokens < 1.0)
			wait = (long) ceil((1.0 - p->tokens) * 60000.0 / rpm);
		else
		{
			p->in_flight++;
			if (rpm > 0)
				p->tokens -= 1.0;
		}
		if (wait != 0)
			p->throttled++;
	}
	SpinLockRelease(&health->mutex);
	return wait;
}

void
provider_limits_release(const char *provider)
{
	LlmProviderLoad *p;

	attach();
	SpinLockAcquire(&health->mutex);
	p = provider_entry(provider);
	if (p && p->in_flight > 0)
		p->in_flight--;
	SpinLockRelease(&health->mutex);
}

void
provider_limits_queued(const char *provider, int delta)
{
	LlmProviderLoad *p;

	attach();
	SpinLockAcquire(&health->mutex);
	p = provider_entry(provider);
	if (p)
		p->queued = Max(0, p->queued + delta);
	SpinLockRelease(&health->mutex);
}

/* ---------------------------------------------------------------------
 * SQL: views and reset
 * ---------------------------------------------------------------------
 */

static const char *
state_name(int state)
{
	switch (state)
	{
		case LLM_BREAKER_OPEN:
			return "open";
		case LLM_BREAKER_HALF_OPEN:
			return "half-open";
		default:
			return "closed";
	}
}

/* A consistent copy of one of the tables, for a view. */
static void *
copy_table(const void *table, Size size)
{
	void	   *copy = palloc(size);

	SpinLockAcquire(&health->mutex);
	memcpy(copy, table, size);
	SpinLockRelease(&health->mutex);
	return copy;
}

/* llm._circuit_state(): one row per tracked target */
Datum
llm_circuit_state(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	LlmTargetHealth *copy;
	int			i;

	llm_check_preloaded();
	InitMaterializedSRF(fcinfo, 0);
	attach();
	copy = copy_table(targets(), sizeof(LlmTargetHealth) * health->ntargets);

	for (i = 0; i < health->ntargets; i++)
	{
		Datum		values[7];
		bool		nulls[7] = {0};
		LlmTargetHealth *t = &copy[i];

		if (t->route_id == 0)
			continue;
		values[0] = Int64GetDatum(t->route_id);
		values[1] = CStringGetTextDatum(state_name(t->state));
		values[2] = Int32GetDatum(t->consecutive_failures);
		values[3] = TimestampTzGetDatum(t->open_until);
		nulls[3] = (t->state == LLM_BREAKER_CLOSED);
		values[4] = Int64GetDatum(t->successes);
		values[5] = Int64GetDatum(t->failures);
		values[6] = TimestampTzGetDatum(t->last_failure_at);
		nulls[6] = (t->last_failure_at == 0);
		tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, values, nulls);
	}
	return (Datum) 0;
}

/* llm._provider_load(): one row per provider the worker has sent to */
Datum
llm_provider_load(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	LlmProviderLoad *copy;
	int			i;

	llm_check_preloaded();
	InitMaterializedSRF(fcinfo, 0);
	attach();
	copy = copy_table(providers(), sizeof(LlmProviderLoad) * health->nproviders);

	for (i = 0; i < health->nproviders; i++)
	{
		Datum		values[6];
		bool		nulls[6] = {0};
		LlmProviderLoad *p = &copy[i];

		if (p->name[0] == '\0')
			continue;
		values[0] = CStringGetTextDatum(p->name);
		values[1] = Int32GetDatum(p->in_flight);
		values[2] = Int32GetDatum(p->queued);
		values[3] = Int32GetDatum(p->max_concurrency);
		nulls[3] = (p->max_concurrency == 0);
		values[4] = Int32GetDatum(p->requests_per_minute);
		nulls[4] = (p->requests_per_minute == 0);
		values[5] = Int64GetDatum(p->throttled);
		tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, values, nulls);
	}
	return (Datum) 0;
}

/* llm._reset_circuit(route_ids bigint[]): close these breakers now */
Datum
llm_reset_circuit(PG_FUNCTION_ARGS)
{
	ArrayType  *arr = PG_GETARG_ARRAYTYPE_P(0);
	Datum	   *ids;
	int			n,
				i,
				j,
				reset = 0;

	llm_check_preloaded();
	attach();
	deconstruct_array(arr, INT8OID, 8, FLOAT8PASSBYVAL, TYPALIGN_DOUBLE, &ids, NULL, &n);
	SpinLockAcquire(&health->mutex);
	for (i = 0; i < health->ntargets; i++)
		for (j = 0; j < n; j++)
			if (targets()[i].route_id != 0 && targets()[i].route_id == DatumGetInt64(ids[j]))
			{
				targets()[i].state = LLM_BREAKER_CLOSED;
				targets()[i].consecutive_failures = 0;
				targets()[i].probe_in_flight = false;
				reset++;
			}
	SpinLockRelease(&health->mutex);
	PG_RETURN_INT32(reset);
}

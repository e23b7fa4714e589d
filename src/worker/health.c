/*-------------------------------------------------------------------------
 *
 * health.c
 *	  Circuit breakers per target and load per provider (concurrency and
 *	  token-bucket rate limits), in shared memory.
 *
 * runs in: worker (decisions and updates) and backends (the views and
 * llm.reset_circuit()).
 *
 * Two shared hash tables (ShmemInitHash) under one LWLock of a named
 * tranche: targets by route id, providers by name.  The worker takes the
 * lock exclusively for a lookup and a few assignments; views take it
 * shared for one pass.  Only what is worth remembering has an entry:
 *	 - a target while its circuit is not closed, it has consecutive
 *	   failures, or a probe is out (a healthy target has none, so the hot
 *	   path of a successful call is one failed lookup);
 *	 - a provider while calls are in flight or queued, or its token bucket
 *	   is still refilling (freeing it earlier would hand out a fresh burst).
 * So the tables hold what is failing or busy, not every target ever used.
 * Their size is bounded (LLM_MAX_TARGETS, LLM_MAX_PROVIDERS); dynahash
 * would otherwise take more shared memory, so entries are counted here.
 * When a table is full, the target or provider that finds no entry is not
 * tracked: its calls are never refused or held for lack of bookkeeping
 * (no breaker, no limit), and the worker logs one WARNING.
 *
 * Counters never wrap: in_flight and queued stay >= 0, the totals are
 * 64-bit, consecutive_failures saturates.  A worker that exits leaves
 * in_flight, queued and probe flags of calls that no longer exist; the
 * next worker clears them (health_worker_started) before it serves calls.
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

#include <limits.h>
#include <math.h>

#include "catalog/pg_type.h"
#include "funcapi.h"
#include "miscadmin.h"
#include "storage/lwlock.h"
#include "storage/shmem.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/hsearch.h"
#include "utils/timestamp.h"

#include "worker/health.h"
#include "llm_gateway.h"

#define HEALTH_TRANCHE_NAME "llm_gateway_health"

typedef struct LlmHealth
{
	int			tranche_id;
	LWLock		lock;
	int			ntargets;		/* entries in use, <= LLM_MAX_TARGETS */
	int			nproviders;		/* entries in use, <= LLM_MAX_PROVIDERS */
} LlmHealth;

static LlmHealth *health = NULL;
static HTAB *target_tab = NULL;
static HTAB *provider_tab = NULL;
static bool tranche_named = false;
static bool warned_targets_full = false;
static bool warned_providers_full = false;

PG_FUNCTION_INFO_V1(llm_circuit_state);
PG_FUNCTION_INFO_V1(llm_provider_load);
PG_FUNCTION_INFO_V1(llm_reset_circuit);

Size
health_shmem_size(void)
{
	return add_size(MAXALIGN(sizeof(LlmHealth)),
					add_size(hash_estimate_size(LLM_MAX_TARGETS, sizeof(LlmTargetHealth)),
							 hash_estimate_size(LLM_MAX_PROVIDERS, sizeof(LlmProviderLoad))));
}

/* Create or attach the struct and both tables; AddinShmemInitLock held. */
static void
init_tables(void)
{
	HASHCTL		info;
	bool		found;

	health = ShmemInitStruct("llm_gateway health", sizeof(LlmHealth), &found);
	if (!found)
	{
		memset(health, 0, sizeof(LlmHealth));
		health->tranche_id = LWLockNewTrancheId();
		LWLockInitialize(&health->lock, health->tranche_id);
	}

	/* every entry preallocated: nothing is allocated while serving calls */
	memset(&info, 0, sizeof(info));
	info.keysize = sizeof(int64);
	info.entrysize = sizeof(LlmTargetHealth);
	target_tab = ShmemInitHash("llm_gateway target health", LLM_MAX_TARGETS, LLM_MAX_TARGETS,
							   &info, HASH_ELEM | HASH_BLOBS);
	memset(&info, 0, sizeof(info));
	info.keysize = LLM_PROVIDER_NAME_LEN;
	info.entrysize = sizeof(LlmProviderLoad);
	provider_tab = ShmemInitHash("llm_gateway provider load", LLM_MAX_PROVIDERS, LLM_MAX_PROVIDERS,
								 &info, HASH_ELEM | HASH_STRINGS);
}

/* Called from the shmem startup hook with AddinShmemInitLock held. */
void
health_shmem_init(void)
{
	init_tables();
}

static void
attach(void)
{
	if (health == NULL || target_tab == NULL || provider_tab == NULL)
	{
		LWLockAcquire(AddinShmemInitLock, LW_EXCLUSIVE);
		init_tables();
		LWLockRelease(AddinShmemInitLock);
	}
	if (!tranche_named)
	{
		/* names the lock's wait event in pg_stat_activity of this process */
		LWLockRegisterTranche(health->tranche_id, HEALTH_TRANCHE_NAME);
		tranche_named = true;
	}
}

static void
lock(LWLockMode mode)
{
	attach();
	LWLockAcquire(&health->lock, mode);
}

static void
unlock(void)
{
	LWLockRelease(&health->lock);
}

/* ---------------------------------------------------------------------
 * Entries (lock held exclusively)
 * ---------------------------------------------------------------------
 */

static LlmTargetHealth *
target_find(int64 route_id)
{
	return hash_search(target_tab, &route_id, HASH_FIND, NULL);
}

/* The entry of a target, created if there is room; NULL when the table is full. */
static LlmTargetHealth *
target_get(int64 route_id)
{
	LlmTargetHealth *t = target_find(route_id);
	bool		found;

	if (t != NULL)
		return t;
	if (health->ntargets >= LLM_MAX_TARGETS)
	{
		if (!warned_targets_full && IsBackgroundWorker)
		{
			warned_targets_full = true;
			ereport(WARNING,
					(errmsg("llm_gateway: the circuit breaker table is full (%d targets failing)", LLM_MAX_TARGETS),
					 errdetail("Route target " INT64_FORMAT " has no circuit breaker until entries free.", route_id)));
		}
		return NULL;
	}
	t = hash_search(target_tab, &route_id, HASH_ENTER_NULL, &found);
	if (t == NULL)
		return NULL;
	if (!found)
	{
		memset(t, 0, sizeof(*t));
		t->route_id = route_id;
		health->ntargets++;
	}
	return t;
}

/* Free a target's entry once there is nothing left to remember. */
static void
target_maybe_free(LlmTargetHealth *t)
{
	int64		key = t->route_id;

	if (t->state == LLM_BREAKER_CLOSED && t->consecutive_failures == 0 && !t->probe_in_flight)
	{
		(void) hash_search(target_tab, &key, HASH_REMOVE, NULL);
		health->ntargets--;
	}
}

static LlmProviderLoad *
provider_find(const char *name)
{
	char		key[LLM_PROVIDER_NAME_LEN];

	strlcpy(key, name, sizeof(key));
	return hash_search(provider_tab, key, HASH_FIND, NULL);
}

/* Refill a provider's bucket to now; true when it is full. */
static bool
refill(LlmProviderLoad *p, TimestampTz now)
{
	double		capacity;
	double		elapsed;

	if (p->requests_per_minute <= 0)
		return true;
	capacity = Max(1.0, p->requests_per_minute / 60.0);
	elapsed = Max(now - p->refilled_at, 0) / 1000000.0;
	p->tokens = Min(capacity, p->tokens + elapsed * p->requests_per_minute / 60.0);
	p->refilled_at = now;
	return p->tokens >= capacity;
}

static bool
provider_idle(LlmProviderLoad *p, TimestampTz now)
{
	return p->in_flight == 0 && p->queued == 0 && refill(p, now);
}

static void
provider_remove(LlmProviderLoad *p)
{
	char		key[LLM_PROVIDER_NAME_LEN];

	memcpy(key, p->name, sizeof(key));
	(void) hash_search(provider_tab, key, HASH_REMOVE, NULL);
	health->nproviders--;
}

static void
provider_maybe_free(LlmProviderLoad *p)
{
	if (provider_idle(p, GetCurrentTimestamp()))
		provider_remove(p);
}

/*
 * Free the entries of providers whose buckets refilled since their last
 * call (they could not be freed then).  Only when the table is full.
 */
static void
provider_sweep(void)
{
	HASH_SEQ_STATUS seq;
	LlmProviderLoad *p;
	TimestampTz now = GetCurrentTimestamp();

	/* dynahash allows removing the entry just returned during a scan */
	hash_seq_init(&seq, provider_tab);
	while ((p = hash_seq_search(&seq)) != NULL)
		if (provider_idle(p, now))
			provider_remove(p);
}

/* A provider's entry, created if there is room; NULL when the table is full. */
static LlmProviderLoad *
provider_get(const char *name)
{
	char		key[LLM_PROVIDER_NAME_LEN];
	LlmProviderLoad *p;
	bool		found;

	strlcpy(key, name, sizeof(key));
	p = hash_search(provider_tab, key, HASH_FIND, NULL);
	if (p != NULL)
		return p;
	if (health->nproviders >= LLM_MAX_PROVIDERS)
		provider_sweep();
	if (health->nproviders >= LLM_MAX_PROVIDERS)
	{
		if (!warned_providers_full && IsBackgroundWorker)
		{
			warned_providers_full = true;
			ereport(WARNING,
					(errmsg("llm_gateway: the provider load table is full (%d providers busy)", LLM_MAX_PROVIDERS),
					 errdetail("Provider \"%s\" is not limited until entries free.", name)));
		}
		return NULL;
	}
	p = hash_search(provider_tab, key, HASH_ENTER_NULL, &found);
	if (p == NULL)
		return NULL;
	if (!found)
	{
		memset(p, 0, sizeof(*p));
		strlcpy(p->name, key, sizeof(p->name));
		health->nproviders++;
	}
	return p;
}

/* ---------------------------------------------------------------------
 * Worker start
 * ---------------------------------------------------------------------
 */

/*
 * A new worker serves no call yet: whatever the previous one counted in
 * flight or queued, and the probes it let out, belong to calls that ended
 * with it.  Clear them, so a provider with max_concurrency 1 is not full
 * forever and a half-open circuit lets a new probe through; breaker state
 * and buckets stay (they describe the targets and providers, not calls).
 */
void
health_worker_started(void)
{
	HASH_SEQ_STATUS seq;
	LlmTargetHealth *t;
	LlmProviderLoad *p;

	lock(LW_EXCLUSIVE);
	hash_seq_init(&seq, target_tab);
	while ((t = hash_seq_search(&seq)) != NULL)
	{
		t->probe_in_flight = false;
		target_maybe_free(t);
	}
	hash_seq_init(&seq, provider_tab);
	while ((p = hash_seq_search(&seq)) != NULL)
	{
		p->in_flight = 0;
		p->queued = 0;
		provider_maybe_free(p);
	}
	unlock();
}

/* ---------------------------------------------------------------------
 * Circuit breakers
 * ---------------------------------------------------------------------
 */

/* May the worker send an attempt to this target now? */
bool
health_allow(int64 route_id)
{
	LlmTargetHealth *t;
	bool		allow = true;

	lock(LW_EXCLUSIVE);
	t = target_find(route_id);
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
	unlock();
	return allow;
}

/* The outcome of a target for one call (after its retries). */
void
health_report(int64 route_id, bool success, int threshold, int cooldown_ms)
{
	LlmTargetHealth *t;

	lock(LW_EXCLUSIVE);
	/* a success needs no entry; a failure is remembered if there is room */
	t = success ? target_find(route_id) : target_get(route_id);
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
			TimestampTz now = GetCurrentTimestamp();

			t->failures++;
			if (t->consecutive_failures < INT_MAX)
				t->consecutive_failures++;
			t->last_failure_at = now;
			if (threshold > 0 &&
				(t->state == LLM_BREAKER_HALF_OPEN || t->consecutive_failures >= threshold))
			{
				t->state = LLM_BREAKER_OPEN;
				t->open_until = TimestampTzPlusMilliseconds(now, Max(cooldown_ms, 0));
			}
		}
		target_maybe_free(t);
	}
	unlock();
}

/* A call gave up on a target without a verdict (cancelled): free its probe. */
void
health_abandon(int64 route_id)
{
	LlmTargetHealth *t;

	lock(LW_EXCLUSIVE);
	t = target_find(route_id);
	if (t)
	{
		t->probe_in_flight = false;
		target_maybe_free(t);
	}
	unlock();
}

/* ---------------------------------------------------------------------
 * Provider limits
 * ---------------------------------------------------------------------
 */

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

	lock(LW_EXCLUSIVE);
	p = provider_get(provider);
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
		(void) refill(p, now);
		if (max_concurrency > 0 && p->in_flight >= max_concurrency)
			wait = -1;
		else if (rpm > 0 && p->tokens < 1.0)
			wait = (long) ceil((1.0 - p->tokens) * 60000.0 / rpm);
		else
		{
			if (p->in_flight < INT_MAX)
				p->in_flight++;
			if (rpm > 0)
				p->tokens -= 1.0;
		}
		if (wait != 0)
			p->throttled++;
	}
	unlock();
	return wait;
}

void
provider_limits_release(const char *provider)
{
	LlmProviderLoad *p;

	lock(LW_EXCLUSIVE);
	p = provider_find(provider);
	if (p)
	{
		if (p->in_flight > 0)
			p->in_flight--;
		provider_maybe_free(p);
	}
	unlock();
}

void
provider_limits_queued(const char *provider, int delta)
{
	LlmProviderLoad *p;

	lock(LW_EXCLUSIVE);
	p = delta > 0 ? provider_get(provider) : provider_find(provider);
	if (p)
	{
		p->queued = (int) Max(0, Min((int64) p->queued + delta, (int64) INT_MAX));
		provider_maybe_free(p);
	}
	unlock();
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

/*
 * Copy up to max entries of a table into copy under the lock; rows are
 * built after, so the worker waits only for the copy.
 */
static int
copy_entries(HTAB *tab, void *copy, Size entrysize, int max)
{
	HASH_SEQ_STATUS seq;
	void	   *e;
	int			n = 0;

	lock(LW_SHARED);
	hash_seq_init(&seq, tab);
	while ((e = hash_seq_search(&seq)) != NULL)
		if (n < max)
			memcpy((char *) copy + entrysize * n++, e, entrysize);
	unlock();
	return n;
}

/* llm._circuit_state(): one row per target with a failure history */
Datum
llm_circuit_state(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	LlmTargetHealth *copy;
	LlmTargetHealth *t;
	int			n;
	int			i;

	llm_check_preloaded();
	InitMaterializedSRF(fcinfo, 0);

	copy = palloc(sizeof(LlmTargetHealth) * LLM_MAX_TARGETS);
	n = copy_entries(target_tab, copy, sizeof(LlmTargetHealth), LLM_MAX_TARGETS);

	for (i = 0; i < n; i++)
	{
		Datum		values[7];
		bool		nulls[7] = {0};

		t = &copy[i];
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

/* llm._provider_load(): one row per provider with calls in flight or queued */
Datum
llm_provider_load(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	LlmProviderLoad *copy;
	LlmProviderLoad *p;
	int			n;
	int			i;

	llm_check_preloaded();
	InitMaterializedSRF(fcinfo, 0);

	copy = palloc(sizeof(LlmProviderLoad) * LLM_MAX_PROVIDERS);
	n = copy_entries(provider_tab, copy, sizeof(LlmProviderLoad), LLM_MAX_PROVIDERS);

	for (i = 0; i < n; i++)
	{
		Datum		values[6];
		bool		nulls[6] = {0};

		p = &copy[i];
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
	bool	   *idnulls;
	int			n,
				j,
				reset = 0;

	llm_check_preloaded();
	deconstruct_array(arr, INT8OID, 8, FLOAT8PASSBYVAL, TYPALIGN_DOUBLE, &ids, &idnulls, &n);
	lock(LW_EXCLUSIVE);
	for (j = 0; j < n; j++)
	{
		LlmTargetHealth *t;

		if (idnulls[j] || (t = target_find(DatumGetInt64(ids[j]))) == NULL)
			continue;
		t->state = LLM_BREAKER_CLOSED;
		t->consecutive_failures = 0;
		t->probe_in_flight = false;
		target_maybe_free(t);
		reset++;
	}
	unlock();
	PG_RETURN_INT32(reset);
}

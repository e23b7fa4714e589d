/*-------------------------------------------------------------------------
 *
 * router.c
 *	  The routing decisions of a call: which targets the policy allows,
 *	  which one to try next, whether a failed attempt is retried, falls
 *	  over or ends the call, and the breaker's and provider limits' share
 *	  of it.
 *
 * runs in: worker.
 *
 * attempt.c runs a call's life (send, take the answer, deliver) and asks
 * this file at each fork in the road.  Nothing here touches curl or the
 * channel; the state it keeps between calls is in health.c (shared) and
 * the freed-slot counts below (this process).
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <limits.h>
#include <math.h>
#include <time.h>

#include "common/pg_prng.h"
#include "utils/memutils.h"
#include "utils/timestamp.h"
#include "utils/varlena.h"

#include "common/json_util.h"
#include "common/llm_errors.h"
#include "llm_gateway.h"
#include "worker/attempt.h"
#include "worker/health.h"
#include "worker/route_cache.h"
#include "worker/router.h"

/*
 * Provider slots freed since the worker last looked, per provider: that
 * many calls queued for that provider may try again (not every queued call,
 * which would make each release cost O(queued)).
 */
typedef struct FreedSlots
{
	char		provider[NAMEDATALEN];
	int			count;
} FreedSlots;

static FreedSlots *freed = NULL;
static int	nfreed = 0;
static int	freed_cap = 0;

static void
note_freed_slot(const char *provider)
{
	int			i;

	for (i = 0; i < nfreed; i++)
		if (strcmp(freed[i].provider, provider) == 0)
		{
			freed[i].count++;
			return;
		}
	if (nfreed == freed_cap)
	{
		freed_cap = Max(freed_cap * 2, 8);
		freed = freed ? repalloc(freed, sizeof(FreedSlots) * freed_cap)
			: MemoryContextAlloc(TopMemoryContext, sizeof(FreedSlots) * freed_cap);
	}
	strlcpy(freed[nfreed].provider, provider, NAMEDATALEN);
	freed[nfreed].count = 1;
	nfreed++;
}

/* May one call queued for this provider's slot try again? (consumes it) */
bool
take_freed_slot(const char *provider)
{
	int			i;

	for (i = 0; i < nfreed; i++)
		if (freed[i].count > 0 && strcmp(freed[i].provider, provider) == 0)
		{
			freed[i].count--;
			return true;
		}
	return false;
}

/* How many of this provider's slots freed this turn are not yet given out. */
int
freed_slots(const char *provider)
{
	int			i;

	for (i = 0; i < nfreed; i++)
		if (strcmp(freed[i].provider, provider) == 0)
			return freed[i].count;
	return 0;
}

/* Slots nobody was waiting for are simply free: forget them. */
void
forget_freed_slots(void)
{
	nfreed = 0;
}

/* Is region allowed by the caller's llm.allowed_regions ("" allows all)? */
static bool
region_allowed(const char *allowed, const char *region)
{
	char	   *copy;
	List	   *names;
	ListCell   *lc;
	bool		found = false;

	if (allowed == NULL || allowed[0] == '\0')
		return true;
	if (region == NULL)
		return false;
	copy = pstrdup(allowed);
	if (!SplitGUCList(copy, ',', &names))
		return false;
	foreach(lc, names)
		if (strcmp((char *) lfirst(lc), region) == 0)
			found = true;
	return found;
}

/*
 * The next target: the lowest priority group that still has a target not
 * exhausted, and inside it a draw by weight.  -1 when none is left.
 */
static int
choose_target(LlmWorkItem *item)
{
	int			best_priority = 0;
	bool		any = false;
	int64		total = 0;
	double		draw;
	int			i;

	for (i = 0; i < item->ncand; i++)
		if (!item->cand_done[i] && (!any || item->cand[i].priority < best_priority))
		{
			best_priority = item->cand[i].priority;
			any = true;
		}
	if (!any)
		return -1;
	for (i = 0; i < item->ncand; i++)
		if (!item->cand_done[i] && item->cand[i].priority == best_priority)
			total += item->cand[i].weight;
	draw = pg_prng_double(&pg_global_prng_state) * total;
	for (i = 0; i < item->ncand; i++)
	{
		if (item->cand_done[i] || item->cand[i].priority != best_priority)
			continue;
		draw -= item->cand[i].weight;
		if (draw < 0)
			return i;
	}
	/* rounding: the last eligible one */
	for (i = item->ncand - 1; i >= 0; i--)
		if (!item->cand_done[i] && item->cand[i].priority == best_priority)
			return i;
	return -1;
}

/* choose_target, skipping targets whose circuit is open (they count as done). */
static int
pick_target(LlmWorkItem *item)
{
	for (;;)
	{
		int			i = choose_target(item);

		if (i < 0)
			return i;
		if (health_allow(item->cand[i].route_id))
		{
			item->health_pending = true;
			return i;
		}
		item->cand_done[i] = true;
		item->skipped_open++;
	}
}

/* Tell the breaker how the current target did, with the route's settings. */
void
report_health(LlmWorkItem *item, bool success)
{
	JsonbContainer *opts = &item->target.route_options->root;
	int64		threshold = llm_breaker_failures;
	int64		cooldown = llm_breaker_cooldown_ms;

	(void) json_get_int64(opts, "breaker_failures", &threshold);
	(void) json_get_int64(opts, "breaker_cooldown_ms", &cooldown);
	health_report(item->cand[item->cur].route_id, success,
				  (int) Max(Min(threshold, INT_MAX), 0), (int) Max(Min(cooldown, INT_MAX), 1));
	item->health_pending = false;
}

/* The call leaves its target without a verdict (cancel, fatal error, deadline). */
void
abandon_health(LlmWorkItem *item)
{
	if (item->health_pending && item->cur >= 0)
		health_abandon(item->cand[item->cur].route_id);
	item->health_pending = false;
}

/* Give back the provider slot this item holds, and let waiting calls try. */
void
release_provider_slot(LlmWorkItem *item)
{
	if (item->holds_provider_slot)
	{
		provider_limits_release(item->target.provider_name);
		item->holds_provider_slot = false;
		note_freed_slot(item->target.provider_name);
	}
}

static void
switch_target(LlmWorkItem *item, int i)
{
	item->cur = i;
	item->tries_on_cur = 0;
	item->target = item->cand[i].target;
	item->has_target = true;
}

/*
 * Resolve a new call's route.  Runs inside the log batch transaction (the
 * route cache may reload).  An unknown alias, or an alias none of whose
 * targets the region policy allows, fails the call here, before anything
 * is sent.
 */
void
item_resolve(LlmWorkItem *item)
{
	const LlmRoute *route = routes_lookup(item->alias);
	MemoryContext old;
	StringInfoData regions;
	int			i;

	if (route == NULL)
	{
		item_fail(item, "error", ERRCODE_UNDEFINED_OBJECT,
				  psprintf("model alias \"%s\" does not exist", item->alias),
				  NULL, "Define it with llm.add_route(alias, provider, upstream_model).");
		return;
	}

	old = MemoryContextSwitchTo(item->cxt);
	item->cand = palloc0(sizeof(LlmRouteTarget) * route->ntargets);
	item->cand_done = palloc0(sizeof(bool) * route->ntargets);
	initStringInfo(&regions);
	for (i = 0; i < route->ntargets; i++)
	{
		const LlmRouteTarget *rt = route->targets[i];

		const char *r = rt->region ? rt->region : "(none)";
		int			j;
		bool		seen = false;

		for (j = 0; j < i; j++)
			if (strcmp(route->targets[j]->region ? route->targets[j]->region : "(none)", r) == 0)
				seen = true;
		if (!seen)
			appendStringInfo(&regions, "%s%s", regions.len > 0 ? ", " : "", r);
		if (region_allowed(item->allowed_regions, rt->region))
			routes_copy_target(rt, &item->cand[item->ncand++]);
	}
	MemoryContextSwitchTo(old);

	if (item->ncand == 0)
	{
		item_fail(item, "error", ERRCODE_INSUFFICIENT_PRIVILEGE,
				  psprintf("no target of model alias \"%s\" is in a region allowed by llm.allowed_regions",
						   item->alias),
				  psprintf("llm.allowed_regions is \"%s\"; the alias's targets are in: %s.",
						   item->allowed_regions, regions.data),
				  "Add a target in an allowed region with llm.add_route(), or ask an administrator to change the policy.");
		return;
	}

	i = pick_target(item);
	if (i < 0)
	{
		item_fail(item, "error", ERRCODE_LLM_NO_TARGET,
				  psprintf("every target of model alias \"%s\" is cooling down after failures", item->alias),
				  psprintf("%d target(s) have an open circuit; see llm.circuit_breakers.", item->skipped_open),
				  "Wait for the cool-down (llm.breaker_cooldown_ms), or close the circuits with llm.reset_circuit().");
		return;
	}
	switch_target(item, i);
	if (item->target.provider == NULL)
		item_fail(item, "error", ERRCODE_FEATURE_NOT_SUPPORTED,
				  psprintf("provider \"%s\" has kind \"%s\", which this build does not support",
						   item->target.provider_name, item->cand[item->cur].kind),
				  NULL, psprintf("Supported kinds: %s.", provider_kinds()));
}

/* A boolean route option of the current target, false when absent. */
static bool
route_option_true(LlmWorkItem *item, const char *key)
{
	JsonbValue *v = json_get(&item->target.route_options->root, key);

	return v != NULL && v->type == jbvBool && v->val.boolean;
}

/* Attempts a target gets before the call falls over (route option, else GUC). */
static int
max_attempts(LlmWorkItem *item)
{
	int64		n;

	if (json_get_int64(&item->target.route_options->root, "max_attempts", &n) && n >= 1)
		return (int) Min(n, 100);
	return llm_max_attempts;
}

/*
 * After a failed attempt: retry the same target after a backoff, fall over
 * to the next target, or give up.  Returns true when the call goes on.
 *
 * Backoff is exponential with full jitter (a random delay up to
 * retry_base_ms * 2^n, capped by retry_max_ms), and never shorter than the
 * provider's retry-after.  A wait that would pass the call's deadline, or a
 * retry-after longer than retry_max_ms, falls over instead.
 */
bool
after_failure(LlmWorkItem *item)
{
	LlmError   *err = &item->error;
	int			next;

	/* the request's own fault says nothing about the target's health */
	if (err->fail_class == LLM_FAIL_FATAL || err->fail_class == LLM_FAIL_NONE)
		return false;			/* item_finish abandons the verdict */

	/*
	 * The provider answered 2xx and did the work (and billed it), but the
	 * answer could not be read: sending the request again, here or to
	 * another target, pays twice.  Only a route that says so retries.
	 */
	if (item->unreadable && !route_option_true(item, "retry_unreadable"))
	{
		report_health(item, false);
		if (err->sqlerrcode == ERRCODE_LLM_PROVIDER_MALFORMED)
			err->hint = MemoryContextStrdup(item->cxt,
											"The provider answered, and may have billed the call, so it was not sent again; "
											"route option retry_unreadable allows retries. llm.requests.response_body keeps what came back.");
		return false;
	}
	if (err->fail_class == LLM_FAIL_RETRYABLE && item->tries_on_cur < max_attempts(item))
	{
		double		cap = Min((double) llm_retry_max_ms,
							  (double) llm_retry_base_ms * pow(2.0, item->tries_on_cur - 1));
		double		delay = pg_prng_double(&pg_global_prng_state) * cap;
		TimestampTz at;

		if (err->retry_after_s >= 0)
			delay = Max(delay, err->retry_after_s * 1000.0);
		at = TimestampTzPlusMilliseconds(GetCurrentTimestamp(), (int64) delay);
		if (delay <= llm_retry_max_ms && at < item->deadline)
		{
			item->retry_at = at;
			item->state = LLM_ITEM_WAITING;
			return true;
		}
	}

	/*
	 * A refused key (401/403): the provider's next enabled credential, each
	 * at most once for this target, before falling over.  The breaker hears
	 * nothing yet: the target answered, and the next attempt's outcome is
	 * its verdict.
	 */
	if (err->fail_class == LLM_FAIL_CREDENTIAL)
	{
		LlmRouteTarget *rt = &item->cand[item->cur];

		if (rt->credential_at + 1 < rt->ncredentials)
		{
			rt->credential_at++;
			rt->target.secret = rt->credential_secrets[rt->credential_at];
			item->target.secret = rt->target.secret;
			item->tries_on_cur = 0;
			item_retry(item);
			return true;
		}
		if (rt->ncredentials > 1)
		{
			MemoryContext old = MemoryContextSwitchTo(item->cxt);

			err->hint = psprintf("All %d enabled credentials of provider \"%s\" were refused; "
								 "replace them with llm.set_credential().",
								 rt->ncredentials, item->target.provider_name);
			MemoryContextSwitchTo(old);
		}
	}

	/* this target is done for this call: fall over */
	item->cand_done[item->cur] = true;
	report_health(item, false);
	next = pick_target(item);
	if (next < 0)
		return false;
	switch_target(item, next);
	item_retry(item);
	return true;
}

/*
 * Seconds until a rate limit resets, from the headers providers send on a
 * 429 when they give no retry-after: retry-after-ms, Anthropic's RFC 3339
 * anthropic-ratelimit-*-reset and OpenAI's Go-style durations in
 * x-ratelimit-reset-* ("1s", "6m0s", "120ms").  -1 when none says.
 */
double
rate_limit_reset_s(const LlmHttpResult *res)
{
	static const char *const anthropic[] = {
		"anthropic-ratelimit-requests-reset", "anthropic-ratelimit-tokens-reset",
		"anthropic-ratelimit-input-tokens-reset", "anthropic-ratelimit-output-tokens-reset", NULL
	};
	static const char *const openai[] = {
		"x-ratelimit-reset-requests", "x-ratelimit-reset-tokens", NULL
	};
	const char *v;
	double		best = -1;
	int			i;

	if ((v = provider_header(res, "retry-after-ms")) != NULL && atof(v) > 0)
		return atof(v) / 1000.0;
	for (i = 0; anthropic[i]; i++)
	{
		struct tm	tm;
		int			n = 0;

		memset(&tm, 0, sizeof(tm));
		if ((v = provider_header(res, anthropic[i])) != NULL &&
			sscanf(v, "%d-%d-%dT%d:%d:%d%n", &tm.tm_year, &tm.tm_mon, &tm.tm_mday,
				   &tm.tm_hour, &tm.tm_min, &tm.tm_sec, &n) == 6)
		{
			double		secs;

			tm.tm_year -= 1900;
			tm.tm_mon -= 1;
			secs = difftime(timegm(&tm), time(NULL));
			best = Max(best, Max(secs, 0));
		}
	}
	for (i = 0; openai[i]; i++)
	{
		const char *p;
		double		total = 0;
		bool		valid = false;

		if ((v = provider_header(res, openai[i])) == NULL)
			continue;
		for (p = v; *p;)
		{
			char	   *end;
			double		num = strtod(p, &end);

			if (end == p)
				break;
			p = end;
			if (strncmp(p, "ms", 2) == 0)
				total += num / 1000.0, p += 2;
			else if (*p == 'h')
				total += num * 3600, p++;
			else if (*p == 'm')
				total += num * 60, p++;
			else if (*p == 's')
				total += num, p++;
			else
				break;
			valid = true;
		}
		if (valid)
			best = Max(best, total);
	}
	return best;
}

/*-------------------------------------------------------------------------
 *
 * quota.c
 *	  Quotas: a call is admitted only if every quota that applies to it can
 *	  hold its worst case; it is settled with what it really used when it
 *	  ends.  The state is in shared memory (llm.quota_status reads it) and
 *	  rebuilt from llm.requests whenever the worker loads llm.quotas.
 *
 * runs in: worker (admission, settling, rebuild); backends (shared state,
 * windows).
 *
 * The worker is one process: admissions are serialised by construction,
 * so "used + reserved + this call's worst case <= limit" checked and
 * reserved in one step is exact under any concurrency.
 *
 * A call's *hold* records what it reserved (its worst case per metric),
 * the attributes quotas match on (role, alias, tags, the time it was
 * admitted = its row's created_at) and, once settled, what it used.  Holds
 * live until the call's row is completed (quota_forget), so a rebuild
 * (which sums the finished rows of llm.requests, and skips the pending
 * ones: they are exactly the live calls of this worker) adds them from
 * memory and nothing is counted twice or lost.
 *
 * Usage rules, the same in memory and in the rebuild's SQL:
 *	 requests	 1 if the call reached a provider (attempts > 0), else 0
 *	 input		 input_tokens + cache_read_tokens + cache_write_tokens
 *	 output		 output_tokens
 *	 total		 input + output
 *	 cost		 cost_usd
 * and a call whose real usage is unknown (its worker died: status
 * 'unknown'; cancelled or timed out after it was sent) counts its worst
 * case.  The worst case: input = the UTF-8 bytes of the request's JSON
 * (no tokenizer yields more tokens than bytes of text), output = its
 * max_tokens (or the route's default_max_tokens, capped by the route's
 * max_tokens, else LLM_QUOTA_DEFAULT_OUTPUT), cost at the most expensive
 * target the call may fall over to.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/xact.h"
#include "catalog/namespace.h"
#include "executor/spi.h"
#include "lib/ilist.h"
#include "miscadmin.h"
#include "storage/shmem.h"
#include "utils/acl.h"
#include "utils/builtins.h"
#include "utils/inval.h"
#include "utils/jsonb.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/numeric.h"
#include "utils/snapmgr.h"
#include "utils/timestamp.h"

#include "common/json_util.h"
#include "common/llm_errors.h"
#include "llm_gateway.h"
#include "worker/attempt.h"
#include "worker/quota.h"
#include "worker/worker_timing.h"

char	   *llm_quota_timezone = NULL;

static LlmQuotaState *state = NULL;

Size
quota_shmem_size(void)
{
	return MAXALIGN(sizeof(LlmQuotaState));
}

void
quota_shmem_init(void)
{
	bool		found;

	state = ShmemInitStruct("llm_gateway quotas", sizeof(LlmQuotaState), &found);
	if (!found)
	{
		memset(state, 0, sizeof(LlmQuotaState));
		SpinLockInit(&state->mutex);
	}
}

LlmQuotaState *
quota_state(void)
{
	return state;
}

const char *
quota_metric_name(int metric)
{
	static const char *const names[] = {"requests", "input_tokens", "output_tokens", "total_tokens", "cost_usd"};

	return metric >= 0 && metric < LLM_QM_COUNT ? names[metric] : "?";
}

static const char *const window_names[] = {"minute", "hour", "day", "month"};

/*
 * The calendar window holding `at`: date_trunc in llm.quota_timezone, and
 * its end the truncation of a point surely inside the next window (a day
 * is 23 to 25 hours across a DST change, a month 28 to 31 days).
 */
void
quota_window(int window, TimestampTz at, TimestampTz *start, TimestampTz *end)
{
	static const int64 step[] = {
		90 * USECS_PER_SEC, 90 * 60 * USECS_PER_SEC, 36 * USECS_PER_HOUR, 32 * USECS_PER_DAY
	};
	Datum		unit = CStringGetTextDatum(window_names[window]);
	Datum		zone = CStringGetTextDatum(llm_quota_timezone ? llm_quota_timezone : "UTC");

	*start = DatumGetTimestampTz(DirectFunctionCall3(timestamptz_trunc_zone, unit,
													 TimestampTzGetDatum(at), zone));
	*end = DatumGetTimestampTz(DirectFunctionCall3(timestamptz_trunc_zone, unit,
												   TimestampTzGetDatum(*start + step[window]), zone));
}

/* ---------------------------------------------------------------------- */
/* worker */

/* What the worker knows of a quota beyond the shared part. */
typedef struct QuotaDef
{
	char	   *role_name;
	char	   *alias;
	char	   *tag_key;
	char	   *tag_value;
	int			window;
	double		warn_at;		/* 0 = none */
	TimestampTz warned_window;	/* window start of the last warning */
} QuotaDef;

typedef struct QuotaRef
{
	int			idx;
	TimestampTz window_start;
} QuotaRef;

typedef struct LlmQuotaHold
{
	dlist_node	node;
	Oid			roleid;
	char	   *alias;
	Jsonb	   *tags;			/* NULL when none */
	TimestampTz at;				/* admitted (= the row's created_at) */
	int64		need[LLM_QM_COUNT];
	char	   *warning;		/* warn_at crossed on admission: the caller's NOTICE */
	bool		settled;
	int64		real[LLM_QM_COUNT];
	int			nrefs;
	QuotaRef	refs[LLM_MAX_QUOTAS];
} LlmQuotaHold;

static MemoryContext quota_cxt = NULL;	/* definitions; reset at each load */
static MemoryContext hold_cxt = NULL;
static QuotaDef defs[LLM_MAX_QUOTAS];
static dlist_head holds = DLIST_STATIC_INIT(holds);
static bool stale = true;
static Oid	quotas_relid = InvalidOid;
static char *loaded_tz = NULL;

static void
invalidate_callback(Datum arg, Oid relid)
{
	if (relid == InvalidOid || relid == quotas_relid)
		stale = true;
}

static void
publish(int i, const LlmQuotaShared *q)
{
	SpinLockAcquire(&state->mutex);
	state->quotas[i] = *q;
	SpinLockRelease(&state->mutex);
}

/* Does quota q (definition d) apply to the hold's call?  In a transaction (role membership). */
static bool
matches_q(const LlmQuotaShared *q, const QuotaDef *d, const LlmQuotaHold *h)
{

	switch (q->scope)
	{
		case LLM_QS_ALL:
			return true;
		case LLM_QS_ALIAS:
			return strcmp(d->alias, h->alias) == 0;
		case LLM_QS_ROLE:
			/* the catalog's membership (PostgreSQL caches it, with invalidation) */
			return OidIsValid(q->roleid) && OidIsValid(h->roleid) &&
				is_member_of_role_nosuper(h->roleid, q->roleid);
		case LLM_QS_TAG:
			{
				JsonbValue *v;

				if (h->tags == NULL || !JB_ROOT_IS_OBJECT(h->tags))
					return false;
				v = json_get(&h->tags->root, d->tag_key);
				return v != NULL && v->type == jbvString &&
					v->val.string.len == strlen(d->tag_value) &&
					memcmp(v->val.string.val, d->tag_value, v->val.string.len) == 0;
			}
	}
	return false;
}

static bool
matches(int i, const LlmQuotaHold *h)
{
	return matches_q(&state->quotas[i], &defs[i], h);
}

static int64
get_int8(HeapTuple tup, TupleDesc desc, int col)
{
	bool		isnull;
	Datum		d = SPI_getbinval(tup, desc, col, &isnull);

	return isnull ? 0 : DatumGetInt64(d);
}

static char *
get_text(HeapTuple tup, TupleDesc desc, int col)
{
	bool		isnull;
	Datum		d = SPI_getbinval(tup, desc, col, &isnull);

	return isnull ? NULL : MemoryContextStrdup(quota_cxt, TextDatumGetCString(d));
}

/*
 * What the finished rows of a quota's window in llm.requests used (see the
 * usage rules above); rows still pending are this worker's live calls,
 * counted from their holds.
 */
#define WORST	"(r.status = 'unknown' OR (r.status IN ('cancelled', 'timeout') AND r.attempts > 0))"
#define IN_BOUND "coalesce(octet_length(r.request_body::text)::numeric, $3)"
/* an embedding call's request is {"embed": ...}: no output tokens */
#define OUT_BOUND "CASE WHEN r.request_body ? 'embed' THEN 0 ELSE coalesce(CASE WHEN " \
	"jsonb_typeof(r.request_body->'max_tokens') = 'number' " \
	"THEN (r.request_body->>'max_tokens')::numeric END, " CppAsString2(LLM_QUOTA_DEFAULT_OUTPUT) ") END"
#define PRICE(k) "CASE WHEN jsonb_typeof(t.options->'" k "') = 'number' THEN (t.options->>'" k "')::numeric ELSE 0 END"

static void
rebuild_from_log(int i, LlmQuotaShared *q)
{
	const QuotaDef *d = &defs[i];
	const char *scope;
	Oid			argtypes[5] = {TIMESTAMPTZOID, TIMESTAMPTZOID, NUMERICOID, TEXTOID, TEXTOID};
	Datum		args[5];
	char		nulls[5] = {' ', ' ', ' ', 'n', 'n'};
	char	   *sql;
	int64		sums[LLM_QM_COUNT];
	int			m;

	switch (q->scope)
	{
		case LLM_QS_ROLE:
			scope = "r.role_name IN (WITH RECURSIVE m(id) AS (SELECT $4::oid UNION "
				"SELECT am.member FROM pg_catalog.pg_auth_members am JOIN m ON am.roleid = m.id) "
				"SELECT ro.rolname FROM pg_catalog.pg_roles ro JOIN m ON ro.oid = m.id)";
			args[3] = CStringGetTextDatum(psprintf("%u", q->roleid));
			nulls[3] = ' ';
			break;
		case LLM_QS_ALIAS:
			scope = "r.alias = $4";
			args[3] = CStringGetTextDatum(d->alias);
			nulls[3] = ' ';
			break;
		case LLM_QS_TAG:
			scope = "r.tags ->> $4 = $5";
			args[3] = CStringGetTextDatum(d->tag_key);
			args[4] = CStringGetTextDatum(d->tag_value);
			nulls[3] = nulls[4] = ' ';
			break;
		default:
			scope = "true";
			break;
	}
	args[0] = TimestampTzGetDatum(q->window_start);
	args[1] = TimestampTzGetDatum(q->window_end);
	args[2] = NumericGetDatum(int64_to_numeric(llm_max_request_bytes));
	sql = psprintf("SELECT coalesce(sum(CASE WHEN " WORST " OR r.attempts > 0 THEN 1 ELSE 0 END), 0)::int8,"
				   " coalesce(sum(CASE WHEN " WORST " THEN " IN_BOUND
				   " ELSE coalesce(r.input_tokens, 0) + coalesce(r.cache_read_tokens, 0) + coalesce(r.cache_write_tokens, 0) END), 0)::int8,"
				   " coalesce(sum(CASE WHEN " WORST " THEN " OUT_BOUND " ELSE coalesce(r.output_tokens, 0) END), 0)::int8,"
				   " coalesce(sum(CASE WHEN " WORST " THEN (SELECT coalesce(ceil(max((" IN_BOUND " * greatest("
				   PRICE("price_input") ", " PRICE("price_cache_read") ", " PRICE("price_cache_write") ") + "
				   OUT_BOUND " * " PRICE("price_output") ") * 10000)), 0) FROM llm.routes t WHERE t.alias = r.alias)"
				   " ELSE coalesce(r.cost_usd, 0) * 10000000000 END), 0)::int8"
				   " FROM llm.requests r"
				   " WHERE r.created_at >= $1 AND r.created_at < $2 AND r.status <> 'pending' AND %s",
				   scope);
	if (SPI_execute_with_args(sql, 5, argtypes, args, nulls, true, 1) != SPI_OK_SELECT || SPI_processed != 1)
		elog(ERROR, "could not sum the usage of quota \"%s\"", q->name);
	sums[LLM_QM_REQUESTS] = get_int8(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1);
	sums[LLM_QM_INPUT] = get_int8(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 2);
	sums[LLM_QM_OUTPUT] = get_int8(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 3);
	sums[LLM_QM_TOTAL] = sums[LLM_QM_INPUT] + sums[LLM_QM_OUTPUT];
	sums[LLM_QM_COST] = get_int8(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 4);
	m = q->metric;
	q->used = sums[m];
	q->reserved = 0;
}

/*
 * Load llm.quotas and rebuild every quota's figures for its current
 * window: the log's finished rows, then this worker's live calls.  In a
 * transaction.
 */
static void
load(void)
{
	Oid			nsp = get_namespace_oid("llm", true);
	TimestampTz now = GetCurrentTransactionStartTimestamp();
	static LlmQuotaShared building[LLM_MAX_QUOTAS];
	int			n = 0;
	int			i;
	uint64		r;
	dlist_iter	it;

	stale = false;
	quotas_relid = OidIsValid(nsp) ? get_relname_relid("quotas", nsp) : InvalidOid;
	MemoryContextReset(quota_cxt);
	loaded_tz = MemoryContextStrdup(quota_cxt, llm_quota_timezone ? llm_quota_timezone : "UTC");
	if (OidIsValid(quotas_relid))
	{
		if (SPI_connect() != SPI_OK_CONNECT)
			elog(ERROR, "SPI_connect failed");
		if (SPI_execute("SELECT name, scope, role_name, alias, tag_key, tag_value, time_window, metric,"
						" (CASE WHEN metric = 'cost_usd' THEN quota_limit * 10000000000 ELSE quota_limit END)::int8,"
						" coalesce(warn_at, 0)::float8"
						" FROM llm.quotas ORDER BY name LIMIT " CppAsString2(LLM_MAX_QUOTAS),
						true, 0) != SPI_OK_SELECT)
			elog(ERROR, "could not read llm.quotas");
		for (r = 0; r < SPI_processed; r++)
		{
			HeapTuple	tup = SPI_tuptable->vals[r];
			TupleDesc	desc = SPI_tuptable->tupdesc;
			LlmQuotaShared q;
			QuotaDef   *d = &defs[n];
			char	   *scope = get_text(tup, desc, 2);
			char	   *window = get_text(tup, desc, 7);
			char	   *metric = get_text(tup, desc, 8);
			bool		isnull;
			int			k;

			memset(&q, 0, sizeof(q));
			memset(d, 0, sizeof(*d));
			strlcpy(q.name, get_text(tup, desc, 1), sizeof(q.name));
			q.scope = strcmp(scope, "role") == 0 ? LLM_QS_ROLE :
				strcmp(scope, "alias") == 0 ? LLM_QS_ALIAS :
				strcmp(scope, "tag") == 0 ? LLM_QS_TAG : LLM_QS_ALL;
			d->role_name = get_text(tup, desc, 3);
			d->alias = get_text(tup, desc, 4);
			d->tag_key = get_text(tup, desc, 5);
			d->tag_value = get_text(tup, desc, 6);
			/* a dropped role: the quota matches nobody until it exists again */
			q.roleid = d->role_name ? get_role_oid(d->role_name, true) : InvalidOid;
			for (k = 0; k < lengthof(window_names); k++)
				if (strcmp(window, window_names[k]) == 0)
					d->window = q.window = k;
			for (k = 0; k < LLM_QM_COUNT; k++)
				if (strcmp(metric, quota_metric_name(k)) == 0)
					q.metric = k;
			q.limit = get_int8(tup, desc, 9);
			d->warn_at = DatumGetFloat8(SPI_getbinval(tup, desc, 10, &isnull));
			quota_window(d->window, now, &q.window_start, &q.window_end);
			building[n] = q;
			n++;
		}
		for (i = 0; i < n; i++)
			rebuild_from_log(i, &building[i]);
		SPI_finish();
	}

	/* the live calls: settled ones as used, the others as reserved */
	dlist_foreach(it, &holds)
	{
		LlmQuotaHold *h = dlist_container(LlmQuotaHold, node, it.cur);

		h->nrefs = 0;
		for (i = 0; i < n; i++)
		{
			LlmQuotaShared *q = &building[i];

			if (h->at < q->window_start || h->at >= q->window_end || !matches_q(q, &defs[i], h))
				continue;
			if (h->settled)
				q->used += h->real[q->metric];
			else
				q->reserved += h->need[q->metric];
			h->refs[h->nrefs].idx = i;
			h->refs[h->nrefs].window_start = q->window_start;
			h->nrefs++;
		}
	}

	/* no extension yet: look again at the next call (an invalidation names no known table) */
	if (!OidIsValid(quotas_relid))
		stale = true;

	SpinLockAcquire(&state->mutex);
	memcpy(state->quotas, building, sizeof(LlmQuotaShared) * n);
	state->nquotas = n;
	state->loaded = true;
	SpinLockRelease(&state->mutex);
	ereport(DEBUG1, (errmsg("llm_gateway worker: loaded %d quota(s)", n)));
}

static void
ensure_loaded(void)
{
	if (strcmp(loaded_tz ? loaded_tz : "", llm_quota_timezone ? llm_quota_timezone : "UTC") != 0)
		stale = true;
	if (stale)
		load();
}

/*
 * At worker start, after the previous worker's pending rows were marked
 * unknown: load the quotas and rebuild their figures, so a restart neither
 * forgets usage nor keeps the dead worker's reservations (its calls count
 * at their worst case, as rows of status unknown).
 */
void
quota_worker_start(void)
{
	MemoryContext old = CurrentMemoryContext;

	quota_cxt = AllocSetContextCreate(TopMemoryContext, "llm quotas", ALLOCSET_SMALL_SIZES);
	hold_cxt = AllocSetContextCreate(TopMemoryContext, "llm quota holds", ALLOCSET_DEFAULT_SIZES);
	CacheRegisterRelcacheCallback(invalidate_callback, (Datum) 0);

	PG_TRY();
	{
		StartTransactionCommand();
		PushActiveSnapshot(GetTransactionSnapshot());
		load();
		PopActiveSnapshot();
		CommitTransactionCommand();
	}
	PG_CATCH();
	{
		ErrorData  *edata;

		MemoryContextSwitchTo(old);
		edata = CopyErrorData();
		FlushErrorState();
		AbortCurrentTransaction();
		stale = true;			/* the first call loads them again */
		ereport(LOG, (errmsg("llm_gateway worker: could not load llm.quotas: %s", edata->message)));
		FreeErrorData(edata);
	}
	PG_END_TRY();
	MemoryContextSwitchTo(old);
}

/* ceil(price * tokens / 1e6 USD) in units of 1e-10 USD */
static int64
price_units(JsonbContainer *opts, const char *key, int64 tokens)
{
	JsonbValue *v = json_get(opts, key);
	Datum		price;

	if (v == NULL || v->type != jbvNumeric || numeric_is_nan(v->val.numeric))
		return 0;
	price = NumericGetDatum(v->val.numeric);
	/* an out-of-range price fails the call when its cost is computed: bound it */
	if (DatumGetInt32(DirectFunctionCall2(numeric_cmp, price,
										  NumericGetDatum(int64_to_numeric(0)))) < 0)
		return 0;
	if (DatumGetInt32(DirectFunctionCall2(numeric_cmp, price,
										  NumericGetDatum(int64_to_numeric(1000000)))) > 0)
		price = NumericGetDatum(int64_to_numeric(1000000));
	price = DirectFunctionCall2(numeric_mul, price, NumericGetDatum(int64_to_numeric(tokens)));
	price = DirectFunctionCall2(numeric_mul, price, NumericGetDatum(int64_to_numeric(10000)));
	price = DirectFunctionCall1(numeric_ceil, price);
	return DatumGetInt64(DirectFunctionCall1(numeric_int8, price));
}

/* The output bound on one target, as provider_max_tokens() settles it. */
static int64
output_bound(const LlmWorkItem *item, JsonbContainer *opts)
{
	int64		wanted = -1;
	int64		v;

	if (item->embed)
		return 0;				/* an embedding has no output tokens */
	if (!json_get_int64(&item->request->root, "max_tokens", &wanted) || wanted < 0)
		wanted = json_get_int64(opts, "default_max_tokens", &v) && v >= 0 ? v : LLM_QUOTA_DEFAULT_OUTPUT;
	if (json_get_int64(opts, "max_tokens", &v) && v >= 0 && wanted > v)
		wanted = v;
	return wanted;
}

/* The call's worst case, over every target it may fall over to. */
static void
worst_case(const LlmWorkItem *item, int64 *need)
{
	char	   *text = JsonbToCString(NULL, (JsonbContainer *) &item->request->root, VARSIZE(item->request));
	int64		in = strlen(text);
	int			i;

	pfree(text);
	need[LLM_QM_REQUESTS] = 1;
	need[LLM_QM_INPUT] = in;
	need[LLM_QM_OUTPUT] = 0;
	need[LLM_QM_COST] = 0;
	for (i = 0; i < item->ncand; i++)
	{
		JsonbContainer *opts = &item->cand[i].target.route_options->root;
		int64		out = output_bound(item, opts);
		int64		in_units = Max(price_units(opts, "price_input", in),
								   Max(price_units(opts, "price_cache_read", in),
									   price_units(opts, "price_cache_write", in)));

		need[LLM_QM_OUTPUT] = Max(need[LLM_QM_OUTPUT], out);
		need[LLM_QM_COST] = Max(need[LLM_QM_COST], in_units + price_units(opts, "price_output", out));
	}
	need[LLM_QM_TOTAL] = need[LLM_QM_INPUT] + need[LLM_QM_OUTPUT];
}

static char *
format_amount(int metric, int64 v)
{
	if (metric == LLM_QM_COST)
	{
		Datum		n = DirectFunctionCall2(numeric_div, NumericGetDatum(int64_to_numeric(v)),
											NumericGetDatum(int64_to_numeric(LLM_QUOTA_COST_SCALE)));

		n = DirectFunctionCall1(numeric_trim_scale, n);
		return psprintf("%s USD", DatumGetCString(DirectFunctionCall1(numeric_out, n)));
	}
	return psprintf(INT64_FORMAT, v);
}

/* A time in llm.quota_timezone, e.g. "2026-12-03 00:00:00 UTC". */
static char *
format_time(TimestampTz t)
{
	Datum		local = DirectFunctionCall2(timestamptz_zone, CStringGetTextDatum(loaded_tz),
											TimestampTzGetDatum(t));

	return psprintf("%s %s", DatumGetCString(DirectFunctionCall1(timestamp_out, local)), loaded_tz);
}

static char *
scope_text(int i)
{
	const LlmQuotaShared *q = &state->quotas[i];

	switch (q->scope)
	{
		case LLM_QS_ROLE:
			return psprintf("role \"%s\"", defs[i].role_name);
		case LLM_QS_ALIAS:
			return psprintf("model alias \"%s\"", defs[i].alias);
		case LLM_QS_TAG:
			return psprintf("tag %s = \"%s\"", defs[i].tag_key, defs[i].tag_value);
		default:
			return pstrdup("all calls");
	}
}

/*
 * Admit the call or refuse it (LL014, nothing sent).  Runs in the pending
 * row's transaction, once the route is resolved (the targets' prices bound
 * the cost).  Everything that can fail comes before the first reservation.
 */
static void admit(LlmWorkItem *item);
static void settle(LlmWorkItem *item);

/*
 * The quota work of one call is timed in CPU time of the worker
 * (admission plus settling), so make bench can say what quotas cost per
 * call; counted once per call, at settling.
 */
static uint64 quota_cpu_ns;

void
quota_admit(LlmWorkItem *item)
{
	uint64		start = worker_cpu_ns();

	admit(item);
	quota_cpu_ns += worker_cpu_ns() - start;
}

void
quota_settle(LlmWorkItem *item)
{
	uint64		start = worker_cpu_ns();

	settle(item);
	worker_timing_add(LLM_TIMED_QUOTA, 1, quota_cpu_ns + (worker_cpu_ns() - start));
	quota_cpu_ns = 0;
}

static void
admit(LlmWorkItem *item)
{
	LlmQuotaHold *h;
	int			i;
	int			refuse = -1;
	MemoryContext old;

	ensure_loaded();
	old = MemoryContextSwitchTo(hold_cxt);
	h = palloc0(sizeof(LlmQuotaHold));
	h->roleid = get_role_oid(item->role, true);
	h->alias = pstrdup(item->alias);
	h->at = GetCurrentTransactionStartTimestamp();
	MemoryContextSwitchTo(old);
	if (item->tags)
	{
		char	   *why;
		/* parsed in the transaction's memory (the parser's scraps go with it) */
		Jsonb	   *tags = json_parse_safe(item->tags, strlen(item->tags), &why);

		/* the backend validated them; unreadable tags match no tag quota */
		if (tags)
		{
			h->tags = MemoryContextAlloc(hold_cxt, VARSIZE(tags));
			memcpy(h->tags, tags, VARSIZE(tags));
		}
	}
	worst_case(item, h->need);

	for (i = 0; i < state->nquotas; i++)
	{
		LlmQuotaShared *q = &state->quotas[i];

		if (!matches(i, h))
			continue;
		if (h->at >= q->window_end || h->at < q->window_start)
		{
			/* a new window: calls of the old one settle into nothing */
			LlmQuotaShared nq = *q;

			quota_window(defs[i].window, h->at, &nq.window_start, &nq.window_end);
			nq.used = nq.reserved = 0;
			publish(i, &nq);
		}
		if (q->used + q->reserved + h->need[q->metric] > q->limit)
		{
			refuse = i;
			break;
		}
		h->refs[h->nrefs].idx = i;
		h->refs[h->nrefs].window_start = q->window_start;
		h->nrefs++;
	}

	if (refuse >= 0)
	{
		LlmQuotaShared *q = &state->quotas[refuse];

		item_fail(item, "error", ERRCODE_LLM_QUOTA_EXCEEDED,
				  psprintf("quota \"%s\" exceeded: %s of %s per %s",
						   q->name, quota_metric_name(q->metric), scope_text(refuse),
						   window_names[defs[refuse].window]),
				  psprintf("Used %s, reserved %s by calls in flight, this call needs up to %s; the limit is %s in the window from %s to %s.",
						   format_amount(q->metric, q->used), format_amount(q->metric, q->reserved),
						   format_amount(q->metric, h->need[q->metric]), format_amount(q->metric, q->limit),
						   format_time(q->window_start), format_time(q->window_end)),
				  psprintf("The window resets at %s; an administrator can raise the limit with llm.set_quota().",
						   format_time(q->window_end)));
		pfree(h);
		return;
	}

	/* admitted: reserve (nothing below can fail) */
	for (i = 0; i < h->nrefs; i++)
	{
		int			k = h->refs[i].idx;
		LlmQuotaShared nq = state->quotas[k];

		nq.reserved += h->need[nq.metric];
		publish(k, &nq);
		if (defs[k].warn_at > 0 && defs[k].warned_window != nq.window_start &&
			(double) (nq.used + nq.reserved) >= defs[k].warn_at * (double) nq.limit)
		{
			char	   *msg = psprintf("quota \"%s\" reached %g%% of its limit (%s of %s with calls in flight) in the window from %s",
									   nq.name, defs[k].warn_at * 100,
									   format_amount(nq.metric, nq.used + nq.reserved),
									   format_amount(nq.metric, nq.limit), format_time(nq.window_start));

			defs[k].warned_window = nq.window_start;
			ereport(LOG, (errmsg("llm_gateway: %s", msg)));
			if (h->warning == NULL)
				h->warning = MemoryContextStrdup(hold_cxt, msg);
		}
	}
	dlist_push_tail(&holds, &h->node);
	item->quota = h;
}

/* ceil(cost_usd text * 1e10) */
static int64
cost_units(const char *cost)
{
	Datum		n = DirectFunctionCall3(numeric_in, CStringGetDatum(cost),
										ObjectIdGetDatum(InvalidOid), Int32GetDatum(-1));

	n = DirectFunctionCall2(numeric_mul, n, NumericGetDatum(int64_to_numeric(LLM_QUOTA_COST_SCALE)));
	n = DirectFunctionCall1(numeric_ceil, n);
	return DatumGetInt64(DirectFunctionCall1(numeric_int8, n));
}

/*
 * The call ended: its reservation becomes what it used (all its attempts;
 * nothing if it never reached a provider).  Usage of a window that has
 * rolled over since is dropped with that window.
 */
static void
settle(LlmWorkItem *item)
{
	LlmQuotaHold *h = item->quota;
	bool		unknown;
	int			i;

	if (h == NULL || h->settled)
		return;
	unknown = item->attempts > 0 && item->status &&
		(strcmp(item->status, "cancelled") == 0 || strcmp(item->status, "timeout") == 0);
	if (unknown)
		memcpy(h->real, h->need, sizeof(h->real));
	else
	{
		memset(h->real, 0, sizeof(h->real));
		h->real[LLM_QM_REQUESTS] = item->attempts > 0 ? 1 : 0;
		if (item->ok)
		{
			h->real[LLM_QM_INPUT] = Max(item->answer.input_tokens, 0) +
				Max(item->answer.cache_read_input_tokens, 0) +
				Max(item->answer.cache_creation_input_tokens, 0);
			h->real[LLM_QM_OUTPUT] = Max(item->answer.output_tokens, 0);
			h->real[LLM_QM_TOTAL] = h->real[LLM_QM_INPUT] + h->real[LLM_QM_OUTPUT];
			if (item->cost_usd)
				h->real[LLM_QM_COST] = cost_units(item->cost_usd);
		}
	}
	h->settled = true;
	for (i = 0; i < h->nrefs; i++)
	{
		int			k = h->refs[i].idx;
		LlmQuotaShared nq = state->quotas[k];

		if (k >= state->nquotas || nq.window_start != h->refs[i].window_start)
			continue;
		nq.reserved -= h->need[nq.metric];
		nq.used += h->real[nq.metric];
		publish(k, &nq);
	}
}

/* The call's row is complete (or will never be written): forget the hold. */
void
quota_forget(LlmWorkItem *item)
{
	LlmQuotaHold *h = item->quota;

	if (h == NULL)
		return;
	if (!h->settled)
		quota_settle(item);
	dlist_delete(&h->node);
	if (h->warning)
		pfree(h->warning);
	if (h->tags)
		pfree(h->tags);
	pfree(h->alias);
	pfree(h);
	item->quota = NULL;
}

/* The warning the call's admission raised (sent to its caller as a NOTICE), or NULL. */
const char *
quota_warning(LlmWorkItem *item)
{
	return item->quota ? item->quota->warning : NULL;
}

/*-------------------------------------------------------------------------
 *
 * usage_rollup.c
 *	  The usage rollup (llm.usage_hourly), aggregated per batch of
 *	  llm.requests completions and upserted in the batch's transaction.
 *
 * runs in: worker, inside the transactions of request_log.c.
 *
 * log_writer.c reports each row it moves out of 'pending' (a completion,
 * or the next worker's 'unknown'), under the row's lock: a row counts at
 * most once, whatever writes it later.  The figures are summed here per group (UTC hour of created_at, role,
 * alias, provider, upstream model) in memory, and written when the batch's
 * writer closes: one INSERT ... ON CONFLICT DO UPDATE per group and batch,
 * through SPI with a plan prepared once for the worker's life.  Being in
 * the same transaction as the rows, the rollup commits or rolls back with
 * them: a batch retried, redone row by row, or lost in a crash never
 * counts twice or not at all.
 *
 * The upsert runs in a subtransaction (one per batch): an error of the
 * rollup's own leaves the batch's calls uncounted (said in the server
 * log), never their audit rows unwritten.
 *
 * The statement names everything by schema (the worker's search_path is
 * pg_catalog, pg_temp anyway) and runs as llm_gateway_worker, like the
 * rows' writes.  A database without llm.usage_hourly (the table dropped)
 * just has no rollup.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <math.h>

#include "access/xact.h"
#include "catalog/namespace.h"
#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "lib/stringinfo.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/jsonb.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/numeric.h"
#include "utils/resowner.h"

#include "worker/usage_rollup.h"
#include "worker/worker_timing.h"
#include "common/llm_errors.h"

typedef struct UsageGroup
{
	TimestampTz hour;
	char	   *role_name;
	char	   *alias;
	char	   *provider;
	char	   *upstream_model;
	int64		calls;
	int64		ok;
	int64		errors;
	int64		cancelled;
	int64		timeouts;
	int64		unknown;
	int			nclasses;
	char		(*class_code)[3];
	int64	   *class_count;
	int64		input_tokens;
	int64		output_tokens;
	int64		cache_read_tokens;
	int64		cache_write_tokens;
	Datum		cost_usd;		/* numeric, in the rollup's context */
	int64		hist[USAGE_HIST_BUCKETS];
} UsageGroup;

struct UsageRollup
{
	MemoryContext cxt;
	uint64		cpu_ns;			/* worker CPU time spent here for this batch */
	int			ngroups;
	int			size;
	UsageGroup **groups;
};

#define USAGE_NARGS 18

static SPIPlanPtr upsert_plan = NULL;

/*
 * The merges are C functions (usage_sql.c), the error classes' only for a
 * group with errors: a SQL function with a subquery cost 160 us a call.
 */
static const char *const upsert_sql =
"INSERT INTO llm.usage_hourly AS u (hour, role_name, alias, provider, upstream_model,"
" calls, ok, errors, cancelled, timeouts, unknown, error_classes,"
" input_tokens, output_tokens, cache_read_tokens, cache_write_tokens, cost_usd, latency_hist)"
" VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18)"
" ON CONFLICT (hour, role_name, alias, provider, upstream_model) DO UPDATE SET"
" calls = u.calls OPERATOR(pg_catalog.+) EXCLUDED.calls,"
" ok = u.ok OPERATOR(pg_catalog.+) EXCLUDED.ok,"
" errors = u.errors OPERATOR(pg_catalog.+) EXCLUDED.errors,"
" cancelled = u.cancelled OPERATOR(pg_catalog.+) EXCLUDED.cancelled,"
" timeouts = u.timeouts OPERATOR(pg_catalog.+) EXCLUDED.timeouts,"
" unknown = u.unknown OPERATOR(pg_catalog.+) EXCLUDED.unknown,"
" error_classes = CASE WHEN EXCLUDED.error_classes OPERATOR(pg_catalog.=) '{}'::pg_catalog.jsonb"
" THEN u.error_classes ELSE llm._usage_counts_add(u.error_classes, EXCLUDED.error_classes) END,"
" input_tokens = u.input_tokens OPERATOR(pg_catalog.+) EXCLUDED.input_tokens,"
" output_tokens = u.output_tokens OPERATOR(pg_catalog.+) EXCLUDED.output_tokens,"
" cache_read_tokens = u.cache_read_tokens OPERATOR(pg_catalog.+) EXCLUDED.cache_read_tokens,"
" cache_write_tokens = u.cache_write_tokens OPERATOR(pg_catalog.+) EXCLUDED.cache_write_tokens,"
" cost_usd = u.cost_usd OPERATOR(pg_catalog.+) EXCLUDED.cost_usd,"
" latency_hist = llm._usage_hist_add(u.latency_hist, EXCLUDED.latency_hist)";

static const Oid upsert_types[USAGE_NARGS] = {
	TIMESTAMPTZOID, TEXTOID, TEXTOID, TEXTOID, TEXTOID,
	INT8OID, INT8OID, INT8OID, INT8OID, INT8OID, INT8OID, JSONBOID,
	INT8OID, INT8OID, INT8OID, INT8OID, NUMERICOID, INT8ARRAYOID
};

/*
 * Bucket (0-based) of a latency: 0 under 1 ms, then 1 + floor(4 log2 ms),
 * the last one open-ended.  4 per doubling: a percentile read as the
 * bucket's geometric middle is within 2^(1/8) of the true value.
 */
int
usage_hist_bucket(double latency_ms)
{
	double		b;

	if (!(latency_ms >= 1.0))	/* also NaN */
		return 0;
	b = 1.0 + floor(4.0 * log2(latency_ms));
	if (b >= USAGE_HIST_BUCKETS - 1)
		return USAGE_HIST_BUCKETS - 1;
	return (int) b;
}

UsageRollup *
usage_rollup_create(void)
{
	UsageRollup *u = palloc0(sizeof(UsageRollup));

	u->cxt = CurrentMemoryContext;
	u->size = 8;
	u->groups = palloc(sizeof(UsageGroup *) * u->size);
	return u;
}

static bool
same(const char *a, const char *b)
{
	if (a == NULL || b == NULL)
		return a == b;
	return strcmp(a, b) == 0;
}

static char *
copy(MemoryContext cxt, const char *s)
{
	return s ? MemoryContextStrdup(cxt, s) : NULL;
}

/* the group of row, added if new; batches hold a few groups: a linear search */
static UsageGroup *
find_group(UsageRollup *u, TimestampTz hour, const UsageRow *row)
{
	UsageGroup *g;
	int			i;

	for (i = 0; i < u->ngroups; i++)
	{
		g = u->groups[i];
		if (g->hour == hour && same(g->role_name, row->role_name) &&
			same(g->alias, row->alias) && same(g->provider, row->provider) &&
			same(g->upstream_model, row->upstream_model))
			return g;
	}
	if (u->ngroups == u->size)
	{
		u->size *= 2;
		u->groups = repalloc(u->groups, sizeof(UsageGroup *) * u->size);
	}
	g = MemoryContextAllocZero(u->cxt, sizeof(UsageGroup));
	g->hour = hour;
	g->role_name = copy(u->cxt, row->role_name);
	g->alias = copy(u->cxt, row->alias);
	g->provider = copy(u->cxt, row->provider);
	g->upstream_model = copy(u->cxt, row->upstream_model);
	g->cost_usd = (Datum) 0;
	u->groups[u->ngroups++] = g;
	return g;
}

static void
add_class(UsageRollup *u, UsageGroup *g, const char *code)
{
	int			i;

	for (i = 0; i < g->nclasses; i++)
		if (strncmp(g->class_code[i], code, 2) == 0)
		{
			g->class_count[i]++;
			return;
		}
	if (g->nclasses == 0)
	{
		g->class_code = MemoryContextAlloc(u->cxt, sizeof(*g->class_code) * 4);
		g->class_count = MemoryContextAlloc(u->cxt, sizeof(int64) * 4);
	}
	else if ((g->nclasses & (g->nclasses - 1)) == 0 && g->nclasses >= 4)
	{
		/* full at a power of two: double */
		g->class_code = repalloc(g->class_code, sizeof(*g->class_code) * g->nclasses * 2);
		g->class_count = repalloc(g->class_count, sizeof(int64) * g->nclasses * 2);
	}
	memcpy(g->class_code[g->nclasses], code, 2);
	g->class_code[g->nclasses][2] = '\0';
	g->class_count[g->nclasses] = 1;
	g->nclasses++;
}

void
usage_rollup_add(UsageRollup *u, const UsageRow *row)
{
	TimestampTz hour = row->created_at - row->created_at % USECS_PER_HOUR;
	UsageGroup *g;
	MemoryContext old;

	/* floor, not truncation toward 0, before 2000-01-01 */
	if (row->created_at % USECS_PER_HOUR < 0)
		hour -= USECS_PER_HOUR;
	g = find_group(u, hour, row);
	g->calls++;
	if (strcmp(row->status, "ok") == 0)
		g->ok++;
	else if (strcmp(row->status, "error") == 0)
		g->errors++;
	else if (strcmp(row->status, "cancelled") == 0)
		g->cancelled++;
	else if (strcmp(row->status, "timeout") == 0)
		g->timeouts++;
	else if (strcmp(row->status, "unknown") == 0)
		g->unknown++;
	if (row->error_code != NULL && strlen(row->error_code) >= 2)
		add_class(u, g, row->error_code);
	g->input_tokens += row->input_tokens;
	g->output_tokens += row->output_tokens;
	g->cache_read_tokens += row->cache_read_tokens;
	g->cache_write_tokens += row->cache_write_tokens;
	if (row->has_latency)
		g->hist[usage_hist_bucket(row->latency_ms)]++;
	if (row->has_cost)
	{
		old = MemoryContextSwitchTo(u->cxt);
		if (g->cost_usd == (Datum) 0)
			g->cost_usd = DirectFunctionCall3(numeric_in, CStringGetDatum("0"),
											  ObjectIdGetDatum(InvalidOid), Int32GetDatum(-1));
		g->cost_usd = DirectFunctionCall2(numeric_add, g->cost_usd, row->cost_usd);
		MemoryContextSwitchTo(old);
	}
}

/* {"LL": 3, "57": 1}: SQLSTATE classes are letters and digits, no escaping */
static Datum
classes_jsonb(UsageGroup *g)
{
	StringInfoData s;
	int			i;

	initStringInfo(&s);
	appendStringInfoChar(&s, '{');
	for (i = 0; i < g->nclasses; i++)
		appendStringInfo(&s, "%s\"%s\": " INT64_FORMAT, i ? ", " : "",
						 g->class_code[i], g->class_count[i]);
	appendStringInfoChar(&s, '}');
	return DirectFunctionCall1(jsonb_in, CStringGetDatum(s.data));
}

/* the histogram without its trailing empty buckets */
static Datum
hist_array(UsageGroup *g)
{
	Datum		elems[USAGE_HIST_BUCKETS];
	int			n = USAGE_HIST_BUCKETS;
	int			i;

	while (n > 0 && g->hist[n - 1] == 0)
		n--;
	if (n == 0)
		return PointerGetDatum(construct_empty_array(INT8OID));
	for (i = 0; i < n; i++)
		elems[i] = Int64GetDatum(g->hist[i]);
	return PointerGetDatum(construct_array(elems, n, INT8OID, 8, FLOAT8PASSBYVAL, TYPALIGN_DOUBLE));
}

static Datum
text_or_null(const char *s, char *nulls, int i)
{
	nulls[i] = s ? ' ' : 'n';
	return s ? CStringGetTextDatum(s) : (Datum) 0;
}

static void
upsert_groups(UsageRollup *u)
{
	int			i;

	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	if (upsert_plan == NULL)
	{
		SPIPlanPtr	p = SPI_prepare(upsert_sql, USAGE_NARGS, (Oid *) upsert_types);

		if (p == NULL)
			elog(ERROR, "could not prepare the upsert of llm.usage_hourly: %s",
				 SPI_result_code_string(SPI_result));
		if (SPI_keepplan(p) != 0)
			elog(ERROR, "SPI_keepplan failed");
		upsert_plan = p;
	}
	for (i = 0; i < u->ngroups; i++)
	{
		UsageGroup *g = u->groups[i];
		Datum		values[USAGE_NARGS];
		char		nulls[USAGE_NARGS];
		int			ret;

		memset(nulls, ' ', sizeof(nulls));
		values[0] = TimestampTzGetDatum(g->hour);
		values[1] = text_or_null(g->role_name, nulls, 1);
		values[2] = text_or_null(g->alias, nulls, 2);
		values[3] = text_or_null(g->provider, nulls, 3);
		values[4] = text_or_null(g->upstream_model, nulls, 4);
		values[5] = Int64GetDatum(g->calls);
		values[6] = Int64GetDatum(g->ok);
		values[7] = Int64GetDatum(g->errors);
		values[8] = Int64GetDatum(g->cancelled);
		values[9] = Int64GetDatum(g->timeouts);
		values[10] = Int64GetDatum(g->unknown);
		values[11] = classes_jsonb(g);
		values[12] = Int64GetDatum(g->input_tokens);
		values[13] = Int64GetDatum(g->output_tokens);
		values[14] = Int64GetDatum(g->cache_read_tokens);
		values[15] = Int64GetDatum(g->cache_write_tokens);
		values[16] = g->cost_usd != (Datum) 0 ? g->cost_usd :
			DirectFunctionCall3(numeric_in, CStringGetDatum("0"),
								ObjectIdGetDatum(InvalidOid), Int32GetDatum(-1));
		values[17] = hist_array(g);
		ret = SPI_execute_plan(upsert_plan, values, nulls, false, 0);
		if (ret != SPI_OK_INSERT)
			elog(ERROR, "upsert of llm.usage_hourly failed: %s", SPI_result_code_string(ret));
	}
	SPI_finish();
}


static const char *
slot_text(TupleTableSlot *slot, AttrNumber att)
{
	bool		isnull;
	Datum		d = slot_getattr(slot, att, &isnull);

	return isnull ? NULL : TextDatumGetCString(d);
}

static int64
slot_int8(TupleTableSlot *slot, AttrNumber att)
{
	bool		isnull;
	Datum		d = slot_getattr(slot, att, &isnull);

	return isnull ? 0 : DatumGetInt64(d);
}

static void add_slot(UsageRollup *u, TupleTableSlot *slot, const UsageColumns *c);

/*
 * Both entry points are timed in the worker's CPU time (worker_timing.c):
 * make bench reports what the rollup adds per call.
 */
void
usage_rollup_add_slot(UsageRollup *u, TupleTableSlot *slot, const UsageColumns *c)
{
	uint64		start = worker_cpu_ns();

	add_slot(u, slot, c);
	u->cpu_ns += worker_cpu_ns() - start;
}

static void
add_slot(UsageRollup *u, TupleTableSlot *slot, const UsageColumns *c)
{
	UsageRow	r;
	bool		isnull;
	Datum		d;

	r.status = slot_text(slot, c->status);
	if (r.status == NULL || strcmp(r.status, "pending") == 0)
		return;
	d = slot_getattr(slot, c->created_at, &isnull);
	if (isnull)
		return;
	r.created_at = DatumGetTimestampTz(d);
	r.role_name = slot_text(slot, c->role_name);
	r.alias = slot_text(slot, c->alias);
	if (r.role_name == NULL || r.alias == NULL)
		return;
	r.provider = slot_text(slot, c->provider);
	r.upstream_model = slot_text(slot, c->upstream_model);
	r.error_code = slot_text(slot, c->error_code);
	r.input_tokens = slot_int8(slot, c->input_tokens);
	r.output_tokens = slot_int8(slot, c->output_tokens);
	r.cache_read_tokens = slot_int8(slot, c->cache_read_tokens);
	r.cache_write_tokens = slot_int8(slot, c->cache_write_tokens);
	r.cost_usd = slot_getattr(slot, c->cost_usd, &isnull);
	r.has_cost = !isnull;
	d = slot_getattr(slot, c->latency_ms, &isnull);
	r.has_latency = !isnull;
	r.latency_ms = isnull ? 0 : DatumGetFloat8(d);
	usage_rollup_add(u, &r);
}

/*
 * Write the batch's groups, in a subtransaction: the audit rows must not
 * depend on the rollup, so an error of its own (a constraint or trigger
 * someone added to llm.usage_hourly) leaves these calls uncounted, says so
 * in the server log, and lets the rows commit.  A transient error (a lock,
 * a timeout) is rethrown: the whole batch is tried again next turn, and
 * counted then.
 */
static void flush(UsageRollup *u);

void
usage_rollup_flush(UsageRollup *u)
{
	uint64		start = worker_cpu_ns();
	int64		calls = 0;
	int			i;

	if (u == NULL)
		return;
	for (i = 0; i < u->ngroups; i++)
		calls += u->groups[i]->calls;
	flush(u);
	if (calls > 0)
		worker_timing_add(LLM_TIMED_ROLLUP, calls, u->cpu_ns + (worker_cpu_ns() - start));
	u->cpu_ns = 0;
}

static void
flush(UsageRollup *u)
{
	MemoryContext cxt = CurrentMemoryContext;
	ResourceOwner owner = CurrentResourceOwner;
	Oid			nsp;

	if (u->ngroups == 0)
		return;
	nsp = get_namespace_oid("llm", true);
	if (!OidIsValid(nsp) || !OidIsValid(get_relname_relid("usage_hourly", nsp)))
		return;

	BeginInternalSubTransaction(NULL);
	MemoryContextSwitchTo(cxt);
	PG_TRY();
	{
		upsert_groups(u);
		ReleaseCurrentSubTransaction();
	}
	PG_CATCH();
	{
		ErrorData  *edata;
		int64		calls = 0;
		int			i;

		edata = llm_subxact_caught(cxt, owner);
		if (llm_error_is_transient(edata->sqlerrcode))
			ReThrowError(edata);
		for (i = 0; i < u->ngroups; i++)
			calls += u->groups[i]->calls;
		ereport(LOG,
				(errmsg("llm_gateway: could not update llm.usage_hourly; " INT64_FORMAT " finished calls are not counted in llm.usage", calls),
				 errdetail("%s", edata->message)));
		FreeErrorData(edata);
	}
	PG_END_TRY();
	MemoryContextSwitchTo(cxt);
	CurrentResourceOwner = owner;
}

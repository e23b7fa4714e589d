/*-------------------------------------------------------------------------
 *
 * route_cache.c
 *	  The worker's cached copy of the routing tables.
 *
 * runs in: worker.
 *
 * The cache is loaded in one query and kept until the tables change.  A
 * statement trigger on each configuration table (llm._config_changed())
 * queues a relcache invalidation of llm.routes that is sent when the
 * changing transaction commits; our relcache callback marks the cache
 * stale and the next lookup (always inside a transaction) reloads it.  So
 * changes apply to the next call, without polling and without restart.
 *
 * Secrets are held only here, in the worker's memory.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "catalog/namespace.h"
#include "executor/spi.h"
#include "utils/builtins.h"
#include "utils/inval.h"
#include "utils/jsonb.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"

#include "route_cache.h"

static MemoryContext cache_cxt = NULL;
static List *cache = NIL;		/* of LlmRouteTarget *, by alias then priority */
static bool cache_stale = true;

static void
invalidate_callback(Datum arg, Oid relid)
{
	/* any relcache reset, or a change of one of our tables, reloads */
	cache_stale = true;
}

void
routes_init(void)
{
	cache_cxt = AllocSetContextCreate(TopMemoryContext, "llm route cache",
									  ALLOCSET_DEFAULT_SIZES);
	CacheRegisterRelcacheCallback(invalidate_callback, (Datum) 0);
}

static char *
text_or_null(HeapTuple tup, TupleDesc desc, int col)
{
	bool		isnull;
	Datum		d = SPI_getbinval(tup, desc, col, &isnull);

	return isnull ? NULL : TextDatumGetCString(d);
}

static Jsonb *
jsonb_copy_col(HeapTuple tup, TupleDesc desc, int col)
{
	bool		isnull;
	Datum		d = SPI_getbinval(tup, desc, col, &isnull);

	if (isnull)
		return DatumGetJsonbP(DirectFunctionCall1(jsonb_in, CStringGetDatum("{}")));
	return DatumGetJsonbPCopy(d);
}

/* Load every enabled target; caller is in a transaction with SPI connected. */
static void
reload(void)
{
	MemoryContext old;
	uint64		i;
	int			ret;

	MemoryContextReset(cache_cxt);
	cache = NIL;

	ret = SPI_execute("SELECT r.id, r.alias, r.upstream_model, r.options, "
					  "       p.name, p.kind, p.base_url, p.region, p.options, c.secret "
					  "  FROM llm.routes r "
					  "  JOIN llm.providers p ON p.name = r.provider "
					  "  LEFT JOIN llm.credentials c ON c.provider = p.name "
					  " WHERE r.enabled AND r.weight > 0 "
					  " ORDER BY r.alias, r.priority, r.id",
					  true, 0);
	if (ret != SPI_OK_SELECT)
		elog(ERROR, "could not read llm.routes: %s", SPI_result_code_string(ret));

	old = MemoryContextSwitchTo(cache_cxt);
	for (i = 0; i < SPI_processed; i++)
	{
		HeapTuple	tup = SPI_tuptable->vals[i];
		TupleDesc	desc = SPI_tuptable->tupdesc;
		LlmRouteTarget *rt = palloc0(sizeof(LlmRouteTarget));
		bool		isnull;

		rt->route_id = DatumGetInt64(SPI_getbinval(tup, desc, 1, &isnull));
		rt->alias = text_or_null(tup, desc, 2);
		rt->target.upstream_model = text_or_null(tup, desc, 3);
		rt->target.route_options = jsonb_copy_col(tup, desc, 4);
		rt->target.provider_name = text_or_null(tup, desc, 5);
		rt->kind = text_or_null(tup, desc, 6);
		rt->target.base_url = text_or_null(tup, desc, 7);
		rt->region = text_or_null(tup, desc, 8);
		rt->target.provider_options = jsonb_copy_col(tup, desc, 9);
		rt->target.secret = text_or_null(tup, desc, 10);
		rt->target.provider = provider_lookup(rt->kind);
		cache = lappend(cache, rt);
	}
	MemoryContextSwitchTo(old);
	cache_stale = false;
}

/*
 * The first target of an alias, or NULL.  Must run inside a transaction
 * with SPI connected (it may reload the cache).
 */
const LlmRouteTarget *
routes_lookup(const char *alias)
{
	ListCell   *lc;

	if (cache_stale)
		reload();
	foreach(lc, cache)
	{
		LlmRouteTarget *rt = lfirst(lc);

		if (strcmp(rt->alias, alias) == 0)
			return rt;
	}
	return NULL;
}

/* Copy a cached target into the caller's context: the cache may reload. */
void
routes_copy_target(const LlmRouteTarget *src, LlmTarget *dst)
{
	dst->provider = src->target.provider;
	dst->provider_name = pstrdup(src->target.provider_name);
	dst->base_url = pstrdup(src->target.base_url);
	dst->upstream_model = pstrdup(src->target.upstream_model);
	dst->secret = src->target.secret ? pstrdup(src->target.secret) : NULL;
	dst->provider_options = (Jsonb *) pg_detoast_datum_copy((struct varlena *) src->target.provider_options);
	dst->route_options = (Jsonb *) pg_detoast_datum_copy((struct varlena *) src->target.route_options);
}

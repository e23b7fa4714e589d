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
 * The callback sees every relcache invalidation of the database (ANALYZE
 * of any table, any DDL), and a load decrypts every key: it reloads only
 * for llm.routes, llm.providers and llm.credentials (OIDs looked up at each
 * load, so a re-created extension is followed: dropping the old tables
 * invalidates their OIDs) and for a reset of the whole relcache (relid
 * InvalidOid, e.g. after a sinval queue overflow).  Each load logs a
 * DEBUG1 line, which tests count.
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

#include "worker/credential_loader.h"
#include "common/json_util.h"
#include "worker/route_cache.h"

static MemoryContext cache_cxt = NULL;
static List *cache = NIL;		/* of LlmRoute *, one per alias */
static bool cache_stale = true;
static uint64 inval_count = 0;	/* relevant invalidations seen */

/* the tables the cache is made of; InvalidOid until the first load */
static Oid	config_relids[3] = {InvalidOid, InvalidOid, InvalidOid};

static void
invalidate_callback(Datum arg, Oid relid)
{
	int			i;

	if (relid == InvalidOid)
	{
		cache_stale = true;
		inval_count++;
		return;
	}
	for (i = 0; i < lengthof(config_relids); i++)
		if (relid == config_relids[i])
		{
			cache_stale = true;
			inval_count++;
		}
}

/* Remember the OIDs of the configuration tables; in a transaction. */
static void
lookup_config_relids(void)
{
	static const char *const names[] = {"routes", "providers", "credentials"};
	Oid			nsp = get_namespace_oid("llm", true);
	int			i;

	for (i = 0; i < lengthof(config_relids); i++)
		config_relids[i] = OidIsValid(nsp) ? get_relname_relid(names[i], nsp) : InvalidOid;
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
		return jsonb_from_cstring("{}");
	return DatumGetJsonbPCopy(d);
}

/* Load every enabled target; caller is in a transaction. */
static void
reload(void)
{
	MemoryContext old;
	List	   *creds;
	uint64		i;
	int			ret;
	uint64		inval_at_start = inval_count;

	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");

	MemoryContextReset(cache_cxt);
	cache = NIL;
	lookup_config_relids();

	/* decrypted once per load; a target keeps its provider's list */
	creds = credentials_load(cache_cxt);

	ret = SPI_execute("SELECT r.id, r.alias, r.upstream_model, r.options, "
					  "       p.name, p.kind, p.base_url, p.region, p.options, "
					  "       r.priority, r.weight "
					  "  FROM llm.routes r "
					  "  JOIN llm.providers p ON p.name = r.provider "
					  " WHERE r.enabled AND p.enabled AND r.weight > 0 "
					  " ORDER BY r.alias, r.priority, r.id",
					  true, 0);
	if (ret != SPI_OK_SELECT)
		elog(ERROR, "could not read llm.routes: %s", SPI_result_code_string(ret));

	old = MemoryContextSwitchTo(cache_cxt);
	{
		LlmRoute   *route = NULL;
		List	   *members = NIL;

		for (i = 0; i <= SPI_processed; i++)
		{
			HeapTuple	tup;
			TupleDesc	desc = SPI_tuptable->tupdesc;
			LlmRouteTarget *rt;
			bool		isnull;

			/* rows come sorted by alias: close the previous alias's route */
			if (route && (i == SPI_processed ||
						  strcmp(route->alias, text_or_null(SPI_tuptable->vals[i], desc, 2)) != 0))
			{
				ListCell   *lc;
				int			n = 0;

				route->ntargets = list_length(members);
				route->targets = palloc(sizeof(LlmRouteTarget *) * route->ntargets);
				foreach(lc, members)
					route->targets[n++] = lfirst(lc);
				cache = lappend(cache, route);
				route = NULL;
				members = NIL;
			}
			if (i == SPI_processed)
				break;

			tup = SPI_tuptable->vals[i];
			rt = palloc0(sizeof(LlmRouteTarget));
			rt->route_id = DatumGetInt64(SPI_getbinval(tup, desc, 1, &isnull));
			rt->alias = text_or_null(tup, desc, 2);
			rt->target.upstream_model = text_or_null(tup, desc, 3);
			rt->target.route_options = jsonb_copy_col(tup, desc, 4);
			rt->target.provider_name = text_or_null(tup, desc, 5);
			rt->kind = text_or_null(tup, desc, 6);
			rt->target.base_url = text_or_null(tup, desc, 7);
			rt->region = text_or_null(tup, desc, 8);
			rt->target.region = rt->region;
			rt->target.provider_options = jsonb_copy_col(tup, desc, 9);
			rt->priority = DatumGetInt32(SPI_getbinval(tup, desc, 10, &isnull));
			rt->weight = DatumGetInt32(SPI_getbinval(tup, desc, 11, &isnull));
			rt->credentials = credentials_find(creds, rt->target.provider_name, rt->target.base_url);
			rt->target.provider = provider_lookup(rt->kind);
			if (route == NULL)
			{
				route = palloc0(sizeof(LlmRoute));
				route->alias = rt->alias;
			}
			members = lappend(members, rt);
		}
	}
	MemoryContextSwitchTo(old);
	ereport(DEBUG1,
			(errmsg_internal("llm_gateway: route cache loaded (%d aliases, " UINT64_FORMAT " targets)",
							 list_length(cache), SPI_processed)));
	SPI_finish();
	/* fresh unless a change arrived while we read (or an ERROR left it stale) */
	cache_stale = (inval_count != inval_at_start);
}

/*
 * The route of an alias, or NULL.  Must run inside a transaction (it may
 * reload the cache).  The result lives until the next
 * reload: callers copy what they keep (routes_copy_target).
 */
const LlmRoute *
routes_lookup(const char *alias)
{
	ListCell   *lc;

	if (cache_stale)
		reload();
	foreach(lc, cache)
	{
		LlmRoute   *route = lfirst(lc);

		if (strcmp(route->alias, alias) == 0)
			return route;
	}
	return NULL;
}

/* Reset callback of a context holding a copy of a secret: wipe it first. */
static void
wipe_secret_copy(void *arg)
{
	char	   *secret = arg;

	explicit_bzero(secret, strlen(secret));
}

/* A copy of a secret in CurrentMemoryContext, wiped when that context goes. */
static char *
copy_secret(const char *secret)
{
	char	   *copy = pstrdup(secret);
	MemoryContextCallback *cb = palloc0(sizeof(MemoryContextCallback));

	cb->func = wipe_secret_copy;
	cb->arg = copy;
	MemoryContextRegisterResetCallback(CurrentMemoryContext, cb);
	return copy;
}

/*
 * Copy a cached target into the caller's context: the cache may reload.
 * The copies of the secrets are wiped when that context is reset or
 * deleted.
 */
void
routes_copy_target(const LlmRouteTarget *src, LlmRouteTarget *dst)
{
	LlmProviderCredentials *pc = src->credentials;

	*dst = *src;
	dst->alias = pstrdup(src->alias);
	dst->kind = pstrdup(src->kind);
	dst->region = src->region ? pstrdup(src->region) : NULL;
	dst->target.region = dst->region;
	dst->target.provider_name = pstrdup(src->target.provider_name);
	dst->target.base_url = pstrdup(src->target.base_url);
	dst->target.upstream_model = pstrdup(src->target.upstream_model);
	/*
	 * Several enabled credentials are used in turn: each call starts with
	 * the next one, and carries the others, in the same order, for when a
	 * key is refused (router.c tries each at most once per target).
	 */
	dst->target.secret = NULL;
	dst->ncredentials = 0;
	dst->credential_secrets = NULL;
	dst->credential_labels = NULL;
	dst->credential_at = 0;
	if (pc != NULL && pc->ncredentials > 0)
	{
		uint32		start = pc->next++;

		dst->ncredentials = pc->ncredentials;
		dst->credential_secrets = palloc(sizeof(char *) * pc->ncredentials);
		dst->credential_labels = palloc(sizeof(char *) * pc->ncredentials);
		for (int i = 0; i < pc->ncredentials; i++)
		{
			LlmCredential *c = &pc->credentials[(start + i) % pc->ncredentials];

			dst->credential_secrets[i] = copy_secret(c->secret);
			dst->credential_labels[i] = pstrdup(c->label);
		}
		dst->target.secret = dst->credential_secrets[0];
	}
	dst->credentials = NULL;	/* the cached list goes with the next reload */
	dst->credential_error = NULL;
	dst->credential_hint = NULL;
	if (src->credentials && src->credentials->error)
	{
		dst->credential_error = pstrdup(src->credentials->error);
		dst->credential_hint = src->credentials->hint ? pstrdup(src->credentials->hint) : NULL;
	}
	dst->target.provider_options = (Jsonb *) pg_detoast_datum_copy((struct varlena *) src->target.provider_options);
	dst->target.route_options = (Jsonb *) pg_detoast_datum_copy((struct varlena *) src->target.route_options);
}

/* Reload at the next lookup (SIGHUP: the master key may have changed). */
void
routes_invalidate(void)
{
	cache_stale = true;
}

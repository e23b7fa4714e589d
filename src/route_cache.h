/*-------------------------------------------------------------------------
 *
 * route_cache.h
 *	  The worker's cached copy of llm.routes, llm.providers and
 *	  llm.credentials.
 *
 * runs in: worker.
 *
 *-------------------------------------------------------------------------
 */
#ifndef LLM_ROUTE_CACHE_H
#define LLM_ROUTE_CACHE_H

#include "provider.h"

/* One target of an alias, as cached. */
typedef struct LlmRouteTarget
{
	int64		route_id;
	char	   *alias;
	char	   *kind;
	char	   *region;
	LlmTarget	target;			/* provider == NULL when the kind is unknown */
} LlmRouteTarget;

extern void routes_init(void);
extern const LlmRouteTarget *routes_lookup(const char *alias);
extern void routes_copy_target(const LlmRouteTarget *src, LlmTarget *dst);

#endif							/* LLM_ROUTE_CACHE_H */

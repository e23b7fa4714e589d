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

#include "providers/adapter.h"

/* One target of an alias, as cached. */
typedef struct LlmRouteTarget
{
	int64		route_id;
	char	   *alias;
	char	   *kind;
	char	   *region;			/* NULL when the provider has none */
	int			priority;
	int			weight;
	LlmTarget	target;			/* provider == NULL when the kind is unknown */

	/*
	 * Cached targets: the provider's enabled credentials (NULL if it has
	 * none).  Copies (routes_copy_target): target.secret is the next one in
	 * turn, and credential_error says why none is usable; a call must then
	 * fail with it and send nothing.
	 */
	struct LlmProviderCredentials *credentials;
	char	   *credential_error;
	char	   *credential_hint;

	/*
	 * Copies only: every usable credential of the provider, in rotation
	 * order from the one this call starts with, so that a key the provider
	 * refuses (401/403) gives way to the next before the call falls over to
	 * another target.  credential_at indexes the one in target.secret.
	 */
	int			ncredentials;
	char	  **credential_secrets;
	char	  **credential_labels;
	int			credential_at;
} LlmRouteTarget;

/* An alias: its enabled targets, by priority (lower first), then age. */
typedef struct LlmRoute
{
	const char *alias;
	int			ntargets;
	LlmRouteTarget **targets;
} LlmRoute;

extern void routes_init(void);
extern const LlmRoute *routes_lookup(const char *alias);
extern void routes_copy_target(const LlmRouteTarget *src, LlmRouteTarget *dst);
extern void routes_invalidate(void);

#endif							/* LLM_ROUTE_CACHE_H */

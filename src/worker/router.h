/*-------------------------------------------------------------------------
 *
 * router.h
 *	  Routing decisions for attempt.c (router.c).
 *
 * runs in: worker.
 *
 *-------------------------------------------------------------------------
 */
#ifndef LLM_ROUTER_H
#define LLM_ROUTER_H

#include "worker/attempt.h"

/* after a failed attempt: retry, fall over (true: the call goes on), or end it */
extern bool after_failure(LlmWorkItem *item);

/* the breaker's verdict on the current target, or none (cancel, fatal error) */
extern void report_health(LlmWorkItem *item, bool success);
extern void abandon_health(LlmWorkItem *item);

/* give back the provider slot the item holds; a queued call may take it */
extern void release_provider_slot(LlmWorkItem *item);

/* seconds until the provider's rate limit resets (its 429 headers), -1 if unsaid */
extern double rate_limit_reset_s(const LlmHttpResult *res);

#endif							/* LLM_ROUTER_H */

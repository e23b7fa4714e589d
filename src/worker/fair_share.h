/*-------------------------------------------------------------------------
 *
 * fair_share.h
 *	  Fair order of the calls waiting for a provider's limits (fair_share.c).
 *
 * runs in: the worker.
 *
 *-------------------------------------------------------------------------
 */
#ifndef LLM_FAIR_SHARE_H
#define LLM_FAIR_SHARE_H

#include "lib/ilist.h"

#include "worker/attempt.h"

/* give this turn's freed provider slots to waiting calls, fewest-held backend first */
extern void fair_grant_freed_slots(dlist_head *waiting, dlist_head *due,
								   LlmWorkItem *const *items_by_slot);

/* order the n due calls (rate tokens) by their backend's load at the provider, then age */
extern void fair_order_due(dlist_head *due, int n, LlmWorkItem *const *items_by_slot);

#endif							/* LLM_FAIR_SHARE_H */

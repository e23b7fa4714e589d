/*-------------------------------------------------------------------------
 *
 * fair_share.c
 *	  Which waiting call goes next when a provider's limits let one through:
 *	  the one whose session holds (or queues) the fewest calls at that
 *	  provider, so one session's hundreds do not starve another's single
 *	  call (docs/design.md §15.5).
 *
 * runs in: the worker.  worker.c hands in its lists and its slot -> item
 * map; nothing here is kept between turns.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "storage/proc.h"

#include "channel/channel.h"
#include "worker/attempt.h"
#include "worker/fair_share.h"

/* The backend that submitted the item's call (its procno), -1 if unknown. */
static int
backend_of(const LlmWorkItem *item)
{
	int			procno = channel_get()->slots[item->slot].backend_procno;

	return (procno >= 0 && procno < (int) ProcGlobal->allProcCount) ? procno : -1;
}

/*
 * Per backend (by procno), its calls that hold a slot of the provider,
 * and with queued also those queued for its limits.  counts: an array to
 * reuse or NULL (allocated in the turn's memory).
 */
static int *
backend_counts(LlmWorkItem *const *items_by_slot, const char *provider, int *counts, bool queued)
{
	int			nprocs = (int) ProcGlobal->allProcCount;
	int			nslots = channel_get()->nslots;
	int			s;

	if (counts == NULL)
		counts = palloc(sizeof(int) * nprocs);
	memset(counts, 0, sizeof(int) * nprocs);
	for (s = 0; s < nslots; s++)
	{
		LlmWorkItem *h = items_by_slot[s];
		int			p;

		if (h && (h->holds_provider_slot || (queued && h->throttled)) &&
			strcmp(h->target.provider_name, provider) == 0 && (p = backend_of(h)) >= 0)
			counts[p]++;
	}
	return counts;
}

/*
 * Fair sharing of a provider's slots: each slot freed this turn goes to
 * the waiting call whose backend holds the fewest slots of that provider
 * now (ties: the oldest call), not to the first in the queue; so one
 * session's single call is not queued behind another's hundreds.  Each
 * slot given out costs a pass over `waiting`; a turn frees a few.
 */
void
fair_grant_freed_slots(dlist_head *waiting, dlist_head *due, LlmWorkItem *const *items_by_slot)
{
	int		   *held = NULL;

	for (;;)
	{
		const char *provider = NULL;
		dlist_iter	it;

		dlist_foreach(it, waiting)
		{
			LlmWorkItem *item = dlist_container(LlmWorkItem, node, it.cur);

			if (item->waiting_for_slot && freed_slots(item->target.provider_name) > 0)
			{
				provider = item->target.provider_name;
				break;
			}
		}
		if (provider == NULL)
			return;

		/* how many of this provider's slots each backend's calls hold */
		held = backend_counts(items_by_slot, provider, held, false);

		while (take_freed_slot(provider))
		{
			LlmWorkItem *best = NULL;
			int			best_held = 0;

			dlist_foreach(it, waiting)
			{
				LlmWorkItem *item = dlist_container(LlmWorkItem, node, it.cur);
				int			p;
				int			n;

				if (!item->waiting_for_slot || strcmp(item->target.provider_name, provider) != 0)
					continue;
				p = backend_of(item);
				n = p >= 0 ? held[p] : 0;
				if (best == NULL || n < best_held ||
					(n == best_held && item->submitted_at < best->submitted_at))
				{
					best = item;
					best_held = n;
				}
			}
			if (best == NULL)
				break;			/* nobody else waits for this provider */
			dlist_delete(&best->node);
			dlist_push_tail(due, &best->node);
			if (backend_of(best) >= 0)
				held[backend_of(best)]++;
		}
	}
}

typedef struct DueCall
{
	LlmWorkItem *item;
	int			load;			/* its backend's calls held or queued at the provider */
} DueCall;

static int
due_call_cmp(const void *a, const void *b)
{
	const DueCall *x = a;
	const DueCall *y = b;

	if (x->load != y->load)
		return x->load < y->load ? -1 : 1;
	if (x->item->submitted_at != y->item->submitted_at)
		return x->item->submitted_at < y->item->submitted_at ? -1 : 1;
	return 0;
}

/*
 * Calls waiting for a provider's requests_per_minute tokens all fall due
 * together when a token is back, and the first tried takes it.  Try them
 * by their backend's load on that provider (its calls holding a slot or
 * queued there), fewest first, then oldest: so a session's single call
 * is not served after another's 200 queued.  The counts are taken again
 * only when the provider changes from one due call to the next.
 */
void
fair_order_due(dlist_head *due, int n, LlmWorkItem *const *items_by_slot)
{
	DueCall    *calls = palloc(sizeof(DueCall) * n);
	const char *counted = NULL;
	int		   *load = NULL;
	dlist_mutable_iter it;
	int			i = 0;

	dlist_foreach_modify(it, due)
	{
		LlmWorkItem *item = dlist_container(LlmWorkItem, node, it.cur);
		int			p = backend_of(item);

		calls[i].item = item;
		calls[i].load = 0;
		if (item->throttled && !item->waiting_for_slot && p >= 0)
		{
			if (counted == NULL || strcmp(counted, item->target.provider_name) != 0)
			{
				load = backend_counts(items_by_slot, item->target.provider_name, load, true);
				counted = item->target.provider_name;
			}
			calls[i].load = load[p];
		}
		dlist_delete(&item->node);
		i++;
	}
	qsort(calls, i, sizeof(DueCall), due_call_cmp);
	for (n = 0; n < i; n++)
		dlist_push_tail(due, &calls[n].item->node);
}

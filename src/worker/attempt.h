/*-------------------------------------------------------------------------
 *
 * attempt.h
 *	  A call as the worker handles it (a work item), from the slot it came
 *	  in through to the answer and the log row.
 *
 * runs in: worker.
 *
 *-------------------------------------------------------------------------
 */
#ifndef LLM_ATTEMPT_H
#define LLM_ATTEMPT_H

#include "lib/ilist.h"
#include "utils/timestamp.h"

#include "worker/http.h"
#include "providers/adapter.h"
#include "worker/route_cache.h"

typedef enum LlmItemState
{
	LLM_ITEM_NEW,				/* taken from the channel, no log row yet */
	LLM_ITEM_READY,				/* pending row committed; may contact the provider */
	LLM_ITEM_SENDING,			/* transfer in flight */
	LLM_ITEM_WAITING,			/* backing off before the next attempt */
	LLM_ITEM_FINISHED			/* answered (or abandoned); log row to complete */
} LlmItemState;

typedef struct LlmWorkItem
{
	dlist_node	node;
	LlmItemState state;
	MemoryContext cxt;			/* everything below lives here */

	int			slot;
	uint32		generation;

	/* the call */
	char	   *alias;
	char	   *role;
	char	   *tags;			/* JSON text or NULL */
	Jsonb	   *request;
	int			timeout_ms;
	TimestampTz submitted_at;
	TimestampTz deadline;
	int64		request_id;		/* llm.requests.id once logged, else 0 */
	bool		logged;			/* pending row exists */
	char	   *log_error;		/* why its log row could not be written */
	bool		log_deferred;	/* its row was locked by another session: retry */

	/* the route: candidate targets the region policy allows */
	char	   *allowed_regions;	/* caller's llm.allowed_regions; "" = any */
	int			ncand;
	LlmRouteTarget *cand;
	bool	   *cand_done;		/* target exhausted or refused */
	int			cur;			/* index of the current target in cand */
	int			tries_on_cur;	/* attempts made on the current target */
	TimestampTz retry_at;		/* LLM_ITEM_WAITING: when to try again */
	TimestampTz attempt_started;
	bool		holds_provider_slot;	/* counted in the provider's in_flight */
	bool		waiting_for_slot;	/* WAITING for a provider slot to free */
	bool		throttled;		/* counted in the provider's queued */
	int			skipped_open;	/* targets skipped because their circuit is open */
	bool		health_pending; /* the breaker awaits this target's verdict */
	bool		unreadable;		/* last attempt: answer received but unreadable */
	StringInfoData attempt_log; /* JSON array, one object per attempt */

	/* the current target (a copy of cand[cur].target) */
	bool		has_target;
	LlmTarget	target;
	LlmCall		call;
	LlmHttpRequest http_request;
	LlmHttpTransfer xfer;
	bool		xfer_live;		/* xfer holds curl resources */
	int			attempts;

	/* the outcome */
	const char *status;			/* ok, error, cancelled, timeout */
	bool		ok;
	LlmAnswer	answer;
	LlmError	error;
	long		http_status;
	char	   *response_body;	/* raw provider body, for the log */
	double		latency_ms;
	char	   *cost_usd;		/* numeric text, NULL when the target has no prices */

	struct LlmQuotaHold *quota; /* its quota reservation (quota.c), or NULL */

	/* an embedding call (embed_batch.c): its inputs, its batch, its vectors */
	bool		embed;
	LlmEmbedCall embed_call;
	struct LlmEmbedBatch *batch;	/* the batch its current attempt rides in */
	LlmEmbedAnswer embed_answer;

	/* what the backend gets, kept until the log row is completed */
	StringInfoData payload;
	bool		delivered;		/* channel_finish done, or the slot already released */
} LlmWorkItem;

extern LlmWorkItem *item_create(int slot);
extern void item_resolve(LlmWorkItem *item);
extern void item_send(LlmWorkItem *item);
extern void item_retry(LlmWorkItem *item);
extern bool take_freed_slot(const char *provider);
extern int	freed_slots(const char *provider);
extern void forget_freed_slots(void);
extern void item_transfer_done(LlmWorkItem *item);
extern void item_cancel(LlmWorkItem *item);
extern void item_fail(LlmWorkItem *item, const char *status, int sqlerrcode,
					  const char *message, const char *detail, const char *hint);
extern void item_deliver(LlmWorkItem *item);
extern void item_free(LlmWorkItem *item);
extern void item_settle_attempt(LlmWorkItem *item);
extern void item_transport_error(LlmWorkItem *item, LlmHttpTransfer *t);

#endif							/* LLM_ATTEMPT_H */

/*-------------------------------------------------------------------------
 *
 * embed_batch.h
 *	  Embedding calls in the worker: every embedding attempt rides in a
 *	  batch, one provider request; concurrent single-input calls to the
 *	  same target share one (docs/design.md §23).
 *
 * runs in: worker.
 *
 *-------------------------------------------------------------------------
 */
#ifndef LLM_EMBED_BATCH_H
#define LLM_EMBED_BATCH_H

#include "worker/attempt.h"

extern int	llm_embed_batch_wait_ms;

extern void embed_batch_define_gucs(void);

/* attempt.c: item_send hands an embedding attempt over; item_finish takes it back */
extern void embed_batch_join(LlmWorkItem *item);
extern void embed_batch_leave(LlmWorkItem *item);
extern void embed_answer_payload(StringInfo buf, LlmWorkItem *item);

/* worker.c: send due batches (ms until the next, -1 none) ... */
extern long embed_batch_send_due(void);
/* ... a finished transfer that is a batch's; its calls are then settled ... */
extern bool embed_batch_transfer_done(LlmHttpTransfer *t);
/* ... and each settled call is handed back to be filed by its state */
extern LlmWorkItem *embed_batch_next_settled(void);

#endif							/* LLM_EMBED_BATCH_H */

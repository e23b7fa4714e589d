/*-------------------------------------------------------------------------
 *
 * progress.h
 *	  What the current statement's calls have done so far: the view
 *	  llm.statement_progress and the NOTICEs of llm.progress_notice.
 *
 * runs in: backends (each writes its own entry; any reads all of them).
 *
 * The channel's backend half reports every call it submits, takes or
 * abandons (progress_call_*), so serial calls, llm_submit and the pipeline
 * node all count without doing anything; the pipeline node adds the rows
 * the planner expected (progress_pipeline_begin / _end).
 *
 *-------------------------------------------------------------------------
 */
#ifndef LLM_PROGRESS_H
#define LLM_PROGRESS_H

#include "channel/channel.h"

extern int	llm_progress_notice_ms;

/* shared memory (module.c hooks) and GUCs */
extern Size progress_shmem_size(void);
extern void progress_shmem_init(void);
extern void progress_define_gucs(void);

/* the pipeline node: the rows the planner expected (they stay shown while the statement runs) */
extern void progress_pipeline_begin(double rows_expected);

/* channel_backend.c: a call of slot i was submitted, answered or failed, abandoned */
extern void progress_call_submitted(int slot);
extern void progress_call_taken(int slot, const LlmCallResult *result);
extern void progress_call_abandoned(int slot);

/* channel_wait: send the NOTICE if due; ms until the next one (-1: none) */
extern long progress_notice_tick(void);

#endif							/* LLM_PROGRESS_H */

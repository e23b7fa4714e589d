/*-------------------------------------------------------------------------
 *
 * request_log.h
 *	  llm.requests writes, batched, in the worker's own transactions.
 *
 * runs in: worker.
 *
 *-------------------------------------------------------------------------
 */
#ifndef LLM_REQUEST_LOG_H
#define LLM_REQUEST_LOG_H

#include "lib/ilist.h"

extern bool reqlog_open_batch(void);
extern void reqlog_insert_pending(struct LlmWorkItem *item);
extern void reqlog_complete(struct LlmWorkItem *item);
extern void reqlog_close_batch(void);
extern void reqlog_abort_batch(void);
extern void reqlog_mark_unknown(void);
extern char *reqlog_unavailable_reason(void);

#endif							/* LLM_REQUEST_LOG_H */

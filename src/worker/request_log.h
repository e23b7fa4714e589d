/*-------------------------------------------------------------------------
 *
 * request_log.h
 *	  llm.requests writes, batched, in the worker's own transactions.
 *
 * runs in: worker.
 *
 * Each function writes a whole batch (a dlist of LlmWorkItem) in one
 * transaction and returns:
 *	REQLOG_OK			committed; an item whose own row could not be written
 *						carries the reason in item->log_error, an item whose
 *						row another session holds locked has item->log_deferred
 *						(completions: try it again next turn);
 *	REQLOG_RETRY		nothing written (a lock wait ran out, a timeout, a
 *						deadlock): try the same batch again next turn;
 *	REQLOG_UNAVAILABLE	llm.requests does not exist (*reason says why).
 * *reason, for RETRY and UNAVAILABLE, is allocated in the caller's memory
 * context.
 *
 *-------------------------------------------------------------------------
 */
#ifndef LLM_REQUEST_LOG_H
#define LLM_REQUEST_LOG_H

#include "lib/ilist.h"

struct LlmWorkItem;

typedef enum ReqlogResult
{
	REQLOG_OK,
	REQLOG_RETRY,
	REQLOG_UNAVAILABLE
} ReqlogResult;

/*
 * Called for each item inside the pending rows' transaction, before its row
 * is built (route resolution); called again if the batch is retried, so it
 * must be idempotent.
 */
typedef void (*ReqlogPrepareFn) (struct LlmWorkItem *item);

extern ReqlogResult reqlog_write_pending(dlist_head *items, ReqlogPrepareFn prepare,
										 char **reason);
extern ReqlogResult reqlog_write_completions(dlist_head *items, char **reason);
extern ReqlogResult reqlog_mark_unknown(char **reason);

#endif							/* LLM_REQUEST_LOG_H */

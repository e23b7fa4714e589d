/*-------------------------------------------------------------------------
 *
 * retention.h
 *	  llm.log_retention: the worker deletes llm.requests rows older than
 *	  that, in small batches, off the call path.
 *
 * runs in: worker (retention_turn, retention_wait_ms); the GUC is defined
 * in every process.
 *
 *-------------------------------------------------------------------------
 */
#ifndef LLM_RETENTION_H
#define LLM_RETENTION_H

/* Called from define_gucs(), before MarkGUCPrefixReserved("llm"). */
extern void retention_define_gucs(void);

/*
 * The worker's wait timeout (ms, -1 = none), shortened so the next
 * retention batch is not missed while the worker is otherwise idle.
 */
extern long retention_wait_ms(long timeout_ms);

/*
 * At the end of a worker turn: delete one batch of expired rows if one is
 * due.  idle: no call is in flight (a backlog is then worked off faster).
 * Never throws.
 */
extern void retention_turn(bool idle);

#endif							/* LLM_RETENTION_H */

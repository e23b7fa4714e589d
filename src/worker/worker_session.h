/*-------------------------------------------------------------------------
 *
 * worker_session.h
 *	  The gateway worker's fixed settings and unprivileged role.
 *
 * runs in: worker.
 *
 *-------------------------------------------------------------------------
 */
#ifndef LLM_WORKER_SESSION_H
#define LLM_WORKER_SESSION_H

/* created by the install script; owns nothing, holds only what the worker needs */
#define LLM_WORKER_ROLE "llm_gateway_worker"

extern void worker_session_init(void);
extern bool worker_session_enter(void);

#endif							/* LLM_WORKER_SESSION_H */

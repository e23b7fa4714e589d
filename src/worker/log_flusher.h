/*-------------------------------------------------------------------------
 *
 * log_flusher.h
 *	  The log flusher: a small background worker that makes the request
 *	  log's commits durable off the gateway worker's critical path.
 *
 * runs in: the flusher (its main loop) and the gateway worker (requests).
 *
 *-------------------------------------------------------------------------
 */
#ifndef LLM_LOG_FLUSHER_H
#define LLM_LOG_FLUSHER_H

#include "access/xlogdefs.h"

extern Size logflush_shmem_size(void);
extern void logflush_shmem_init(void);

extern pid_t logflush_pid(void);

/* gateway worker: have WAL up to lsn flushed soon, without waiting for it */
extern void logflush_request(XLogRecPtr lsn);

#endif							/* LLM_LOG_FLUSHER_H */

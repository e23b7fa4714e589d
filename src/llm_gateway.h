/*-------------------------------------------------------------------------
 *
 * llm_gateway.h
 *	  Declarations shared by every file of the extension: the version, the
 *	  GUC variables and the preload check.
 *
 * GUC variables are per-process copies.  Values that the backends and the
 * worker must agree on (sizes of shared structures) are PGC_POSTMASTER, so
 * every process sees the same value; the rest only affect the process that
 * reads them and say so in their description.
 *
 *-------------------------------------------------------------------------
 */
#ifndef LLM_GATEWAY_H
#define LLM_GATEWAY_H

#ifndef LLM_GATEWAY_VERSION
#define LLM_GATEWAY_VERSION "unknown"
#endif

/* llm.log_bodies */
typedef enum LlmLogBodies
{
	LLM_LOG_BODIES_NONE,
	LLM_LOG_BODIES_ERRORS,
	LLM_LOG_BODIES_ALL
} LlmLogBodies;

/* GUC variables (llm_gateway.c) */
extern char *llm_database;
extern int	llm_max_inflight;
extern int	llm_request_timeout_ms;
extern int	llm_max_response_bytes;
extern int	llm_max_request_bytes;
extern int	llm_shared_memory_mb;
extern int	llm_log_bodies;
extern char *llm_ca_bundle;
extern int	llm_max_connections;
extern char *llm_allowed_regions;
extern int	llm_max_attempts;
extern int	llm_retry_base_ms;
extern int	llm_retry_max_ms;
extern int	llm_breaker_failures;
extern int	llm_breaker_cooldown_ms;
extern bool llm_durable_before_send;
extern int	llm_poll_us;
extern int	llm_flush_interval_ms;

/* true once _PG_init ran inside shared_preload_libraries */
extern bool llm_preloaded;

extern void llm_check_preloaded(void);

#endif							/* LLM_GATEWAY_H */

/*-------------------------------------------------------------------------
 *
 * llm_errors.h
 *	  SQLSTATEs of provider and gateway failures, and the classification of
 *	  an HTTP status that every provider shares.
 *
 * runs in: worker (classification) and backends (raising the codes).
 *
 * The codes live in class "LL", which the SQL standard leaves to
 * implementations (classes starting with a letter I-Z or 5-9 are never
 * used by PostgreSQL), so an application can tell a provider failure from
 * a PostgreSQL error by the first two characters alone.
 *
 *-------------------------------------------------------------------------
 */
#ifndef LLM_ERRORS_H
#define LLM_ERRORS_H

#include "utils/resowner.h"

#include "utils/elog.h"

#include "providers/adapter.h"

/* the provider refused the credential (401, 403) */
#define ERRCODE_LLM_PROVIDER_AUTH			MAKE_SQLSTATE('L','L','0','0','1')
/* rate limited (429) */
#define ERRCODE_LLM_PROVIDER_RATE_LIMITED	MAKE_SQLSTATE('L','L','0','0','2')
/* overloaded or unavailable (529, 503) */
#define ERRCODE_LLM_PROVIDER_OVERLOADED		MAKE_SQLSTATE('L','L','0','0','3')
/* the provider rejected the request (400, 404, 413, 422, other 4xx) */
#define ERRCODE_LLM_PROVIDER_INVALID_REQUEST MAKE_SQLSTATE('L','L','0','0','4')
/* server-side failure (500, 502, 504, other 5xx) */
#define ERRCODE_LLM_PROVIDER_SERVER_ERROR	MAKE_SQLSTATE('L','L','0','0','5')
/* a 2xx answer we cannot read */
#define ERRCODE_LLM_PROVIDER_MALFORMED		MAKE_SQLSTATE('L','L','0','0','6')
/* an error reported inside a 2xx answer */
#define ERRCODE_LLM_PROVIDER_INBAND_ERROR	MAKE_SQLSTATE('L','L','0','0','7')
/* could not connect, TLS failure, connection reset */
#define ERRCODE_LLM_PROVIDER_CONNECTION		MAKE_SQLSTATE('L','L','0','0','8')
/* the provider did not answer in time */
#define ERRCODE_LLM_PROVIDER_TIMEOUT		MAKE_SQLSTATE('L','L','0','0','9')
/* out of quota or credit (insufficient_quota, spend limit, 402) */
#define ERRCODE_LLM_PROVIDER_QUOTA			MAKE_SQLSTATE('L','L','0','1','0')
/* the gateway worker is not running */
#define ERRCODE_LLM_WORKER_UNAVAILABLE		MAKE_SQLSTATE('L','L','0','1','1')
/* the answer exceeds llm.max_response_bytes */
#define ERRCODE_LLM_RESPONSE_TOO_LARGE		MAKE_SQLSTATE('L','L','0','1','2')
/* every target of the alias is cooling down after failures (circuit open) */
#define ERRCODE_LLM_NO_TARGET				MAKE_SQLSTATE('L','L','0','1','3')
/* a quota (llm.quotas) cannot hold the call's worst case: refused unsent */
#define ERRCODE_LLM_QUOTA_EXCEEDED			MAKE_SQLSTATE('L','L','0','1','4')
/* llm_extract: the answer does not follow the schema, after one retry */
#define ERRCODE_LLM_SCHEMA_MISMATCH			MAKE_SQLSTATE('L','L','0','1','5')
/* an embedding of another size than the call or the route target declares */
#define ERRCODE_LLM_EMBED_DIMENSION			MAKE_SQLSTATE('L','L','0','1','6')
/* the request's input is longer than the model's context window (provider's answer, or a conversation whose history cannot fit its budget) */
#define ERRCODE_LLM_CONTEXT_TOO_LONG		MAKE_SQLSTATE('L','L','0','1','7')
/* the hint every adapter gives with LL017 */
#define LLM_CONTEXT_TOO_LONG_HINT \
	"The input is longer than the model's context window: shorten it; for a conversation, set the route option context_window (or the conversation's context budget) below the model's real window."

/*
 * A provider's "input longer than the context window" answer: LL017, fatal
 * (the same input fails on any retry, and a fallback target would get the
 * same history), with the hint.  Message and http_status stay as parsed.
 */
static inline void
llm_error_context_too_long(LlmError *err)
{
	err->sqlerrcode = ERRCODE_LLM_CONTEXT_TOO_LONG;
	err->fail_class = LLM_FAIL_FATAL;
	err->hint = pstrdup(LLM_CONTEXT_TOO_LONG_HINT);
}

extern void llm_error_for_status(int status, LlmError *err);
extern const char *llm_fail_class_name(LlmFailClass fail_class);
extern ErrorData *llm_subxact_caught(MemoryContext cxt, ResourceOwner owner);
extern bool llm_error_is_transient(int sqlerrcode);

#endif							/* LLM_ERRORS_H */

/*-------------------------------------------------------------------------
 *
 * adapter_sql.h
 *	  What the diagnostic adapter functions share (adapter_sql.c, and the
 *	  embeddings ones in embed_sql.c): the target from their arguments,
 *	  the request as JSON, an adapter failure raised.
 *
 * runs in: backends.
 *
 *-------------------------------------------------------------------------
 */
#ifndef LLM_ADAPTER_SQL_H
#define LLM_ADAPTER_SQL_H

#include "fmgr.h"
#include "providers/adapter.h"

extern void adapter_sql_target(FunctionCallInfo fcinfo, const LlmProvider *provider,
							   int model_arg, LlmTarget *target);
extern Jsonb *adapter_sql_request_json(const LlmHttpRequest *out, const char *secret);
extern void adapter_sql_raise(const LlmError *err) pg_attribute_noreturn();

#endif							/* LLM_ADAPTER_SQL_H */

/*-------------------------------------------------------------------------
 *
 * sql_api.h
 *	  What sql_api.c shares with the other call paths (async_api.c): one
 *	  way to build a call (call_result.c has the one way to turn its result
 *	  into an answer, an error object or an error), so llm_messages and
 *	  llm_await behave alike.
 *
 * runs in: backend.
 *
 *-------------------------------------------------------------------------
 */
#ifndef LLM_SQL_API_H
#define LLM_SQL_API_H

#include "fmgr.h"
#include "lib/stringinfo.h"
#include "utils/jsonb.h"

#include "channel/channel.h"

extern void llm_prepare_call(text *model, Jsonb *history, Jsonb *options,
							 LlmRequestMsg *hdr, StringInfo data, bool *on_error_null);
extern void require_args(FunctionCallInfo fcinfo, const char *input, const char *hint);

#endif							/* LLM_SQL_API_H */

/*-------------------------------------------------------------------------
 *
 * sql_api.h
 *	  What sql_api.c shares with the other call paths (async_api.c): one
 *	  way to build a call and one way to turn its result into an answer or
 *	  an error, so llm_messages and llm_await behave alike.
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
							 LlmRequestMsg *hdr, StringInfo data);
extern Jsonb *llm_answer(const LlmCallResult *result);
extern void llm_raise(const LlmCallResult *r);
extern void require_args(FunctionCallInfo fcinfo, const char *input, const char *hint);

#endif							/* LLM_SQL_API_H */

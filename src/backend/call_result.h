/*-------------------------------------------------------------------------
 *
 * call_result.h
 *	  What a finished call gives back to SQL: the answer, an error object
 *	  or NULL (on_error = null), or the raised error (on_error = raise).
 *
 * runs in: backend.  llm_messages, llm_complete and llm_await share it.
 *
 *-------------------------------------------------------------------------
 */
#ifndef LLM_CALL_RESULT_H
#define LLM_CALL_RESULT_H

#include "fmgr.h"

#include "channel/channel.h"

/* llm.on_error */
typedef enum LlmOnError
{
	LLM_ON_ERROR_RAISE,
	LLM_ON_ERROR_NULL
} LlmOnError;

extern int	llm_on_error;

extern void call_result_define_gucs(void);
extern bool llm_on_error_parse(const char *value, bool *on_error_null);
extern bool llm_error_raises_always(int sqlerrcode);
extern Datum llm_call_result(const LlmCallResult *r, bool on_error_null, bool want_text,
							 bool *isnull);
extern void llm_call_usage(LlmCallResult *r);

#endif							/* LLM_CALL_RESULT_H */

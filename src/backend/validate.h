/*-------------------------------------------------------------------------
 *
 * validate.h
 *	  Checks a call's history and options and builds the canonical request.
 *
 * runs in: backend, before anything is sent (a user mistake costs nothing).
 *
 *-------------------------------------------------------------------------
 */
#ifndef LLM_VALIDATE_H
#define LLM_VALIDATE_H

#include "utils/jsonb.h"

typedef struct LlmCallSpec
{
	Jsonb	   *request;		/* canonical Messages request, without "model" */
	int			timeout_ms;		/* whole-call deadline */
	char	   *tags;			/* JSON text of the tags option, or NULL */
	bool		on_error_null;	/* on_error option, else llm.on_error */
} LlmCallSpec;

extern void validate_call(const char *alias, Jsonb *history, Jsonb *options,
						  LlmCallSpec *spec);

#endif							/* LLM_VALIDATE_H */

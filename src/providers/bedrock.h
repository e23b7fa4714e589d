/*-------------------------------------------------------------------------
 *
 * bedrock.h
 *	  The halves of the bedrock adapter (bedrock.c, bedrock_request.c).
 *
 *-------------------------------------------------------------------------
 */
#ifndef LLM_BEDROCK_H
#define LLM_BEDROCK_H

#include "providers/adapter.h"

extern bool bedrock_build_request(const LlmCall *call, const LlmTarget *target,
								  LlmHttpRequest *out, LlmError *err);

#endif							/* LLM_BEDROCK_H */

/*-------------------------------------------------------------------------
 *
 * vertex_token.h
 *	  Access tokens for kind "vertex": a service-account key is turned
 *	  into an OAuth access token (RS256 JWT bearer grant), cached per
 *	  (provider, credential), and refreshed before it expires.
 *
 * runs in: worker.
 *
 *-------------------------------------------------------------------------
 */
#ifndef LLM_VERTEX_TOKEN_H
#define LLM_VERTEX_TOKEN_H

#include "worker/http.h"

typedef enum VertexTokenState
{
	VTOKEN_READY,				/* *token and *project are set */
	VTOKEN_PENDING,				/* a fetch is in flight: ask again shortly */
	VTOKEN_FAILED				/* *err is set (LL001, credential class, mostly) */
} VertexTokenState;

/* how often a call parked for a token asks again, in ms */
#define VTOKEN_POLL_MS	20

extern VertexTokenState vertex_token_get(const char *provider, const char *label,
										 const char *sa_json, Jsonb *provider_options,
										 char **token, char **project, LlmError *err);
extern VertexTokenState vertex_token_prepare(LlmTarget *target, const char *sa_json,
											 const char *label, LlmError *err);
extern bool vertex_token_transfer_done(LlmHttpTransfer *t);
extern bool vertex_token_forget(const char *provider, const char *label, const char *token);

#endif							/* LLM_VERTEX_TOKEN_H */

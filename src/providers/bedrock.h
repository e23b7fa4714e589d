/*-------------------------------------------------------------------------
 *
 * bedrock.h
 *	  The parts of the bedrock adapter (bedrock.c, bedrock_request.c,
 *	  bedrock_embed.c).
 *
 *-------------------------------------------------------------------------
 */
#ifndef LLM_BEDROCK_H
#define LLM_BEDROCK_H

#include "providers/adapter.h"

/* the parsed credential; secret_access_key is HMAC key material only */
typedef struct AwsCredential
{
	const char *access_key_id;
	const char *secret_access_key;
	const char *session_token;	/* or NULL */
} AwsCredential;

/* where a request goes: base_url, its host and path prefix, the region */
typedef struct BedrockEndpoint
{
	char	   *base;
	char	   *host;
	char	   *prefix;
	const char *region;
} BedrockEndpoint;

extern bool bedrock_build_request(const LlmCall *call, const LlmTarget *target,
								  LlmHttpRequest *out, LlmError *err);
extern void bedrock_parse_error(const LlmHttpResult *res, LlmError *err);

/* bedrock_request.c: what Converse and InvokeModel share */
extern bool bedrock_credential(const LlmTarget *target, AwsCredential *cred, LlmError *err);
extern bool bedrock_endpoint(const LlmTarget *target, BedrockEndpoint *ep, LlmError *err);
extern bool bedrock_sign(const LlmTarget *target, const BedrockEndpoint *ep,
						 const AwsCredential *cred, const char *operation,
						 LlmHttpRequest *out, LlmError *err);

/* bedrock_embed.c: InvokeModel embeddings (Titan text v2, Cohere embed) */
#define BEDROCK_EMBED_BATCH_MAX 96	/* Cohere's limit; Titan takes 1 */
extern bool bedrock_build_embed_request(const LlmEmbedCall *call, const LlmTarget *target,
										LlmHttpRequest *out, LlmError *err);
extern bool bedrock_parse_embed_response(const LlmEmbedCall *call, const LlmTarget *target,
										 const LlmHttpResult *res, LlmEmbedAnswer *out,
										 LlmError *err);
extern int	bedrock_embed_batch_max_for(const LlmTarget *target);

#endif							/* LLM_BEDROCK_H */

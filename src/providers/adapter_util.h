/*-------------------------------------------------------------------------
 *
 * adapter_util.h
 *	  Helpers the protocol adapters share (implemented in provider.c).
 *
 * runs in: worker (and backends, for the diagnostic adapter functions).
 *
 * Only adapter files include this; the rest of the extension sees the
 * adapters through provider.h alone.  Like the adapters, none of these
 * functions raises an ERROR: failures come back as an LlmError.
 *
 *-------------------------------------------------------------------------
 */
#ifndef LLM_ADAPTER_UTIL_H
#define LLM_ADAPTER_UTIL_H

#include "providers/adapter.h"

/* longest provider text (error message, body excerpt) we keep, in bytes */
#define PROVIDER_TEXT_MAX	2000

/* fill *err (every field) and return false, so callers can "return provider_fail(...)" */
extern bool provider_fail(LlmError *err, int sqlerrcode, LlmFailClass fail_class,
						  const char *fmt,...) pg_attribute_printf(4, 5);

/* the LLM_FAIL_FATAL error for a block, tool or option a protocol cannot express */
extern bool provider_unsupported(LlmError *err, const LlmTarget *target,
								 const char *what);

/* a malformed 2xx answer (retryable: a proxy or a truncated body may be to blame) */
extern bool provider_malformed(LlmError *err, const LlmHttpResult *res,
							   const char *why, const char *secret);

/* true for canonical request keys the gateway consumes (model, stream, ...) */
extern bool provider_is_gateway_key(const char *key);

/* base_url without trailing slashes */
extern char *provider_base_url(const LlmTarget *target);

/* canonical content blocks: the type, a refusal, text-only content as one string */
extern const char *provider_block_type(JsonbContainer *block);
extern bool provider_unsupported_block(LlmError *err, const LlmTarget *target,
									   const char *type, const char *where);
extern bool provider_content_text(const LlmTarget *target, JsonbValue *content,
								  StringInfo text, const char *where, LlmError *err);

/* canonical tools as OpenAI-style function tools (OpenAI-compatible, Ollama) */
extern bool provider_write_function_tools(StringInfo buf, const LlmTarget *target,
										  JsonbContainer *tools, LlmError *err);

/* a string member of provider_options; false + err when present but not a string */
extern bool provider_option_string(const LlmTarget *target, const char *key,
								   const char **value, LlmError *err);

/* max tokens to send after route options: -1 when nothing should be sent */
extern bool provider_max_tokens(const LlmCall *call, const LlmTarget *target,
								int64 fallback, int64 *result, LlmError *err);

/* add provider_options.headers, refusing the names in reserved[] (NULL-terminated) */
extern bool provider_option_headers(LlmHttpRequest *req, const LlmTarget *target,
									const char *const *reserved, LlmError *err);

/* provider text made safe to keep: secrets scrubbed, clipped to PROVIDER_TEXT_MAX */
extern char *provider_text(const char *text, const char *secret);

/* parse a response body; NULL + *errmsg when it is not JSON */
extern Jsonb *provider_parse_body(const LlmHttpResult *res, char **errmsg);

/* retry-after-ms, else retry-after, in seconds; -1 when absent or invalid */
extern double provider_retry_after(const LlmHttpResult *res);

/* detail "provider answered: <excerpt>" for a body that is not a known error shape */
extern char *provider_body_excerpt(const LlmHttpResult *res);

#endif							/* LLM_ADAPTER_UTIL_H */

/*-------------------------------------------------------------------------
 *
 * bedrock_request.c
 *	  Bedrock Converse request: canonical Messages request -> Converse body,
 *	  URL and SigV4-signed headers (POST {base_url}/model/{modelId}/converse).
 *
 * runs in: worker (and backends, for the diagnostic adapter functions).
 *
 * Credential.  The secret stored with llm.set_credential is a JSON object
 *	 {"access_key_id": "AKIA...", "secret_access_key": "...",
 *	  "session_token": "..."}		(session_token optional)
 * The secret access key is only HMAC key material (sigv4.c): it is never
 * written into a header, a URL, a body or an error.  The access key id
 * appears in the Authorization header's Credential scope, as AWS wants.
 *
 * Region.  The provider's region column (llm.add_provider's 4th
 * argument); when it is NULL, the region in a base_url of the form
 * https://bedrock-runtime.{region}.amazonaws.com[...].
 *
 * Signing.  Signed headers: content-type, host, x-amz-date and, with a
 * session token, x-amz-security-token (botocore signs every header it
 * sends but its blacklist; we send no other header before signing).  The
 * Host header is sent explicitly so that what curl sends is what we
 * signed.  The model id is one path label, percent-encoded with the safe
 * set -_.~ as botocore does (":" -> %3A, "/" -> %2F); the canonical URI
 * encodes that path again (sigv4.c).  x-amz-content-sha256 is not sent
 * (botocore sends it only to S3).
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <time.h>

#include "common/json_util.h"
#include "common/llm_errors.h"
#include "common/sigv4.h"
#include "providers/adapter.h"
#include "providers/adapter_util.h"
#include "providers/bedrock.h"
#include "providers/forced_output.h"

#define BEDROCK_SERVICE "bedrock"

/* true if s is non-empty and every byte is in the set allowed by ok() */
static bool
all_chars(const char *s, bool (*ok) (char c))
{
	if (s == NULL || *s == '\0')
		return false;
	for (; *s; s++)
		if (!ok(*s))
			return false;
	return true;
}

static bool
alnum(char c)
{
	return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9');
}

static bool
region_char(char c)
{
	return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-';
}

/* printable ASCII without blanks: nothing that could end a header line */
static bool
token_char(char c)
{
	return c > ' ' && c < 127;
}

/*
 * Parse the secret.  Errors never quote it: they say which member is
 * missing or malformed, nothing more.
 */
bool
bedrock_credential(const LlmTarget *target, AwsCredential *cred, LlmError *err)
{
	Jsonb	   *j;
	char	   *why;

	memset(cred, 0, sizeof(*cred));
	if (target->secret == NULL)
		j = NULL;
	else
		j = json_parse_safe(target->secret, strlen(target->secret), &why);
	if (j == NULL || !JsonContainerIsObject(&j->root))
	{
		provider_fail(err, ERRCODE_LLM_PROVIDER_AUTH, LLM_FAIL_FATAL,
					  target->secret == NULL
					  ? "provider \"%s\" has no credential"
					  : "the credential of provider \"%s\" is not a JSON object",
					  target->provider_name ? target->provider_name : "");
		err->hint = pstrdup("Store {\"access_key_id\": ..., \"secret_access_key\": ..., \"session_token\": ... (optional)} with llm.set_credential().");
		return false;
	}
	cred->access_key_id = json_get_cstring(&j->root, "access_key_id");
	cred->secret_access_key = json_get_cstring(&j->root, "secret_access_key");
	cred->session_token = json_get_cstring(&j->root, "session_token");
	if (cred->session_token != NULL && cred->session_token[0] == '\0')
		cred->session_token = NULL;
	if (!all_chars(cred->access_key_id, alnum) ||
		!all_chars(cred->secret_access_key, token_char) ||
		(cred->session_token != NULL && !all_chars(cred->session_token, token_char)))
	{
		provider_fail(err, ERRCODE_LLM_PROVIDER_AUTH, LLM_FAIL_FATAL,
					  "the credential of provider \"%s\" needs \"access_key_id\" (letters and digits) and \"secret_access_key\" strings, and an optional \"session_token\" string, without blanks",
					  target->provider_name ? target->provider_name : "");
		err->hint = pstrdup("Store {\"access_key_id\": ..., \"secret_access_key\": ..., \"session_token\": ... (optional)} with llm.set_credential().");
		return false;
	}
	return true;
}

/* scheme://authority[/prefix]: the authority and the path prefix */
static bool
split_base_url(const char *base, char **host, char **prefix)
{
	const char *p = strstr(base, "://");
	const char *slash;

	if (p == NULL)
		return false;
	p += 3;
	slash = strchr(p, '/');
	*host = slash ? pnstrdup(p, slash - p) : pstrdup(p);
	*prefix = slash ? pstrdup(slash) : pstrdup("");
	return (*host)[0] != '\0' && strchr(*host, '@') == NULL;
}

static bool
resolve_region(const LlmTarget *target, const char *host, const char **region,
			   LlmError *err)
{
	const char *r = target->region;

	if (r == NULL && strncmp(host, "bedrock-runtime.", 16) == 0)
	{
		const char *dot = strchr(host + 16, '.');

		if (dot != NULL)
			r = pnstrdup(host + 16, dot - (host + 16));
	}
	if (r == NULL || !all_chars(r, region_char))
	{
		provider_fail(err, ERRCODE_INVALID_PARAMETER_VALUE, LLM_FAIL_FATAL,
					  r == NULL ? "provider \"%s\" of kind \"bedrock\" has no region"
					  : "provider \"%s\" has an invalid region",
					  target->provider_name ? target->provider_name : "");
		err->hint = pstrdup("Give the AWS region (e.g. us-east-1) as llm.add_provider's region, or use a base_url https://bedrock-runtime.{region}.amazonaws.com.");
		return false;
	}
	*region = r;
	return true;
}

/* ---- body ------------------------------------------------------------- */

static bool bedrock_content(const LlmTarget *target, StringInfo buf, JsonbValue *content,
							bool in_tool_result, LlmError *err);

static void
open_block(StringInfo buf, bool *first, const char *key)
{
	if (!*first)
		appendStringInfoChar(buf, ',');
	*first = false;
	appendStringInfoString(buf, "{");
	json_append_string(buf, key);
	appendStringInfoChar(buf, ':');
}

/* {"image":{"format":"png","source":{"bytes":"<base64>"}}} */
static bool
write_image(const LlmTarget *target, StringInfo buf, bool *first, JsonbContainer *block,
			LlmError *err)
{
	JsonbContainer *source = json_get_object(block, "source");
	const char *stype = json_get_cstring(source, "type");
	const char *media = json_get_cstring(source, "media_type");
	const char *data = json_get_cstring(source, "data");
	const char *format = NULL;

	if (stype == NULL || strcmp(stype, "base64") != 0)
		return provider_unsupported(err, target,
									psprintf("image sources of type \"%s\"", stype ? stype : "(none)"));
	if (media != NULL && strncmp(media, "image/", 6) == 0 &&
		(strcmp(media + 6, "png") == 0 || strcmp(media + 6, "jpeg") == 0 ||
		 strcmp(media + 6, "gif") == 0 || strcmp(media + 6, "webp") == 0))
		format = media + 6;
	if (format == NULL || data == NULL)
		return provider_fail(err, ERRCODE_INVALID_PARAMETER_VALUE, LLM_FAIL_FATAL,
							 "an image for bedrock needs \"data\" and a \"media_type\" of image/png, image/jpeg, image/gif or image/webp");
	open_block(buf, first, "image");
	appendStringInfoString(buf, "{\"format\":");
	json_append_string(buf, format);
	appendStringInfoString(buf, ",\"source\":{\"bytes\":");
	json_append_string(buf, data);
	appendStringInfoString(buf, "}}}");
	return true;
}

static bool
write_tool_result(const LlmTarget *target, StringInfo buf, bool *first,
				  JsonbContainer *block, LlmError *err)
{
	const char *id = json_get_cstring(block, "tool_use_id");
	JsonbValue *is_error = json_get(block, "is_error");
	JsonbValue *content = json_get(block, "content");

	if (id == NULL)
		return provider_fail(err, ERRCODE_INVALID_PARAMETER_VALUE, LLM_FAIL_FATAL,
							 "a tool_result block needs \"tool_use_id\"");
	open_block(buf, first, "toolResult");
	appendStringInfoString(buf, "{\"toolUseId\":");
	json_append_string(buf, id);
	appendStringInfoString(buf, ",\"content\":");
	if (content == NULL || content->type == jbvNull)
		appendStringInfoString(buf, "[]");
	else if (!bedrock_content(target, buf, content, true, err))
		return false;
	appendStringInfoString(buf, ",\"status\":");
	json_append_string(buf, is_error && is_error->type == jbvBool && is_error->val.boolean
					   ? "error" : "success");
	appendStringInfoString(buf, "}}");
	return true;
}

/*
 * A canonical content value (string or block array) as a Converse content
 * array.  Inside a toolResult only text and images are allowed.
 */
static bool
bedrock_content(const LlmTarget *target, StringInfo buf, JsonbValue *content,
				bool in_tool_result, LlmError *err)
{
	JsonbContainer *blocks;
	bool		first = true;
	int			n;

	if (content != NULL && content->type == jbvString)
	{
		appendStringInfoString(buf, "[{\"text\":");
		json_append_value(buf, content);
		appendStringInfoString(buf, "}]");
		return true;
	}
	blocks = content ? json_value_container(content, true) : NULL;
	if (blocks == NULL)
		return provider_fail(err, ERRCODE_INVALID_PARAMETER_VALUE, LLM_FAIL_FATAL,
							 "message content must be a string or an array of blocks");
	appendStringInfoChar(buf, '[');
	n = json_array_size(blocks);
	for (int i = 0; i < n; i++)
	{
		JsonbContainer *b = json_value_container(json_array_elem(blocks, i), false);
		const char *type = b ? json_get_cstring(b, "type") : NULL;

		if (type == NULL)
			return provider_fail(err, ERRCODE_INVALID_PARAMETER_VALUE, LLM_FAIL_FATAL,
								 "a content block has no \"type\"");
		if (strcmp(type, "text") == 0)
		{
			const char *text = json_get_cstring(b, "text");

			open_block(buf, &first, "text");
			json_append_string(buf, text ? text : "");
			appendStringInfoChar(buf, '}');
			/* Anthropic's cache breakpoint is a block of its own in Converse */
			if (!in_tool_result && json_get_object(b, "cache_control") != NULL)
			{
				open_block(buf, &first, "cachePoint");
				appendStringInfoString(buf, "{\"type\":\"default\"}}");
			}
		}
		else if (strcmp(type, "image") == 0)
		{
			if (!write_image(target, buf, &first, b, err))
				return false;
		}
		else if (in_tool_result)
			return provider_unsupported(err, target,
										psprintf("content blocks of type \"%s\" inside a tool_result", type));
		else if (strcmp(type, "tool_use") == 0)
		{
			const char *id = json_get_cstring(b, "id");
			const char *name = json_get_cstring(b, "name");
			JsonbValue *input = json_get(b, "input");

			if (id == NULL || name == NULL)
				return provider_fail(err, ERRCODE_INVALID_PARAMETER_VALUE, LLM_FAIL_FATAL,
									 "a tool_use block needs \"id\" and \"name\"");
			open_block(buf, &first, "toolUse");
			appendStringInfoString(buf, "{\"toolUseId\":");
			json_append_string(buf, id);
			appendStringInfoString(buf, ",\"name\":");
			json_append_string(buf, name);
			appendStringInfoString(buf, ",\"input\":");
			if (input != NULL && input->type != jbvNull)
				json_append_value(buf, input);
			else
				appendStringInfoString(buf, "{}");
			appendStringInfoString(buf, "}}");
		}
		else if (strcmp(type, "tool_result") == 0)
		{
			if (!write_tool_result(target, buf, &first, b, err))
				return false;
		}
		else if (strcmp(type, "thinking") == 0)
		{
			/* Claude on Bedrock wants its signed reasoning back verbatim */
			const char *text = json_get_cstring(b, "thinking");
			const char *sig = json_get_cstring(b, "signature");

			open_block(buf, &first, "reasoningContent");
			appendStringInfoString(buf, "{\"reasoningText\":{\"text\":");
			json_append_string(buf, text ? text : "");
			if (sig != NULL)
			{
				appendStringInfoString(buf, ",\"signature\":");
				json_append_string(buf, sig);
			}
			appendStringInfoString(buf, "}}}");
		}
		else if (strcmp(type, "redacted_thinking") == 0)
		{
			const char *data = json_get_cstring(b, "data");

			open_block(buf, &first, "reasoningContent");
			appendStringInfoString(buf, "{\"redactedContent\":");
			json_append_string(buf, data ? data : "");
			appendStringInfoString(buf, "}}");
		}
		else
			return provider_unsupported(err, target,
										psprintf("content blocks of type \"%s\"", type));
	}
	appendStringInfoChar(buf, ']');
	return true;
}

static bool
write_system(const LlmTarget *target, StringInfo buf, bool *first, JsonbValue *system,
			 LlmError *err)
{
	JsonbContainer *blocks;

	if (system == NULL || system->type == jbvNull)
		return true;
	blocks = json_value_container(system, true);
	if (system->type != jbvString && blocks == NULL)
		return provider_fail(err, ERRCODE_INVALID_PARAMETER_VALUE, LLM_FAIL_FATAL,
							 "\"system\" must be a string or an array of text blocks");
	for (int i = 0; blocks != NULL && i < json_array_size(blocks); i++)
	{
		JsonbContainer *b = json_value_container(json_array_elem(blocks, i), false);
		const char *type = b ? json_get_cstring(b, "type") : NULL;

		if (type == NULL || strcmp(type, "text") != 0)
			return provider_unsupported(err, target,
										psprintf("system blocks of type \"%s\"", type ? type : "(none)"));
	}
	json_append_key(buf, first, "system");
	return bedrock_content(target, buf, system, false, err);
}

static bool
write_messages(const LlmTarget *target, StringInfo buf, bool *first,
			   JsonbContainer *req, LlmError *err)
{
	JsonbContainer *msgs = json_get_array(req, "messages");
	int			n = json_array_size(msgs);

	if (msgs == NULL || n == 0)
		return provider_fail(err, ERRCODE_INVALID_PARAMETER_VALUE, LLM_FAIL_FATAL,
							 "the request needs a non-empty \"messages\" array");
	json_append_key(buf, first, "messages");
	appendStringInfoChar(buf, '[');
	for (int i = 0; i < n; i++)
	{
		JsonbContainer *m = json_value_container(json_array_elem(msgs, i), false);
		const char *role = m ? json_get_cstring(m, "role") : NULL;

		if (role == NULL || (strcmp(role, "user") != 0 && strcmp(role, "assistant") != 0))
			return provider_fail(err, ERRCODE_INVALID_PARAMETER_VALUE, LLM_FAIL_FATAL,
								 "message %d must have role \"user\" or \"assistant\"", i + 1);
		if (i > 0)
			appendStringInfoChar(buf, ',');
		appendStringInfoString(buf, "{\"role\":");
		json_append_string(buf, role);
		appendStringInfoString(buf, ",\"content\":");
		if (!bedrock_content(target, buf, json_get(m, "content"), false, err))
			return false;
		appendStringInfoChar(buf, '}');
	}
	appendStringInfoChar(buf, ']');
	return true;
}

static void
inference_member(StringInfo buf, bool *first, JsonbContainer *req, const char *from,
				 const char *to)
{
	JsonbValue *v = json_get(req, from);

	if (v == NULL || v->type == jbvNull)
		return;
	if (json_value_container(v, true) != NULL &&
		json_array_size(json_value_container(v, true)) == 0)
		return;
	json_append_key(buf, first, to);
	json_append_value(buf, v);
}

static void
write_inference(StringInfo buf, bool *first, JsonbContainer *req, int64 max_tokens)
{
	StringInfoData ic;
	bool		ifirst = true;

	initStringInfo(&ic);
	appendStringInfoChar(&ic, '{');
	if (max_tokens >= 0)
	{
		json_append_key(&ic, &ifirst, "maxTokens");
		appendStringInfo(&ic, INT64_FORMAT, max_tokens);
	}
	inference_member(&ic, &ifirst, req, "temperature", "temperature");
	inference_member(&ic, &ifirst, req, "top_p", "topP");
	inference_member(&ic, &ifirst, req, "stop_sequences", "stopSequences");
	appendStringInfoChar(&ic, '}');
	if (!ifirst)
	{
		json_append_key(buf, first, "inferenceConfig");
		appendBinaryStringInfo(buf, ic.data, ic.len);
	}
}

static bool
write_tools(const LlmTarget *target, StringInfo buf, bool *first, JsonbContainer *req,
			LlmError *err)
{
	JsonbContainer *tools = json_get_array(req, "tools");
	JsonbContainer *choice = json_get_object(req, "tool_choice");
	const char *ctype = choice ? json_get_cstring(choice, "type") : NULL;
	int			n = json_array_size(tools);

	if (n == 0)
		return true;
	json_append_key(buf, first, "toolConfig");
	appendStringInfoString(buf, "{\"tools\":[");
	for (int i = 0; i < n; i++)
	{
		JsonbContainer *t = json_value_container(json_array_elem(tools, i), false);
		const char *name = t ? json_get_cstring(t, "name") : NULL;
		const char *desc = t ? json_get_cstring(t, "description") : NULL;
		JsonbValue *schema = t ? json_get(t, "input_schema") : NULL;
		const char *type = t ? json_get_cstring(t, "type") : NULL;

		if (type != NULL && strcmp(type, "custom") != 0)
			return provider_unsupported(err, target, psprintf("tools of type \"%s\"", type));
		if (name == NULL || schema == NULL || json_value_container(schema, false) == NULL)
			return provider_fail(err, ERRCODE_INVALID_PARAMETER_VALUE, LLM_FAIL_FATAL,
								 "tool %d needs \"name\" and an \"input_schema\" object", i + 1);
		if (i > 0)
			appendStringInfoChar(buf, ',');
		appendStringInfoString(buf, "{\"toolSpec\":{\"name\":");
		json_append_string(buf, name);
		if (desc != NULL)
		{
			appendStringInfoString(buf, ",\"description\":");
			json_append_string(buf, desc);
		}
		appendStringInfoString(buf, ",\"inputSchema\":{\"json\":");
		json_append_value(buf, schema);
		appendStringInfoString(buf, "}}}");
	}
	appendStringInfoChar(buf, ']');
	if (ctype == NULL || strcmp(ctype, "auto") == 0)
		appendStringInfoString(buf, ",\"toolChoice\":{\"auto\":{}}");
	else if (strcmp(ctype, "any") == 0)
		appendStringInfoString(buf, ",\"toolChoice\":{\"any\":{}}");
	else if (strcmp(ctype, "tool") == 0 && json_get_cstring(choice, "name") != NULL)
	{
		appendStringInfoString(buf, ",\"toolChoice\":{\"tool\":{\"name\":");
		json_append_string(buf, json_get_cstring(choice, "name"));
		appendStringInfoString(buf, "}}");
	}
	else
		/* Converse has no "none": sending tools would let the model call one */
		return provider_unsupported(err, target,
									psprintf("tool_choice \"%s\"", ctype));
	appendStringInfoChar(buf, '}');
	return true;
}

/* ---- build_request -------------------------------------------------------- */

bool
bedrock_build_request(const LlmCall *call, const LlmTarget *target,
					  LlmHttpRequest *out, LlmError *err)
{
	JsonbContainer *req = &call->request->root;
	AwsCredential cred;
	BedrockEndpoint ep;
	int64		max_tokens;
	bool		first = true;

	memset(out, 0, sizeof(*out));
	initStringInfo(&out->body);

	if (!JsonContainerIsObject(req))
		return provider_fail(err, ERRCODE_INVALID_PARAMETER_VALUE, LLM_FAIL_FATAL,
							 "canonical request must be a JSON object");
	if (target->upstream_model == NULL || target->upstream_model[0] == '\0' ||
		strcmp(target->upstream_model, ".") == 0 || strcmp(target->upstream_model, "..") == 0)
		return provider_fail(err, ERRCODE_INVALID_PARAMETER_VALUE, LLM_FAIL_FATAL,
							 "target has no valid upstream model id");
	/* Converse has no JSON-schema mode: structured output is a forced tool call */
	if (json_get(req, "output_config") != NULL)
	{
		Jsonb	   *forced;

		if (!forced_output_request(call->request, &forced, err))
			return false;
		req = &forced->root;
	}

	if (!bedrock_endpoint(target, &ep, err) ||
		!provider_max_tokens(call, target, -1, &max_tokens, err) ||
		!bedrock_credential(target, &cred, err))
		return false;

	/* body */
	appendStringInfoChar(&out->body, '{');
	if (!write_messages(target, &out->body, &first, req, err) ||
		!write_system(target, &out->body, &first, json_get(req, "system"), err))
		return false;
	write_inference(&out->body, &first, req, max_tokens);
	if (!write_tools(target, &out->body, &first, req, err))
		return false;
	appendStringInfoChar(&out->body, '}');

	return bedrock_sign(target, &ep, &cred, "converse", out, err);
}

/* ---- shared with bedrock_embed.c -------------------------------------- */

/* base_url split into host and path prefix, and the region */
bool
bedrock_endpoint(const LlmTarget *target, BedrockEndpoint *ep, LlmError *err)
{
	memset(ep, 0, sizeof(*ep));
	ep->base = provider_base_url(target);
	if (!split_base_url(ep->base, &ep->host, &ep->prefix))
		return provider_fail(err, ERRCODE_INVALID_PARAMETER_VALUE, LLM_FAIL_FATAL,
							 "base_url \"%s\" has no host", ep->base);
	return resolve_region(target, ep->host, &ep->region, err);
}

/*
 * URL {base}/model/{modelId}/{operation} and the SigV4 headers for the body
 * already in out->body (which is what gets signed, so it must be final).
 */
bool
bedrock_sign(const LlmTarget *target, const BedrockEndpoint *ep, const AwsCredential *cred,
			 const char *operation, LlmHttpRequest *out, LlmError *err)
{
	char	   *model;
	char	   *path;
	char		amz_date[17];
	SigV4Header sh[4];
	int			nsh = 0;
	SigV4Request sreq;
	SigV4Result sres;

	/* URL: the model id is one path label */
	model = sigv4_uri_encode(target->upstream_model, strlen(target->upstream_model), false);
	path = psprintf("%s/model/%s/%s", ep->prefix, model, operation);
	/* base is scheme://host + prefix, so this is the URL of exactly that path */
	out->url = psprintf("%s/model/%s/%s", ep->base, model, operation);

	/* signature; the clock is read here, sigv4.c is pure */
	sigv4_amz_date(time(NULL), amz_date);
	sh[nsh++] = (SigV4Header) {"content-type", "application/json"};
	sh[nsh++] = (SigV4Header) {"host", ep->host};
	sh[nsh++] = (SigV4Header) {"x-amz-date", amz_date};
	if (cred->session_token)
		sh[nsh++] = (SigV4Header) {"x-amz-security-token", cred->session_token};
	memset(&sreq, 0, sizeof(sreq));
	sreq.method = "POST";
	sreq.path = path;
	sreq.headers = sh;
	sreq.nheaders = nsh;
	sreq.payload = out->body.data;
	sreq.payload_len = out->body.len;
	sreq.amz_date = amz_date;
	sreq.region = ep->region;
	sreq.service = BEDROCK_SERVICE;
	sreq.access_key_id = cred->access_key_id;
	sreq.secret_access_key = cred->secret_access_key;
	if (!sigv4_sign(&sreq, &sres))
		return provider_fail(err, ERRCODE_INTERNAL_ERROR, LLM_FAIL_FATAL,
							 "could not compute the AWS signature (OpenSSL failed)");

	for (int i = 0; i < nsh; i++)
		provider_add_header(out, sh[i].name, sh[i].value);
	provider_add_header(out, "authorization", sres.authorization);
	return true;
}

/*-------------------------------------------------------------------------
 *
 * vertex.c
 *	  Adapter for Gemini on Vertex AI (kind "vertex"):
 *	  POST {base_url}/{api_version}/projects/{project}/locations/{region}/
 *	       publishers/google/models/{model}:generateContent
 *	  with "authorization: Bearer <access token>".
 *
 * runs in: worker (and backends, for the diagnostic adapter functions).
 *
 * The body and the answer are Gemini's: this file only puts Vertex's URL
 * and auth around gemini_build_http(), and registers the kind with the
 * Gemini parsers unchanged.
 *
 * The credential stored for the provider is a service-account JSON key,
 * but the adapter never sees it: the worker (worker/vertex_token.c) signs
 * a JWT with its private key, exchanges it for an access token, and hands
 * the adapter the token as target->secret and the key's project_id as
 * provider option "project" (unless the provider's options name one).
 * The diagnostic llm.adapter_build_request passes its secret argument as
 * the token and its provider_options as they are.
 *
 * Region.  The provider's region column (llm.add_provider's region, or
 * provider_options.region in the diagnostic functions); "global" is a
 * region like the others.  base_url is the regional endpoint,
 * https://{region}-aiplatform.googleapis.com (https://aiplatform.googleapis.com
 * for global).
 *
 * vertex_parse_token_answer() reads the token endpoint's answer for the
 * worker; it lives here, pure like the adapters, so that the fuzz harness
 * drives it too.
 *
 * Provider options:
 *	 project		 Google Cloud project id (default: the key's project_id)
 *	 api_version	 URL version segment (default v1)
 *	 token_url		 token endpoint (worker only; default: the key's token_uri)
 *	 schema_mode, safety_settings, headers: as for kind "gemini"
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <ctype.h>

#include "common/llm_errors.h"
#include "providers/adapter.h"
#include "providers/adapter_util.h"
#include "common/json_util.h"
#include "providers/embed_kinds.h"
#include "providers/gemini.h"
#include "providers/vertex.h"

#define VERTEX_DEFAULT_API_VERSION "v1"

static bool vertex_build_request(const LlmCall *call, const LlmTarget *target,
								 LlmHttpRequest *out, LlmError *err);

const char *const vertex_reserved_headers[] = {
	"content-type", "x-goog-api-key", "authorization", "content-length", "host", NULL
};

const LlmProvider llm_provider_vertex = {
	"vertex",					/* kind */
	"a Google Cloud service-account JSON key (type, project_id, private_key_id, private_key, client_email, token_uri); the worker exchanges it for an access token sent as authorization: Bearer",	/* auth_hint */
	vertex_build_request,		/* build_request */
	gemini_parse_response,		/* parse_response */
	gemini_parse_error,			/* parse_error */
	vertex_build_embed_request,	/* build_embed_request */
	vertex_parse_embed_response,	/* parse_embed_response */
	VERTEX_EMBED_BATCH_MAX		/* embed_batch_max */
};

/* Regions and project ids are [a-z0-9-] (projects also allow a "domain:" prefix). */
static bool
valid_id(const char *s, bool allow_colon_dot)
{
	if (s == NULL || s[0] == '\0' || strlen(s) > 128)
		return false;
	for (const char *p = s; *p; p++)
	{
		if (!(islower((unsigned char) *p) || isdigit((unsigned char) *p) || *p == '-' ||
			  (allow_colon_dot && (*p == ':' || *p == '.'))))
			return false;
	}
	return true;
}

/*
 * {base_url}/{api_version}/projects/{project}/locations/{region}/publishers/
 * google/models/{model}:{method}, with region, project and token checked:
 * the URL of every Vertex call (generateContent, and predict for
 * embeddings).
 */
bool
vertex_model_url(const LlmTarget *target, const char *method, char **url, LlmError *err)
{
	const char *project;
	const char *version;

	if (target->upstream_model == NULL)
		return provider_fail(err, ERRCODE_INVALID_PARAMETER_VALUE, LLM_FAIL_FATAL,
							 "target has no upstream model");
	if (!valid_id(target->region, false))
	{
		provider_fail(err, ERRCODE_INVALID_PARAMETER_VALUE, LLM_FAIL_FATAL,
					  target->region == NULL
					  ? "provider \"%s\" of kind \"vertex\" has no region"
					  : "provider \"%s\" has an invalid region",
					  target->provider_name ? target->provider_name : "");
		err->hint = pstrdup("Give the Vertex AI location (e.g. us-central1, or global) as llm.add_provider's region.");
		return false;
	}
	if (!provider_option_string(target, "project", &project, err) ||
		!provider_option_string(target, "api_version", &version, err))
		return false;
	if (!valid_id(project, true))
	{
		provider_fail(err, ERRCODE_INVALID_PARAMETER_VALUE, LLM_FAIL_FATAL,
					  project == NULL
					  ? "provider \"%s\" of kind \"vertex\" has no project"
					  : "provider \"%s\" has an invalid project id",
					  target->provider_name ? target->provider_name : "");
		err->hint = pstrdup("The service-account key's project_id is used unless the provider option \"project\" names one.");
		return false;
	}
	if (target->secret == NULL)
		return provider_fail(err, ERRCODE_LLM_PROVIDER_AUTH, LLM_FAIL_CREDENTIAL,
							 "provider \"%s\" has no access token",
							 target->provider_name ? target->provider_name : "");
	*url = psprintf("%s/%s/projects/%s/locations/%s/publishers/google/models/%s:%s",
					provider_base_url(target),
					gemini_path_encode(version ? version : VERTEX_DEFAULT_API_VERSION),
					gemini_path_encode(project), gemini_path_encode(target->region),
					gemini_path_encode(target->upstream_model), method);
	return true;
}

static bool
vertex_build_request(const LlmCall *call, const LlmTarget *target,
					 LlmHttpRequest *out, LlmError *err)
{
	char	   *url;

	if (!vertex_model_url(target, "generateContent", &url, err))
		return false;
	return gemini_build_http(call, target, url,
							 "authorization", psprintf("Bearer %s", target->secret),
							 vertex_reserved_headers, out, err);
}

/*
 * The token endpoint's answer.  A 2xx with a usable Bearer access_token
 * (printable ASCII without blanks: it goes into a header) and expires_in
 * > 0: true, *token palloc'd, the parsed copy wiped.  Anything else: false
 * and *why, "returned HTTP <status>: <what it said>" (OAuth's error and
 * error_description, or Google's {"error": {"status", "message"}}),
 * scrubbed of scrub1 and scrub2 (the JWT, the current token) and clipped.
 */
bool
vertex_parse_token_answer(long status, const char *body, size_t len,
						  const char *scrub1, const char *scrub2,
						  char **token, int64 *expires_in, char **why)
{
	char	   *msg = NULL;
	Jsonb	   *j = json_parse_safe(body ? body : "", body ? len : 0, &msg);
	bool		ok = false;

	*token = NULL;
	*expires_in = -1;
	*why = NULL;
	if (status >= 200 && status < 300)
	{
		const char *tok = NULL;
		const char *type = NULL;

		if (j != NULL && JB_ROOT_IS_OBJECT(j))
		{
			tok = json_get_cstring(&j->root, "access_token");
			type = json_get_cstring(&j->root, "token_type");
			(void) json_get_int64(&j->root, "expires_in", expires_in);
		}
		ok = tok != NULL && tok[0] != '\0' && strlen(tok) <= 8192 &&
			(type == NULL || pg_strcasecmp(type, "bearer") == 0) && *expires_in > 0;
		for (const char *p = tok; ok && *p; p++)
			if (*p <= ' ' || *p > '~')
				ok = false;
		if (ok)
			*token = pstrdup(tok);
		else
			*why = psprintf("answered HTTP %ld without a usable Bearer access_token and expires_in",
							status);
		if (tok != NULL)
			explicit_bzero((char *) tok, strlen(tok));
	}
	else
	{
		const char *code = NULL,
				   *desc = NULL;
		char	   *text;

		if (j != NULL && JB_ROOT_IS_OBJECT(j))
		{
			JsonbContainer *eo = json_get_object(&j->root, "error");

			if (eo != NULL)
			{
				code = json_get_cstring(eo, "status");
				desc = json_get_cstring(eo, "message");
			}
			else
			{
				code = json_get_cstring(&j->root, "error");
				desc = json_get_cstring(&j->root, "error_description");
			}
		}
		if (code || desc)
			text = psprintf("%s%s%s", code ? code : "", code && desc ? ": " : "", desc ? desc : "");
		else
			text = pnstrdup(body ? body : "", Min(len, 200));
		*why = psprintf("returned HTTP %ld: %s", status,
						provider_text(provider_scrub(text, scrub1), scrub2));
	}
	if (j != NULL)
		explicit_bzero(j, VARSIZE(j));
	return ok;
}

/*-------------------------------------------------------------------------
 *
 * openai_request.c
 *	  OpenAI Chat Completions adapter: the canonical (Messages) request
 *	  translated into a Chat Completions request, for the openai and
 *	  azure_openai kinds (the choices made are listed in openai.c).
 *
 * runs in: worker (and backends, for the diagnostic adapter functions).
 * Pure, like every adapter (see providers/adapter.h).
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <ctype.h>

#include "utils/builtins.h"

#include "common/json_util.h"
#include "common/llm_errors.h"
#include "providers/adapter.h"
#include "providers/adapter_util.h"
#include "providers/openai.h"

#define AZURE_DEFAULT_API_VERSION	"2024-10-21"

/* what distinguishes the kinds that speak this protocol */
typedef struct OpenAiFlavour
{
	bool		deployment_url; /* Azure's /openai/deployments/{model} URL */
	const char *auth_header;	/* header that carries the secret */
	bool		bearer;			/* prefix the secret with "Bearer " */
} OpenAiFlavour;

static const OpenAiFlavour openai_flavour = {false, "authorization", true};
static const OpenAiFlavour azure_flavour = {true, "api-key", false};

static const char *const reserved_headers[] = {
	"content-type", "authorization", "api-key", "openai-organization",
	"openai-project", "content-length", "host", NULL
};

/* Translation state for one request. */
typedef struct Translation
{
	const LlmTarget *target;
	StringInfo	buf;			/* the body being written */
	bool		first_message;	/* no message written yet */
} Translation;

/* ---------- small writers ---------- */

/* Start a new element of the messages array. */
static void
begin_message(Translation *t, const char *role)
{
	bool		first = true;

	if (!t->first_message)
		appendStringInfoChar(t->buf, ',');
	t->first_message = false;
	appendStringInfoChar(t->buf, '{');
	json_append_key(t->buf, &first, "role");
	json_append_string(t->buf, role);
}

/* {"type":"image_url","image_url":{"url":...}} from an Anthropic image block. */
static bool
write_image_part(Translation *t, StringInfo parts, JsonbContainer *block, LlmError *err)
{
	JsonbContainer *source = json_get_object(block, "source");
	const char *stype = json_get_cstring(source, "type");
	char	   *url = NULL;
	bool		first = true;
	bool		first_inner = true;

	if (stype != NULL && strcmp(stype, "base64") == 0)
	{
		const char *media = json_get_cstring(source, "media_type");
		const char *data = json_get_cstring(source, "data");

		if (media == NULL || data == NULL)
			return provider_fail(err, ERRCODE_INVALID_PARAMETER_VALUE, LLM_FAIL_FATAL,
								 "image block with a base64 source needs \"media_type\" and \"data\"");
		url = psprintf("data:%s;base64,%s", media, data);
	}
	else if (stype != NULL && strcmp(stype, "url") == 0)
		url = (char *) json_get_cstring(source, "url");
	if (url == NULL)
		return provider_unsupported(err, t->target,
									psprintf("image sources of type \"%s\"",
											 stype ? stype : "(none)"));

	appendStringInfoChar(parts, '{');
	json_append_key(parts, &first, "type");
	json_append_string(parts, "image_url");
	json_append_key(parts, &first, "image_url");
	appendStringInfoChar(parts, '{');
	json_append_key(parts, &first_inner, "url");
	json_append_string(parts, url);
	appendStringInfoString(parts, "}}");
	return true;
}

/* {"type":"text","text":...}: a content part here, a Messages block in answers */
void
openai_write_text_part(StringInfo parts, const char *text)
{
	bool		first = true;

	appendStringInfoChar(parts, '{');
	json_append_key(parts, &first, "type");
	json_append_string(parts, "text");
	json_append_key(parts, &first, "text");
	json_append_string(parts, text);
	appendStringInfoChar(parts, '}');
}

/* ---------- messages ---------- */

/*
 * {"role":"tool","tool_call_id":...,"content":...} from a tool_result block.
 * An error result reads "Error: <content>" (just "Error" when empty).
 */
static bool
write_tool_result(Translation *t, JsonbContainer *block, LlmError *err)
{
	const char *id = json_get_cstring(block, "tool_use_id");
	JsonbValue *is_error = json_get(block, "is_error");
	StringInfoData text;
	char	   *content;
	bool		first = false;

	if (id == NULL)
		return provider_fail(err, ERRCODE_INVALID_PARAMETER_VALUE, LLM_FAIL_FATAL,
							 "tool_result block has no \"tool_use_id\"");
	initStringInfo(&text);
	if (!provider_content_text(t->target, json_get(block, "content"), &text,
							 " inside a tool_result", err))
		return false;
	content = text.data;
	if (is_error != NULL && is_error->type == jbvBool && is_error->val.boolean)
		content = text.len > 0 ? psprintf("Error: %s", text.data) : "Error";

	begin_message(t, "tool");
	json_append_key(t->buf, &first, "tool_call_id");
	json_append_string(t->buf, id);
	json_append_key(t->buf, &first, "content");
	json_append_string(t->buf, content);
	appendStringInfoChar(t->buf, '}');
	return true;
}

/* A message whose content is a plain string goes across as it is. */
static bool
string_message(Translation *t, const char *role, JsonbValue *content)
{
	bool		first = false;

	if (content == NULL || content->type != jbvString)
		return false;
	begin_message(t, role);
	json_append_key(t->buf, &first, "content");
	json_append_value(t->buf, content);
	appendStringInfoChar(t->buf, '}');
	return true;
}

static bool
write_user(Translation *t, JsonbValue *content, LlmError *err)
{
	JsonbContainer *blocks;
	StringInfoData parts;
	StringInfoData joined;
	int			n;
	int			nparts = 0;
	bool		all_text = true;
	bool		first = false;

	if (string_message(t, "user", content))
		return true;
	blocks = json_value_container(content, true);
	if (blocks == NULL)
		return provider_fail(err, ERRCODE_INVALID_PARAMETER_VALUE, LLM_FAIL_FATAL,
							 "message content must be a string or an array of blocks");

	/* tool results first, in order: they answer the previous assistant turn */
	n = json_array_size(blocks);
	for (int i = 0; i < n; i++)
	{
		JsonbContainer *block = json_value_container(json_array_elem(blocks, i), false);
		const char *type = provider_block_type(block);

		if (type != NULL && strcmp(type, "tool_result") == 0 &&
			!write_tool_result(t, block, err))
			return false;
	}

	initStringInfo(&parts);
	initStringInfo(&joined);
	for (int i = 0; i < n; i++)
	{
		JsonbContainer *block = json_value_container(json_array_elem(blocks, i), false);
		const char *type = provider_block_type(block);

		if (type == NULL)
			return provider_unsupported_block(err, t->target, NULL, "");
		if (strcmp(type, "tool_result") == 0 ||
			strcmp(type, "thinking") == 0 || strcmp(type, "redacted_thinking") == 0)
			continue;
		if (nparts++ > 0)
			appendStringInfoChar(&parts, ',');
		if (strcmp(type, "text") == 0)
		{
			const char *s = json_get_cstring(block, "text");

			openai_write_text_part(&parts, s ? s : "");
			if (joined.len > 0)
				appendStringInfoString(&joined, "\n\n");
			appendStringInfoString(&joined, s ? s : "");
		}
		else if (strcmp(type, "image") == 0)
		{
			all_text = false;
			if (!write_image_part(t, &parts, block, err))
				return false;
		}
		else
			return provider_unsupported_block(err, t->target, type, "");
	}

	/* a message of nothing but tool results needs no user turn after them */
	if (nparts == 0 && n > 0)
		return true;

	begin_message(t, "user");
	json_append_key(t->buf, &first, "content");
	if (all_text)
		json_append_string(t->buf, joined.data);
	else
		appendStringInfo(t->buf, "[%s]", parts.data);
	appendStringInfoChar(t->buf, '}');
	return true;
}

/* One tool_calls element from a tool_use block. */
static bool
write_tool_call(Translation *t, StringInfo calls, JsonbContainer *block, LlmError *err)
{
	const char *id = json_get_cstring(block, "id");
	const char *name = json_get_cstring(block, "name");
	JsonbValue *input = json_get(block, "input");
	StringInfoData args;
	bool		first = true;
	bool		first_fn = true;

	if (id == NULL || name == NULL)
		return provider_fail(err, ERRCODE_INVALID_PARAMETER_VALUE, LLM_FAIL_FATAL,
							 "tool_use block needs \"id\" and \"name\"");
	initStringInfo(&args);
	if (input == NULL || input->type == jbvNull)
		appendStringInfoString(&args, "{}");
	else
		json_append_value(&args, input);

	if (calls->len > 0)
		appendStringInfoChar(calls, ',');
	appendStringInfoChar(calls, '{');
	json_append_key(calls, &first, "id");
	json_append_string(calls, id);
	json_append_key(calls, &first, "type");
	json_append_string(calls, "function");
	json_append_key(calls, &first, "function");
	appendStringInfoChar(calls, '{');
	json_append_key(calls, &first_fn, "name");
	json_append_string(calls, name);
	json_append_key(calls, &first_fn, "arguments");
	json_append_string(calls, args.data);
	appendStringInfoString(calls, "}}");
	return true;
}

static bool
write_assistant(Translation *t, JsonbValue *content, LlmError *err)
{
	JsonbContainer *blocks;
	StringInfoData text;
	StringInfoData calls;
	int			n;
	bool		first = false;

	if (string_message(t, "assistant", content))
		return true;
	blocks = json_value_container(content, true);
	if (blocks == NULL)
		return provider_fail(err, ERRCODE_INVALID_PARAMETER_VALUE, LLM_FAIL_FATAL,
							 "message content must be a string or an array of blocks");

	initStringInfo(&text);
	initStringInfo(&calls);
	n = json_array_size(blocks);
	for (int i = 0; i < n; i++)
	{
		JsonbContainer *block = json_value_container(json_array_elem(blocks, i), false);
		const char *type = provider_block_type(block);

		if (type == NULL)
			return provider_unsupported_block(err, t->target, NULL, " in an assistant message");
		if (strcmp(type, "text") == 0)
		{
			const char *s = json_get_cstring(block, "text");

			if (text.len > 0)
				appendStringInfoString(&text, "\n\n");
			appendStringInfoString(&text, s ? s : "");
		}
		else if (strcmp(type, "tool_use") == 0)
		{
			if (!write_tool_call(t, &calls, block, err))
				return false;
		}
		else if (strcmp(type, "thinking") != 0 && strcmp(type, "redacted_thinking") != 0)
			return provider_unsupported_block(err, t->target, type, " in an assistant message");
	}

	begin_message(t, "assistant");
	json_append_key(t->buf, &first, "content");
	/* OpenAI's own shape for a turn that only calls tools is content null */
	if (text.len == 0 && calls.len > 0)
		appendStringInfoString(t->buf, "null");
	else
		json_append_string(t->buf, text.data);
	if (calls.len > 0)
	{
		json_append_key(t->buf, &first, "tool_calls");
		appendStringInfo(t->buf, "[%s]", calls.data);
	}
	appendStringInfoChar(t->buf, '}');
	return true;
}

static bool
write_messages(Translation *t, JsonbContainer *req, LlmError *err)
{
	JsonbValue *system = json_get(req, "system");
	JsonbContainer *messages = json_get_array(req, "messages");
	int			n = json_array_size(messages);

	appendStringInfoChar(t->buf, '[');
	if (system != NULL && system->type != jbvNull)
	{
		StringInfoData text;
		bool		first = false;

		initStringInfo(&text);
		if (!provider_content_text(t->target, system, &text, " in the system prompt", err))
			return false;
		if (text.len > 0)
		{
			begin_message(t, "system");
			json_append_key(t->buf, &first, "content");
			json_append_string(t->buf, text.data);
			appendStringInfoChar(t->buf, '}');
		}
	}

	for (int i = 0; i < n; i++)
	{
		JsonbContainer *msg = json_value_container(json_array_elem(messages, i), false);
		const char *role = msg ? json_get_cstring(msg, "role") : NULL;
		JsonbValue *content = msg ? json_get(msg, "content") : NULL;

		if (role != NULL && strcmp(role, "user") == 0)
		{
			if (!write_user(t, content, err))
				return false;
		}
		else if (role != NULL && strcmp(role, "assistant") == 0)
		{
			if (!write_assistant(t, content, err))
				return false;
		}
		else
			return provider_fail(err, ERRCODE_INVALID_PARAMETER_VALUE, LLM_FAIL_FATAL,
								 "message %d has role \"%s\"; only \"user\" and \"assistant\" can be translated",
								 i, role ? role : "(none)");
	}
	appendStringInfoChar(t->buf, ']');
	return true;
}

/* ---------- tools ---------- */

/*
 * tool_choice: auto -> "auto", any -> "required", tool -> the named
 * function, none -> "none"; disable_parallel_tool_use -> parallel_tool_calls
 * false.
 */
static bool
write_tool_choice(Translation *t, JsonbContainer *choice, bool *first, LlmError *err)
{
	const char *type = json_get_cstring(choice, "type");
	JsonbValue *no_parallel = json_get(choice, "disable_parallel_tool_use");

	json_append_key(t->buf, first, "tool_choice");
	if (type != NULL && strcmp(type, "auto") == 0)
		json_append_string(t->buf, "auto");
	else if (type != NULL && strcmp(type, "any") == 0)
		json_append_string(t->buf, "required");
	else if (type != NULL && strcmp(type, "none") == 0)
		json_append_string(t->buf, "none");
	else if (type != NULL && strcmp(type, "tool") == 0)
	{
		const char *name = json_get_cstring(choice, "name");
		bool		first_choice = true;
		bool		first_fn = true;

		if (name == NULL)
			return provider_fail(err, ERRCODE_INVALID_PARAMETER_VALUE, LLM_FAIL_FATAL,
								 "tool_choice of type \"tool\" needs a \"name\"");
		appendStringInfoChar(t->buf, '{');
		json_append_key(t->buf, &first_choice, "type");
		json_append_string(t->buf, "function");
		json_append_key(t->buf, &first_choice, "function");
		appendStringInfoChar(t->buf, '{');
		json_append_key(t->buf, &first_fn, "name");
		json_append_string(t->buf, name);
		appendStringInfoString(t->buf, "}}");
	}
	else
		return provider_unsupported(err, t->target,
									psprintf("tool_choice of type \"%s\"", type ? type : "(none)"));

	if (no_parallel != NULL && no_parallel->type == jbvBool && no_parallel->val.boolean)
	{
		json_append_key(t->buf, first, "parallel_tool_calls");
		appendStringInfoString(t->buf, "false");
	}
	return true;
}

/* ---------- build_request ---------- */

static void
copy_member(StringInfo buf, bool *first, JsonbContainer *req, const char *from,
			const char *to)
{
	JsonbValue *v = json_get(req, from);

	/* an empty stop list means "none", which some servers reject as a value */
	if (v == NULL || v->type == jbvNull ||
		(json_value_container(v, true) != NULL &&
		 json_array_size(json_value_container(v, true)) == 0))
		return;
	json_append_key(buf, first, to);
	json_append_value(buf, v);
}

/* Percent-encode a URL path segment or query value (RFC 3986 unreserved kept). */
static char *
url_encode(const char *s)
{
	StringInfoData buf;

	initStringInfo(&buf);
	for (const unsigned char *p = (const unsigned char *) s; *p; p++)
	{
		if (isalnum(*p) || strchr("-._~", *p) != NULL)
			appendStringInfoChar(&buf, (char) *p);
		else
			appendStringInfo(&buf, "%%%02X", *p);
	}
	return buf.data;
}

/* op: the operation's path, "chat/completions" or "embeddings" */
static bool
openai_url(const LlmTarget *target, const OpenAiFlavour *flavour, const char *op,
		   LlmHttpRequest *out, LlmError *err)
{
	const char *api_version;

	if (!flavour->deployment_url)
	{
		out->url = psprintf("%s/%s", provider_base_url(target), op);
		return true;
	}
	if (!provider_option_string(target, "api_version", &api_version, err))
		return false;
	out->url = psprintf("%s/openai/deployments/%s/%s?api-version=%s",
						provider_base_url(target), url_encode(target->upstream_model), op,
						url_encode(api_version ? api_version : AZURE_DEFAULT_API_VERSION));
	return true;
}

static bool
openai_headers(const LlmTarget *target, const OpenAiFlavour *flavour,
			   LlmHttpRequest *out, LlmError *err)
{
	const char *organization;
	const char *project;

	if (!provider_option_string(target, "organization", &organization, err) ||
		!provider_option_string(target, "project", &project, err))
		return false;
	provider_add_header(out, "content-type", "application/json");
	if (target->secret != NULL)
		provider_add_header(out, flavour->auth_header,
							flavour->bearer ? psprintf("Bearer %s", target->secret)
							: target->secret);
	if (organization != NULL)
		provider_add_header(out, "openai-organization", organization);
	if (project != NULL)
		provider_add_header(out, "openai-project", project);
	return provider_option_headers(out, target, reserved_headers, err);
}

static bool
openai_build(const LlmCall *call, const LlmTarget *target,
			 const OpenAiFlavour *flavour, LlmHttpRequest *out, LlmError *err)
{
	JsonbContainer *req = &call->request->root;
	JsonbContainer *tools;
	JsonbContainer *choice;
	const char *user;
	const char *max_field;
	int64		max_tokens;
	Translation t;
	bool		first = true;

	memset(out, 0, sizeof(*out));
	initStringInfo(&out->body);

	if (!JsonContainerIsObject(req))
		return provider_fail(err, ERRCODE_INVALID_PARAMETER_VALUE, LLM_FAIL_FATAL,
							 "canonical request must be a JSON object");
	if (target->upstream_model == NULL)
		return provider_fail(err, ERRCODE_INVALID_PARAMETER_VALUE, LLM_FAIL_FATAL,
							 "target has no upstream model");
	if (!provider_option_string(target, "max_tokens_field", &max_field, err) ||
		!provider_max_tokens(call, target, -1, &max_tokens, err))
		return false;
	if (max_field == NULL)
		max_field = "max_completion_tokens";
	else if (strcmp(max_field, "max_completion_tokens") != 0 &&
			 strcmp(max_field, "max_tokens") != 0)
	{
		provider_fail(err, ERRCODE_INVALID_PARAMETER_VALUE, LLM_FAIL_FATAL,
					  "provider option \"max_tokens_field\" must be \"max_completion_tokens\" or \"max_tokens\"");
		err->hint = pstrdup("Use \"max_tokens\" for servers that do not know max_completion_tokens.");
		return false;
	}

	if (!openai_url(target, flavour, "chat/completions", out, err) ||
		!openai_headers(target, flavour, out, err))
		return false;

	t.target = target;
	t.buf = &out->body;
	t.first_message = true;

	appendStringInfoChar(t.buf, '{');
	json_append_key(t.buf, &first, "model");
	json_append_string(t.buf, target->upstream_model);
	json_append_key(t.buf, &first, "messages");
	if (!write_messages(&t, req, err))
		return false;

	if (max_tokens >= 0)
	{
		json_append_key(t.buf, &first, max_field);
		appendStringInfo(t.buf, INT64_FORMAT, max_tokens);
	}
	copy_member(t.buf, &first, req, "temperature", "temperature");
	copy_member(t.buf, &first, req, "top_p", "top_p");
	copy_member(t.buf, &first, req, "stop_sequences", "stop");
	openai_write_response_format(t.buf, &first, req);

	tools = json_get_array(req, "tools");
	if (json_array_size(tools) > 0)
	{
		json_append_key(t.buf, &first, "tools");
		if (!provider_write_function_tools(t.buf, t.target, tools, err))
			return false;
		choice = json_get_object(req, "tool_choice");
		if (choice != NULL && !write_tool_choice(&t, choice, &first, err))
			return false;
	}

	user = json_get_cstring(json_get_object(req, "metadata"), "user_id");
	if (user != NULL)
	{
		json_append_key(t.buf, &first, "user");
		json_append_string(t.buf, user);
	}
	appendStringInfoChar(t.buf, '}');
	return true;
}

/* URL and headers of another operation (embeddings) of either kind */
bool
openai_endpoint(const LlmTarget *target, bool azure, const char *op,
				LlmHttpRequest *out, LlmError *err)
{
	const OpenAiFlavour *flavour = azure ? &azure_flavour : &openai_flavour;

	return openai_url(target, flavour, op, out, err) &&
		openai_headers(target, flavour, out, err);
}

bool
openai_build_request(const LlmCall *call, const LlmTarget *target,
					 LlmHttpRequest *out, LlmError *err)
{
	return openai_build(call, target, &openai_flavour, out, err);
}

bool
azure_build_request(const LlmCall *call, const LlmTarget *target,
					LlmHttpRequest *out, LlmError *err)
{
	return openai_build(call, target, &azure_flavour, out, err);
}

/*-------------------------------------------------------------------------
 *
 * gemini_request.c
 *	  Gemini generateContent: the canonical (Messages) request translated
 *	  into a GenerateContentRequest, and the HTTP request around it.
 *
 * runs in: worker (and backends, for the diagnostic adapter functions).
 * Pure, like every adapter (see providers/adapter.h).
 *
 * The choices of the translation are listed in gemini.c.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "common/json_util.h"
#include "common/llm_errors.h"
#include "providers/adapter.h"
#include "providers/adapter_util.h"
#include "providers/gemini.h"

/* Translation state for one request. */
typedef struct Translation
{
	const LlmTarget *target;
	StringInfo	buf;			/* the body being written */
	JsonbContainer *messages;	/* the canonical messages, for tool names */
	bool		json_schema;	/* schema_mode "json_schema" */
} Translation;

/* Start a part: "," between parts, then "{" */
static void
begin_part(StringInfo parts, bool *first_part)
{
	if (!*first_part)
		appendStringInfoChar(parts, ',');
	*first_part = false;
	appendStringInfoChar(parts, '{');
}

/* {"text": s[, "thoughtSignature": sig]} */
static void
write_text_part(StringInfo parts, bool *first_part, const char *text, const char **sig)
{
	bool		first = true;

	begin_part(parts, first_part);
	json_append_key(parts, &first, "text");
	json_append_string(parts, text);
	if (sig != NULL && *sig != NULL)
	{
		json_append_key(parts, &first, "thoughtSignature");
		json_append_string(parts, *sig);
		*sig = NULL;
	}
	appendStringInfoChar(parts, '}');
}

static bool
write_image_part(Translation *t, StringInfo parts, bool *first_part,
				 JsonbContainer *block, LlmError *err)
{
	JsonbContainer *source = json_get_object(block, "source");
	const char *stype = json_get_cstring(source, "type");
	const char *media = json_get_cstring(source, "media_type");
	const char *data = json_get_cstring(source, "data");
	bool		first = true;
	bool		first_inner = true;

	if (stype == NULL || strcmp(stype, "base64") != 0)
		return provider_unsupported(err, t->target,
									psprintf("image sources of type \"%s\"",
											 stype ? stype : "(none)"));
	if (media == NULL || data == NULL)
		return provider_fail(err, ERRCODE_INVALID_PARAMETER_VALUE, LLM_FAIL_FATAL,
							 "image block with a base64 source needs \"media_type\" and \"data\"");
	begin_part(parts, first_part);
	json_append_key(parts, &first, "inlineData");
	appendStringInfoChar(parts, '{');
	json_append_key(parts, &first_inner, "mimeType");
	json_append_string(parts, media);
	json_append_key(parts, &first_inner, "data");
	json_append_string(parts, data);
	appendStringInfoString(parts, "}}");
	return true;
}

/* An id Gemini gave (or a foreign one) is echoed; ours is not. */
static bool
sendable_id(const char *id)
{
	return id != NULL && strncmp(id, GEMINI_TOOL_ID_PREFIX, strlen(GEMINI_TOOL_ID_PREFIX)) != 0;
}

/*
 * The name of the tool_use with this id, searched backwards from message
 * "before": the nearest call wins if an id repeats across turns.
 */
static const char *
tool_name_for(Translation *t, int before, const char *id)
{
	for (int i = before - 1; i >= 0; i--)
	{
		JsonbContainer *msg = json_value_container(json_array_elem(t->messages, i), false);
		JsonbContainer *blocks = json_get_array(msg, "content");

		for (int j = json_array_size(blocks) - 1; j >= 0; j--)
		{
			JsonbContainer *block = json_value_container(json_array_elem(blocks, j), false);
			const char *type = provider_block_type(block);
			const char *bid = block ? json_get_cstring(block, "id") : NULL;

			if (type != NULL && strcmp(type, "tool_use") == 0 &&
				bid != NULL && strcmp(bid, id) == 0)
				return json_get_cstring(block, "name");
		}
	}
	return NULL;
}

static bool
write_function_response(Translation *t, int msgno, StringInfo parts, bool *first_part,
						JsonbContainer *block, LlmError *err)
{
	const char *id = json_get_cstring(block, "tool_use_id");
	JsonbValue *is_error = json_get(block, "is_error");
	const char *name;
	StringInfoData text;
	bool		first = true;
	bool		first_fr = true;
	bool		first_resp = true;

	if (id == NULL)
		return provider_fail(err, ERRCODE_INVALID_PARAMETER_VALUE, LLM_FAIL_FATAL,
							 "tool_result block has no \"tool_use_id\"");
	name = tool_name_for(t, msgno, id);
	if (name == NULL)
	{
		provider_fail(err, ERRCODE_LLM_PROVIDER_INVALID_REQUEST, LLM_FAIL_FATAL,
					  "tool_result in message %d answers tool_use id \"%s\", which no earlier assistant message contains",
					  msgno, id);
		err->hint = pstrdup("Gemini matches a tool result to its call by the tool's name; "
							"keep the assistant message with the tool_use in the history.");
		return false;
	}
	initStringInfo(&text);
	if (!provider_content_text(t->target, json_get(block, "content"), &text, " inside a tool_result", err))
		return false;

	begin_part(parts, first_part);
	json_append_key(parts, &first, "functionResponse");
	appendStringInfoChar(parts, '{');
	if (sendable_id(id))
	{
		json_append_key(parts, &first_fr, "id");
		json_append_string(parts, id);
	}
	json_append_key(parts, &first_fr, "name");
	json_append_string(parts, name);
	json_append_key(parts, &first_fr, "response");
	appendStringInfoChar(parts, '{');
	json_append_key(parts, &first_resp,
					is_error != NULL && is_error->type == jbvBool && is_error->val.boolean
					? "error" : "output");
	json_append_string(parts, text.data);
	appendStringInfoString(parts, "}}}");
	return true;
}

static bool
write_function_call(Translation *t, StringInfo parts, bool *first_part,
					JsonbContainer *block, const char **sig, LlmError *err)
{
	const char *id = json_get_cstring(block, "id");
	const char *name = json_get_cstring(block, "name");
	JsonbValue *input = json_get(block, "input");
	bool		first = true;
	bool		first_fc = true;

	if (id == NULL || name == NULL)
		return provider_fail(err, ERRCODE_INVALID_PARAMETER_VALUE, LLM_FAIL_FATAL,
							 "tool_use block needs \"id\" and \"name\"");
	begin_part(parts, first_part);
	json_append_key(parts, &first, "functionCall");
	appendStringInfoChar(parts, '{');
	if (sendable_id(id))
	{
		json_append_key(parts, &first_fc, "id");
		json_append_string(parts, id);
	}
	json_append_key(parts, &first_fc, "name");
	json_append_string(parts, name);
	json_append_key(parts, &first_fc, "args");
	if (json_value_container(input, false) != NULL)
		json_append_value(parts, input);
	else
		appendStringInfoString(parts, "{}");
	appendStringInfoChar(parts, '}');
	if (*sig != NULL)
	{
		json_append_key(parts, &first, "thoughtSignature");
		json_append_string(parts, *sig);
		*sig = NULL;
	}
	appendStringInfoChar(parts, '}');
	return true;
}

/* A thinking block: a Gemini signature is kept (see the header), others dropped. */
static void
write_thinking(StringInfo parts, bool *first_part, JsonbContainer *block, const char **sig)
{
	const char *signature = json_get_cstring(block, "signature");
	const char *thinking = json_get_cstring(block, "thinking");
	size_t		plen = strlen(GEMINI_SIGNATURE_PREFIX);
	bool		first = true;

	if (signature == NULL || strncmp(signature, GEMINI_SIGNATURE_PREFIX, plen) != 0)
		return;
	if (thinking == NULL || thinking[0] == '\0')
	{
		*sig = signature + plen;
		return;
	}
	begin_part(parts, first_part);
	json_append_key(parts, &first, "text");
	json_append_string(parts, thinking);
	json_append_key(parts, &first, "thought");
	appendStringInfoString(parts, "true");
	json_append_key(parts, &first, "thoughtSignature");
	json_append_string(parts, signature + plen);
	appendStringInfoChar(parts, '}');
}

/* One canonical message -> one content, appended to *out (nothing if empty). */
static bool
write_content(Translation *t, int msgno, bool model, JsonbValue *content,
			  StringInfo out, LlmError *err)
{
	JsonbContainer *blocks;
	StringInfoData parts;
	bool		first_part = true;
	const char *sig = NULL;
	bool		first = true;
	const char *where = model ? " in an assistant message" : "";

	initStringInfo(&parts);
	if (content != NULL && content->type == jbvString)
		write_text_part(&parts, &first_part, json_value_cstring(content), NULL);
	else if ((blocks = json_value_container(content, true)) == NULL)
		return provider_fail(err, ERRCODE_INVALID_PARAMETER_VALUE, LLM_FAIL_FATAL,
							 "message content must be a string or an array of blocks");
	else
	{
		for (int i = 0; i < json_array_size(blocks); i++)
		{
			JsonbContainer *block = json_value_container(json_array_elem(blocks, i), false);
			const char *type = provider_block_type(block);
			bool		ok = true;

			if (type == NULL)
				return provider_unsupported_block(err, t->target, NULL, where);
			if (strcmp(type, "text") == 0)
			{
				const char *s = json_get_cstring(block, "text");

				write_text_part(&parts, &first_part, s ? s : "", &sig);
			}
			else if (strcmp(type, "image") == 0)
				ok = write_image_part(t, &parts, &first_part, block, err);
			else if (strcmp(type, "tool_use") == 0 && model)
				ok = write_function_call(t, &parts, &first_part, block, &sig, err);
			else if (strcmp(type, "tool_result") == 0 && !model)
				ok = write_function_response(t, msgno, &parts, &first_part, block, err);
			else if (strcmp(type, "thinking") == 0)
				write_thinking(&parts, &first_part, block, &sig);
			else if (strcmp(type, "redacted_thinking") != 0)
				return provider_unsupported_block(err, t->target, type, where);
			if (!ok)
				return false;
		}
		/* a signature Gemini sent on an empty text part goes back on one */
		if (sig != NULL)
			write_text_part(&parts, &first_part, "", &sig);
	}

	if (first_part)
		return true;			/* only dropped blocks: nothing to send */
	appendStringInfoChar(out, '{');
	json_append_key(out, &first, "role");
	json_append_string(out, model ? "model" : "user");
	json_append_key(out, &first, "parts");
	appendStringInfo(out, "[%s]}", parts.data);
	return true;
}

static bool
write_contents(Translation *t, LlmError *err)
{
	int			n = json_array_size(t->messages);
	bool		first_content = true;
	StringInfoData one;

	initStringInfo(&one);
	appendStringInfoChar(t->buf, '[');
	for (int i = 0; i < n; i++)
	{
		JsonbContainer *msg = json_value_container(json_array_elem(t->messages, i), false);
		const char *role = msg ? json_get_cstring(msg, "role") : NULL;
		bool		model;

		if (role != NULL && strcmp(role, "user") == 0)
			model = false;
		else if (role != NULL && strcmp(role, "assistant") == 0)
			model = true;
		else
			return provider_fail(err, ERRCODE_INVALID_PARAMETER_VALUE, LLM_FAIL_FATAL,
								 "message %d has role \"%s\"; only \"user\" and \"assistant\" can be translated",
								 i, role ? role : "(none)");
		resetStringInfo(&one);
		if (!write_content(t, i, model, json_get(msg, "content"), &one, err))
			return false;
		if (one.len == 0)
			continue;
		if (!first_content)
			appendStringInfoChar(t->buf, ',');
		first_content = false;
		appendBinaryStringInfo(t->buf, one.data, one.len);
	}
	appendStringInfoChar(t->buf, ']');
	return true;
}

static bool
write_system(Translation *t, JsonbContainer *req, bool *first, LlmError *err)
{
	JsonbValue *system = json_get(req, "system");
	StringInfoData text;
	bool		first_si = true;
	bool		first_part = true;

	if (system == NULL || system->type == jbvNull)
		return true;
	initStringInfo(&text);
	if (!provider_content_text(t->target, system, &text, " in the system prompt", err))
		return false;
	if (text.len == 0)
		return true;
	json_append_key(t->buf, first, "systemInstruction");
	appendStringInfoChar(t->buf, '{');
	json_append_key(t->buf, &first_si, "parts");
	appendStringInfoChar(t->buf, '[');
	write_text_part(t->buf, &first_part, text.data, NULL);
	appendStringInfoString(t->buf, "]}");
	return true;
}

/* A schema, translated or (schema_mode json_schema) unchanged. */
static bool
write_schema_member(Translation *t, bool *first, const char *openapi_key,
					const char *json_key, JsonbValue *schema, const char *where,
					LlmError *err)
{
	if (t->json_schema)
	{
		json_append_key(t->buf, first, json_key);
		json_append_value(t->buf, schema);
		return true;
	}
	json_append_key(t->buf, first, openapi_key);
	return gemini_write_schema(t->buf, schema, t->target, where, err);
}

static bool
write_tools(Translation *t, JsonbContainer *tools, bool *first, LlmError *err)
{
	bool		first_tools = true;

	json_append_key(t->buf, first, "tools");
	appendStringInfoString(t->buf, "[{");
	json_append_key(t->buf, &first_tools, "functionDeclarations");
	appendStringInfoChar(t->buf, '[');
	for (int i = 0; i < json_array_size(tools); i++)
	{
		JsonbContainer *tool = json_value_container(json_array_elem(tools, i), false);
		const char *type = tool ? json_get_cstring(tool, "type") : NULL;
		const char *name = tool ? json_get_cstring(tool, "name") : NULL;
		const char *description = tool ? json_get_cstring(tool, "description") : NULL;
		JsonbValue *schema = tool ? json_get(tool, "input_schema") : NULL;
		bool		first_fn = true;

		/* Anthropic server tools (web search, bash, ...) carry a versioned type */
		if (type != NULL && strcmp(type, "custom") != 0)
			return provider_unsupported(err, t->target, psprintf("tools of type \"%s\"", type));
		if (name == NULL)
			return provider_fail(err, ERRCODE_INVALID_PARAMETER_VALUE, LLM_FAIL_FATAL,
								 "tool %d has no \"name\"", i);
		if (i > 0)
			appendStringInfoChar(t->buf, ',');
		appendStringInfoChar(t->buf, '{');
		json_append_key(t->buf, &first_fn, "name");
		json_append_string(t->buf, name);
		if (description != NULL)
		{
			json_append_key(t->buf, &first_fn, "description");
			json_append_string(t->buf, description);
		}
		if (!gemini_schema_is_empty_object(schema))
		{
			/* write_schema_member writes to t->buf with its own "first" */
			if (!write_schema_member(t, &first_fn, "parameters", "parametersJsonSchema",
									 schema, psprintf("tools[%d].input_schema", i), err))
				return false;
		}
		appendStringInfoChar(t->buf, '}');
	}
	appendStringInfoString(t->buf, "]}]");
	return true;
}

static bool
write_tool_config(Translation *t, JsonbContainer *choice, bool *first, LlmError *err)
{
	const char *type = json_get_cstring(choice, "type");
	const char *name = json_get_cstring(choice, "name");
	const char *mode;
	bool		first_tc = true;
	bool		first_fcc = true;

	if (type != NULL && strcmp(type, "auto") == 0)
		mode = "AUTO";
	else if (type != NULL && (strcmp(type, "any") == 0 || strcmp(type, "tool") == 0))
		mode = "ANY";
	else if (type != NULL && strcmp(type, "none") == 0)
		mode = "NONE";
	else
		return provider_unsupported(err, t->target,
									psprintf("tool_choice of type \"%s\"", type ? type : "(none)"));
	if (strcmp(type, "tool") == 0 && name == NULL)
		return provider_fail(err, ERRCODE_INVALID_PARAMETER_VALUE, LLM_FAIL_FATAL,
							 "tool_choice of type \"tool\" needs a \"name\"");

	json_append_key(t->buf, first, "toolConfig");
	appendStringInfoChar(t->buf, '{');
	json_append_key(t->buf, &first_tc, "functionCallingConfig");
	appendStringInfoChar(t->buf, '{');
	json_append_key(t->buf, &first_fcc, "mode");
	json_append_string(t->buf, mode);
	if (strcmp(type, "tool") == 0)
	{
		json_append_key(t->buf, &first_fcc, "allowedFunctionNames");
		appendStringInfoChar(t->buf, '[');
		json_append_string(t->buf, name);
		appendStringInfoChar(t->buf, ']');
	}
	appendStringInfoString(t->buf, "}}");
	return true;
}

static void
copy_member(Translation *t, bool *first, JsonbContainer *req, const char *from, const char *to)
{
	JsonbValue *v = json_get(req, from);
	JsonbContainer *arr = json_value_container(v, true);

	if (v == NULL || v->type == jbvNull || (arr != NULL && json_array_size(arr) == 0))
		return;
	json_append_key(t->buf, first, to);
	json_append_value(t->buf, v);
}

static bool
write_thinking_config(Translation *t, JsonbContainer *thinking, bool *first, LlmError *err)
{
	const char *type = json_get_cstring(thinking, "type");
	int64		budget = 0;
	bool		first_tc = true;

	json_append_key(t->buf, first, "thinkingConfig");
	appendStringInfoChar(t->buf, '{');
	if (type != NULL && strcmp(type, "enabled") == 0)
	{
		if (!json_get_int64(thinking, "budget_tokens", &budget) || budget < 0)
			return provider_fail(err, ERRCODE_INVALID_PARAMETER_VALUE, LLM_FAIL_FATAL,
								 "thinking of type \"enabled\" needs a non-negative integer \"budget_tokens\"");
	}
	else if (type != NULL && strcmp(type, "adaptive") == 0)
		budget = -1;			/* Gemini's "dynamic" budget */
	else if (type == NULL || strcmp(type, "disabled") != 0)
		return provider_unsupported(err, t->target,
									psprintf("thinking of type \"%s\"", type ? type : "(none)"));
	json_append_key(t->buf, &first_tc, "thinkingBudget");
	appendStringInfo(t->buf, INT64_FORMAT, budget);
	if (strcmp(type, "disabled") != 0)
	{
		json_append_key(t->buf, &first_tc, "includeThoughts");
		appendStringInfoString(t->buf, "true");
	}
	appendStringInfoChar(t->buf, '}');
	return true;
}

/* output_config.format: only json_schema has a Gemini equivalent */
static bool
write_output_format(Translation *t, JsonbContainer *format, bool *first, LlmError *err)
{
	const char *type = json_get_cstring(format, "type");
	JsonbValue *schema = json_get(format, "schema");

	if (type == NULL || strcmp(type, "json_schema") != 0)
		return provider_unsupported(err, t->target,
									psprintf("output_config.format of type \"%s\"",
											 type ? type : "(none)"));
	if (json_value_container(schema, false) == NULL)
		return provider_fail(err, ERRCODE_INVALID_PARAMETER_VALUE, LLM_FAIL_FATAL,
							 "output_config.format of type \"json_schema\" needs a \"schema\" object");
	json_append_key(t->buf, first, "responseMimeType");
	json_append_string(t->buf, "application/json");
	return write_schema_member(t, first, "responseSchema", "responseJsonSchema", schema,
							   "output_config.format.schema", err);
}

static bool
write_generation_config(Translation *t, const LlmCall *call, JsonbContainer *req,
						bool *first, LlmError *err)
{
	StringInfo	body = t->buf;
	StringInfoData gc;
	int64		max_tokens;
	bool		first_gc = true;
	bool		ok = true;
	JsonbContainer *thinking = json_get_object(req, "thinking");
	JsonbContainer *format = json_get_object(json_get_object(req, "output_config"), "format");

	if (!provider_max_tokens(call, t->target, -1, &max_tokens, err))
		return false;
	/* written aside, so an empty generationConfig is not sent at all */
	initStringInfo(&gc);
	t->buf = &gc;
	if (max_tokens >= 0)
	{
		json_append_key(&gc, &first_gc, "maxOutputTokens");
		appendStringInfo(&gc, INT64_FORMAT, max_tokens);
	}
	copy_member(t, &first_gc, req, "temperature", "temperature");
	copy_member(t, &first_gc, req, "top_p", "topP");
	copy_member(t, &first_gc, req, "top_k", "topK");
	copy_member(t, &first_gc, req, "stop_sequences", "stopSequences");
	if (thinking != NULL)
		ok = write_thinking_config(t, thinking, &first_gc, err);
	if (ok && format != NULL)
		ok = write_output_format(t, format, &first_gc, err);
	t->buf = body;
	if (!ok)
		return false;
	if (!first_gc)
	{
		json_append_key(body, first, "generationConfig");
		appendStringInfo(body, "{%s}", gc.data);
	}
	return true;
}

bool
gemini_write_body(const LlmCall *call, const LlmTarget *target, StringInfo body,
				  LlmError *err)
{
	JsonbContainer *req = &call->request->root;
	JsonbContainer *tools;
	JsonbContainer *choice;
	const char *mode;
	JsonbValue *safety = json_get(&target->provider_options->root, "safety_settings");
	Translation t;
	bool		first = true;

	if (!JsonContainerIsObject(req))
		return provider_fail(err, ERRCODE_INVALID_PARAMETER_VALUE, LLM_FAIL_FATAL,
							 "canonical request must be a JSON object");
	if (!provider_option_string(target, "schema_mode", &mode, err))
		return false;
	if (mode != NULL && strcmp(mode, "openapi") != 0 && strcmp(mode, "json_schema") != 0)
	{
		provider_fail(err, ERRCODE_INVALID_PARAMETER_VALUE, LLM_FAIL_FATAL,
					  "provider option \"schema_mode\" must be \"openapi\" or \"json_schema\"");
		err->hint = pstrdup("\"json_schema\" sends schemas unchanged, for models that accept full JSON Schema.");
		return false;
	}
	if (safety != NULL && json_value_container(safety, true) == NULL)
		return provider_fail(err, ERRCODE_INVALID_PARAMETER_VALUE, LLM_FAIL_FATAL,
							 "provider option \"safety_settings\" must be an array");

	t.target = target;
	t.buf = body;
	t.messages = json_get_array(req, "messages");
	t.json_schema = mode != NULL && strcmp(mode, "json_schema") == 0;

	appendStringInfoChar(body, '{');
	if (!write_system(&t, req, &first, err))
		return false;
	json_append_key(body, &first, "contents");
	if (!write_contents(&t, err))
		return false;

	tools = json_get_array(req, "tools");
	if (json_array_size(tools) > 0)
	{
		if (!write_tools(&t, tools, &first, err))
			return false;
		choice = json_get_object(req, "tool_choice");
		if (choice != NULL && !write_tool_config(&t, choice, &first, err))
			return false;
	}
	if (safety != NULL)
	{
		json_append_key(body, &first, "safetySettings");
		json_append_value(body, safety);
	}
	if (!write_generation_config(&t, call, req, &first, err))
		return false;
	appendStringInfoChar(body, '}');
	return true;
}

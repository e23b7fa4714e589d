/*-------------------------------------------------------------------------
 *
 * openai_response.c
 *	  OpenAI Chat Completions adapter: a 2xx answer read into the canonical
 *	  answer (content blocks, stop reason, usage).
 *
 * runs in: worker (and backends, for the diagnostic adapter functions).
 * Pure, like every adapter (see providers/adapter.h).
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "utils/builtins.h"

#include "common/json_util.h"
#include "common/llm_errors.h"
#include "providers/adapter.h"
#include "providers/adapter_util.h"
#include "providers/openai.h"

/* ---------- parse_response ---------- */

static void
write_text_block(StringInfo blocks, const char *text)
{
	if (blocks->len > 1)
		appendStringInfoChar(blocks, ',');
	openai_write_text_part(blocks, text);
}

/*
 * A tool_use block from a tool call.  Arguments arrive as a JSON string
 * (an object from some servers); text that is not a JSON object is kept as
 * {"_raw_arguments": text} rather than failing the call: the model did
 * answer, and the caller can see and repair what it said.
 */
static void
write_tool_use(StringInfo blocks, const char *id, const char *name, JsonbValue *args)
{
	bool		first = true;

	if (blocks->len > 1)
		appendStringInfoChar(blocks, ',');
	appendStringInfoChar(blocks, '{');
	json_append_key(blocks, &first, "type");
	json_append_string(blocks, "tool_use");
	json_append_key(blocks, &first, "id");
	json_append_string(blocks, id);
	json_append_key(blocks, &first, "name");
	json_append_string(blocks, name ? name : "");
	json_append_key(blocks, &first, "input");

	if (json_value_container(args, false) != NULL)
		json_append_value(blocks, args);
	else if (args == NULL || args->type != jbvString)
		appendStringInfoString(blocks, "{}");
	else
	{
		char	   *text = json_value_cstring(args);
		char	   *why;
		Jsonb	   *parsed;
		const char *p = text;

		while (*p == ' ' || *p == '\t' || *p == '\n' || *p == '\r')
			p++;
		parsed = *p ? json_parse_safe(text, strlen(text), &why) : NULL;
		if (*p == '\0')
			appendStringInfoString(blocks, "{}");	/* no-argument call */
		else if (parsed != NULL && JsonContainerIsObject(&parsed->root))
			json_append_container(blocks, &parsed->root);
		else
		{
			bool		first_raw = true;

			appendStringInfoChar(blocks, '{');
			json_append_key(blocks, &first_raw, "_raw_arguments");
			json_append_string(blocks, text);
			appendStringInfoChar(blocks, '}');
		}
	}
	appendStringInfoChar(blocks, '}');
}

/*
 * OpenAI-compatible servers fill fields they do not use with empty values
 * ("function_call": {"name": "", "arguments": ""}, "refusal": "",
 * "finish_reason": "", a tool call with an empty id): an empty string
 * means absent, so no phantom tool_use block or wrong stop reason.
 */
static bool
is_placeholder(const char *s)
{
	return s == NULL || s[0] == '\0';
}

static const char *
map_finish_reason(const char *finish)
{
	if (is_placeholder(finish))
		return "end_turn";
	if (strcmp(finish, "length") == 0 || strcmp(finish, "model_length") == 0)
		return "max_tokens";
	if (strcmp(finish, "tool_calls") == 0 || strcmp(finish, "function_call") == 0)
		return "tool_use";
	if (strcmp(finish, "content_filter") == 0)
		return "refusal";
	/* stop, and anything else: OpenAI cannot say whether a stop sequence hit */
	return "end_turn";
}

/* The message's content blocks; returns how many tool_use blocks it wrote. */
static int
write_answer_blocks(StringInfo blocks, JsonbContainer *msg, bool *refused)
{
	JsonbValue *content = json_get(msg, "content");
	const char *refusal = json_get_cstring(msg, "refusal");
	JsonbContainer *calls = json_get_array(msg, "tool_calls");
	JsonbContainer *legacy = json_get_object(msg, "function_call");
	int			ncalls = json_array_size(calls);
	int			tools = 0;

	appendStringInfoChar(blocks, '[');
	if (content != NULL && content->type == jbvString && content->val.string.len > 0)
		write_text_block(blocks, json_value_cstring(content));
	else if (json_value_container(content, true) != NULL)
	{
		/* some servers answer with content parts */
		JsonbContainer *parts = json_value_container(content, true);
		StringInfoData text;

		initStringInfo(&text);
		for (int i = 0; i < json_array_size(parts); i++)
		{
			const char *s = json_get_cstring(json_value_container(json_array_elem(parts, i), false),
											 "text");

			if (s != NULL)
				appendStringInfoString(&text, s);
		}
		if (text.len > 0)
			write_text_block(blocks, text.data);
	}

	*refused = refusal != NULL && refusal[0] != '\0';
	if (*refused)
		write_text_block(blocks, refusal);

	for (int i = 0; i < ncalls; i++)
	{
		JsonbContainer *call = json_value_container(json_array_elem(calls, i), false);
		JsonbContainer *fn = json_get_object(call, "function");
		const char *id = json_get_cstring(call, "id");

		if (fn == NULL || is_placeholder(json_get_cstring(fn, "name")))
			continue;
		/* tool_result must name the call: invent an id when a server omits it */
		write_tool_use(blocks, !is_placeholder(id) ? id : psprintf("call_%d", i),
					   json_get_cstring(fn, "name"), json_get(fn, "arguments"));
		tools++;
	}
	if (legacy != NULL && !is_placeholder(json_get_cstring(legacy, "name")))
	{
		write_tool_use(blocks, psprintf("call_%d", ncalls),
					   json_get_cstring(legacy, "name"), json_get(legacy, "arguments"));
		tools++;
	}
	appendStringInfoChar(blocks, ']');
	return tools;
}

/*
 * prompt_tokens includes cached and cache-written tokens; the canonical
 * input_tokens excludes both (Anthropic's total input is input + cache
 * creation + cache read).
 */
static void
read_usage(JsonbContainer *root, LlmAnswer *out)
{
	JsonbContainer *usage = json_get_object(root, "usage");
	JsonbContainer *details = json_get_object(usage, "prompt_tokens_details");
	int64		prompt = 0;
	int64		completion = 0;
	int64		cached = 0;
	int64		written = 0;

	(void) json_get_int64(usage, "prompt_tokens", &prompt);
	(void) json_get_int64(usage, "completion_tokens", &completion);
	(void) json_get_int64(details, "cached_tokens", &cached);
	(void) json_get_int64(details, "cache_write_tokens", &written);

	out->input_tokens = Max(prompt - cached - written, 0);
	out->output_tokens = Max(completion, 0);
	out->cache_read_input_tokens = Max(cached, 0);
	out->cache_creation_input_tokens = Max(written, 0);
}
bool
openai_parse_response(const LlmCall *call, const LlmTarget *target,
					  const LlmHttpResult *res, LlmAnswer *out, LlmError *err)
{
	Jsonb	   *body;
	JsonbContainer *root;
	JsonbContainer *choices;
	JsonbContainer *choice;
	JsonbContainer *msg;
	const char *model;
	char	   *why;
	bool		refused;
	int			tools;

	provider_init_answer(out);
	body = provider_parse_body(res, &why);
	if (body == NULL)
		return provider_malformed(err, res, why, target->secret);
	root = &body->root;
	if (!JsonContainerIsObject(root))
		return provider_malformed(err, res, "the answer is not a JSON object", target->secret);
	if (json_get(root, "error") != NULL && json_get(root, "error")->type != jbvNull &&
		json_get(root, "choices") == NULL)
		return openai_inband_error(root, target, res, err);

	choices = json_get_array(root, "choices");
	choice = json_value_container(json_array_elem(choices, 0), false);
	if (choice == NULL)
		return provider_malformed(err, res, "the answer has no \"choices\"", target->secret);
	msg = json_get_object(choice, "message");
	if (msg == NULL)
		return provider_malformed(err, res, "the first choice has no \"message\"", target->secret);

	out->id = (char *) json_get_cstring(root, "id");
	model = json_get_cstring(root, "model");
	out->model = (char *) (model ? model : target->upstream_model);
	tools = write_answer_blocks(&out->content, msg, &refused);

	/*
	 * OpenAI reports finish_reason "stop" for a call forced by a named
	 * tool_choice; canonical callers loop on tool_use, so say that.
	 */
	if (refused)
		out->stop_reason = "refusal";
	else if (tools > 0 && strcmp(map_finish_reason(json_get_cstring(choice, "finish_reason")),
								 "end_turn") == 0)
		out->stop_reason = "tool_use";
	else
		out->stop_reason = (char *) map_finish_reason(json_get_cstring(choice, "finish_reason"));
	out->stop_sequence = NULL;
	read_usage(root, out);
	return true;
}

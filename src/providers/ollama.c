/*-------------------------------------------------------------------------
 *
 * ollama.c
 *	  Adapter for Ollama's native chat API (POST {base_url}/api/chat).
 *
 * runs in: worker (and backends, for the diagnostic adapter functions).
 * Pure, like every adapter (see providers/adapter.h).
 *
 * Request (canonical Messages -> Ollama):
 *	 system				a first {"role":"system"} message (text blocks joined)
 *	 user text/images	one user message: text joined by blank lines, base64
 *						images in "images" (URL images cannot be sent: Ollama
 *						takes only inline bytes)
 *	 tool_result		a {"role":"tool"} message before the user's text, with
 *						tool_name (found from the tool_use it answers) and
 *						tool_call_id
 *	 assistant			content, thinking, tool_calls with arguments as an
 *						object (Ollama's shape, not a JSON string)
 *	 tools				OpenAI-style function definitions
 *	 tool_choice		auto: nothing to send; none: tools are left out; a
 *						forced tool (any, tool) cannot be expressed: refused
 *	 options			num_predict <- max_tokens, temperature, top_p, top_k,
 *						stop <- stop_sequences
 *	 output_config		format json_schema -> "format": <schema>
 *	 thinking			enabled/adaptive -> think true, disabled -> think false
 * "stream" is always false: the worker reads one JSON object.
 *
 * Answer: message.thinking -> a thinking block, message.content -> a text
 * block, message.tool_calls -> tool_use blocks.  Ollama gives tool calls no
 * id (newer servers may): one is synthesised from a hash of the answer's
 * created_at, the call's name, arguments and position, so replaying the
 * same answer yields the same id and two turns do not collide.
 * done_reason: stop -> end_turn (tool_use when the answer calls tools),
 * length -> max_tokens; load/unload (a model load or unload with no
 * prompt) and anything else -> end_turn.  prompt_eval_count -> input,
 * eval_count -> output (Ollama reports no cache figures).
 *
 * Provider options (llm.providers.options):
 *	 keep_alive			how long the server keeps the model loaded ("5m")
 *	 num_ctx			context window to load the model with (a positive integer)
 *	 headers			extra request headers
 * Auth: none by default.  A secret, when set, goes as Authorization: Bearer
 * (Ollama behind an authenticating proxy, or ollama.com).
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "common/hashfn.h"

#include "common/json_util.h"
#include "common/llm_errors.h"
#include "providers/adapter.h"
#include "providers/adapter_util.h"
#include "providers/embed_kinds.h"

static bool ollama_build_request(const LlmCall *call, const LlmTarget *target,
								 LlmHttpRequest *out, LlmError *err);
static bool ollama_parse_response(const LlmCall *call, const LlmTarget *target,
								  const LlmHttpResult *res, LlmAnswer *out,
								  LlmError *err);
static void ollama_parse_error(const LlmHttpResult *res, LlmError *err);

const LlmProvider llm_provider_ollama = {
	"ollama",					/* kind */
	"no key by default; a secret, when set, is sent as Authorization: Bearer (Ollama behind a proxy)",	/* auth_hint */
	ollama_build_request,		/* build_request */
	ollama_parse_response,		/* parse_response */
	ollama_parse_error,			/* parse_error */
	ollama_build_embed_request, /* build_embed_request */
	ollama_parse_embed_response,	/* parse_embed_response */
	OLLAMA_EMBED_BATCH_MAX		/* embed_batch_max */
};

static const char *const reserved_headers[] = {
	"content-type", "authorization", "content-length", "host", NULL
};

/* Translation state for one request. */
typedef struct OllamaTranslation
{
	const LlmTarget *target;
	StringInfo	buf;
	bool		first_message;
	JsonbContainer *messages;	/* the canonical messages, to find tool names */
} OllamaTranslation;

static void
begin_message(OllamaTranslation *t, const char *role, bool *first)
{
	if (!t->first_message)
		appendStringInfoChar(t->buf, ',');
	t->first_message = false;
	*first = true;
	appendStringInfoChar(t->buf, '{');
	json_append_key(t->buf, first, "role");
	json_append_string(t->buf, role);
}

static void
append_text(StringInfo text, const char *s, int len)
{
	if (text->len > 0)
		appendStringInfoString(text, "\n\n");
	appendBinaryStringInfo(text, s, len);
}

/*
 * The name of the tool_use block whose id is id.  Only the assistant turn
 * just before is searched: a tool_result answers that turn (the Messages
 * rule), and a wider search would make a long hostile history quadratic
 * in the worker; for the same reason only its first TOOL_NAME_SCAN blocks
 * are looked at (a result past them goes with its tool_call_id alone).
 */
#define TOOL_NAME_SCAN 256

static const char *
tool_name_for(OllamaTranslation *t, int before, const char *id)
{
	if (before > 0)
	{
		JsonbContainer *msg = json_value_container(json_array_elem(t->messages, before - 1), false);
		JsonbContainer *blocks = json_get_array(msg, "content");

		for (int i = 0; i < Min(json_array_size(blocks), TOOL_NAME_SCAN); i++)
		{
			JsonbContainer *b = json_value_container(json_array_elem(blocks, i), false);
			const char *bid = json_get_cstring(b, "id");
			const char *type = provider_block_type(b);

			if (type && strcmp(type, "tool_use") == 0 && bid && strcmp(bid, id) == 0)
				return json_get_cstring(b, "name");
		}
	}
	return NULL;
}

/* {"role":"tool","content":...,"tool_name":...,"tool_call_id":...} */
static bool
write_tool_result(OllamaTranslation *t, int msgno, JsonbContainer *block, LlmError *err)
{
	const char *id = json_get_cstring(block, "tool_use_id");
	JsonbValue *is_error = json_get(block, "is_error");
	const char *name;
	StringInfoData text;
	char	   *content;
	bool		first;

	if (id == NULL)
		return provider_fail(err, ERRCODE_INVALID_PARAMETER_VALUE, LLM_FAIL_FATAL,
							 "tool_result block has no \"tool_use_id\"");
	initStringInfo(&text);
	if (!provider_content_text(t->target, json_get(block, "content"), &text, " inside a tool_result", err))
		return false;
	content = text.data;
	if (is_error != NULL && is_error->type == jbvBool && is_error->val.boolean)
		content = text.len > 0 ? psprintf("Error: %s", text.data) : "Error";

	begin_message(t, "tool", &first);
	json_append_key(t->buf, &first, "content");
	json_append_string(t->buf, content);
	/* Ollama matches a result to its call by tool_name */
	name = tool_name_for(t, msgno, id);
	if (name != NULL)
	{
		json_append_key(t->buf, &first, "tool_name");
		json_append_string(t->buf, name);
	}
	json_append_key(t->buf, &first, "tool_call_id");
	json_append_string(t->buf, id);
	appendStringInfoChar(t->buf, '}');
	return true;
}

/* A message whose content is a plain string: {"role", "content"}. */
static void
write_string_message(OllamaTranslation *t, const char *role, JsonbValue *content)
{
	bool		first;

	begin_message(t, role, &first);
	json_append_key(t->buf, &first, "content");
	json_append_value(t->buf, content);
	appendStringInfoChar(t->buf, '}');
}

static bool
write_user(OllamaTranslation *t, int msgno, JsonbValue *content, LlmError *err)
{
	JsonbContainer *blocks;
	StringInfoData text;
	StringInfoData images;
	int			n;
	int			others = 0;
	bool		first;

	initStringInfo(&text);
	initStringInfo(&images);
	if (content != NULL && content->type == jbvString)
	{
		write_string_message(t, "user", content);
		return true;
	}
	blocks = json_value_container(content, true);
	if (blocks == NULL)
		return provider_fail(err, ERRCODE_INVALID_PARAMETER_VALUE, LLM_FAIL_FATAL,
							 "message content must be a string or an array of blocks");

	/* tool results first: they answer the previous assistant turn */
	n = json_array_size(blocks);
	for (int i = 0; i < n; i++)
	{
		JsonbContainer *block = json_value_container(json_array_elem(blocks, i), false);
		const char *type = provider_block_type(block);

		if (type != NULL && strcmp(type, "tool_result") == 0 &&
			!write_tool_result(t, msgno, block, err))
			return false;
	}

	for (int i = 0; i < n; i++)
	{
		JsonbContainer *block = json_value_container(json_array_elem(blocks, i), false);
		const char *type = provider_block_type(block);

		if (type == NULL)
			return provider_unsupported(err, t->target, "content blocks of type \"(none)\"");
		if (strcmp(type, "tool_result") == 0)
			continue;
		others++;
		if (strcmp(type, "text") == 0)
		{
			const char *s = json_get_cstring(block, "text");

			append_text(&text, s ? s : "", s ? strlen(s) : 0);
		}
		else if (strcmp(type, "image") == 0)
		{
			JsonbContainer *source = json_get_object(block, "source");
			const char *stype = json_get_cstring(source, "type");
			const char *data = json_get_cstring(source, "data");

			if (stype == NULL || strcmp(stype, "base64") != 0)
				return provider_unsupported(err, t->target,
											psprintf("image sources of type \"%s\"",
													 stype ? stype : "(none)"));
			if (data == NULL)
				return provider_fail(err, ERRCODE_INVALID_PARAMETER_VALUE, LLM_FAIL_FATAL,
									 "image block with a base64 source needs \"data\"");
			if (images.len > 0)
				appendStringInfoChar(&images, ',');
			json_append_string(&images, data);
		}
		else
			return provider_unsupported(err, t->target,
										psprintf("content blocks of type \"%s\"", type));
	}
	/* a message of nothing but tool results needs no user turn after them */
	if (others == 0 && n > 0)
		return true;

	begin_message(t, "user", &first);
	json_append_key(t->buf, &first, "content");
	json_append_string(t->buf, text.data);
	if (images.len > 0)
	{
		json_append_key(t->buf, &first, "images");
		appendStringInfo(t->buf, "[%s]", images.data);
	}
	appendStringInfoChar(t->buf, '}');
	return true;
}

static bool
write_assistant(OllamaTranslation *t, JsonbValue *content, LlmError *err)
{
	JsonbContainer *blocks;
	StringInfoData text;
	StringInfoData thinking;
	StringInfoData calls;
	bool		first;

	initStringInfo(&text);
	initStringInfo(&thinking);
	initStringInfo(&calls);
	if (content != NULL && content->type == jbvString)
	{
		write_string_message(t, "assistant", content);
		return true;
	}
	blocks = json_value_container(content, true);
	if (blocks == NULL)
		return provider_fail(err, ERRCODE_INVALID_PARAMETER_VALUE, LLM_FAIL_FATAL,
							 "message content must be a string or an array of blocks");

	for (int i = 0; i < json_array_size(blocks); i++)
	{
		JsonbContainer *block = json_value_container(json_array_elem(blocks, i), false);
		const char *type = provider_block_type(block);

		if (type == NULL)
			return provider_unsupported(err, t->target,
										"content blocks of type \"(none)\" in an assistant message");
		if (strcmp(type, "text") == 0)
		{
			const char *s = json_get_cstring(block, "text");

			append_text(&text, s ? s : "", s ? strlen(s) : 0);
		}
		else if (strcmp(type, "thinking") == 0)
		{
			const char *s = json_get_cstring(block, "thinking");

			append_text(&thinking, s ? s : "", s ? strlen(s) : 0);
		}
		else if (strcmp(type, "tool_use") == 0)
		{
			const char *id = json_get_cstring(block, "id");
			const char *name = json_get_cstring(block, "name");
			JsonbValue *input = json_get(block, "input");
			bool		first_call = true;
			bool		first_fn = true;

			if (id == NULL || name == NULL)
				return provider_fail(err, ERRCODE_INVALID_PARAMETER_VALUE, LLM_FAIL_FATAL,
									 "tool_use block needs \"id\" and \"name\"");
			if (calls.len > 0)
				appendStringInfoChar(&calls, ',');
			appendStringInfoChar(&calls, '{');
			json_append_key(&calls, &first_call, "id");
			json_append_string(&calls, id);
			json_append_key(&calls, &first_call, "function");
			appendStringInfoChar(&calls, '{');
			json_append_key(&calls, &first_fn, "name");
			json_append_string(&calls, name);
			json_append_key(&calls, &first_fn, "arguments");
			/* an object, not a JSON string as in OpenAI */
			if (json_value_container(input, false) != NULL)
				json_append_value(&calls, input);
			else
				appendStringInfoString(&calls, "{}");
			appendStringInfoString(&calls, "}}");
		}
		else if (strcmp(type, "redacted_thinking") != 0)
			return provider_unsupported(err, t->target,
										psprintf("content blocks of type \"%s\" in an assistant message", type));
	}

	begin_message(t, "assistant", &first);
	json_append_key(t->buf, &first, "content");
	json_append_string(t->buf, text.data);
	if (thinking.len > 0)
	{
		json_append_key(t->buf, &first, "thinking");
		json_append_string(t->buf, thinking.data);
	}
	if (calls.len > 0)
	{
		json_append_key(t->buf, &first, "tool_calls");
		appendStringInfo(t->buf, "[%s]", calls.data);
	}
	appendStringInfoChar(t->buf, '}');
	return true;
}

static bool
write_messages(OllamaTranslation *t, JsonbContainer *req, LlmError *err)
{
	JsonbValue *system = json_get(req, "system");
	int			n = json_array_size(t->messages);

	appendStringInfoChar(t->buf, '[');
	if (system != NULL && system->type != jbvNull)
	{
		StringInfoData text;
		bool		first;

		initStringInfo(&text);
		if (!provider_content_text(t->target, system, &text, " in the system prompt", err))
			return false;
		if (text.len > 0)
		{
			begin_message(t, "system", &first);
			json_append_key(t->buf, &first, "content");
			json_append_string(t->buf, text.data);
			appendStringInfoChar(t->buf, '}');
		}
	}
	for (int i = 0; i < n; i++)
	{
		JsonbContainer *msg = json_value_container(json_array_elem(t->messages, i), false);
		const char *role = msg ? json_get_cstring(msg, "role") : NULL;
		JsonbValue *content = msg ? json_get(msg, "content") : NULL;

		if (role != NULL && strcmp(role, "user") == 0)
		{
			if (!write_user(t, i, content, err))
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

/* a request member copied into "options" under another name */
static void
copy_option(StringInfo buf, bool *first, JsonbContainer *req, const char *from, const char *to)
{
	JsonbValue *v = json_get(req, from);

	if (v == NULL || v->type == jbvNull ||
		(json_value_container(v, true) != NULL &&
		 json_array_size(json_value_container(v, true)) == 0))
		return;
	json_append_key(buf, first, to);
	json_append_value(buf, v);
}

/* "options": {...}, or nothing when no option is set */
static bool
write_options(const LlmCall *call, const LlmTarget *target, StringInfo body,
			  bool *first, LlmError *err)
{
	JsonbContainer *req = &call->request->root;
	JsonbValue *num_ctx = json_get(&target->provider_options->root, "num_ctx");
	StringInfoData opts;
	bool		first_opt = true;
	int64		max_tokens;
	int64		ctx;

	if (!provider_max_tokens(call, target, -1, &max_tokens, err))
		return false;
	initStringInfo(&opts);
	if (max_tokens >= 0)
	{
		json_append_key(&opts, &first_opt, "num_predict");
		appendStringInfo(&opts, INT64_FORMAT, max_tokens);
	}
	copy_option(&opts, &first_opt, req, "temperature", "temperature");
	copy_option(&opts, &first_opt, req, "top_p", "top_p");
	copy_option(&opts, &first_opt, req, "top_k", "top_k");
	copy_option(&opts, &first_opt, req, "stop_sequences", "stop");
	if (num_ctx != NULL && num_ctx->type != jbvNull)
	{
		if (!json_get_int64(&target->provider_options->root, "num_ctx", &ctx) || ctx <= 0)
		{
			provider_fail(err, ERRCODE_INVALID_PARAMETER_VALUE, LLM_FAIL_FATAL,
						  "provider option \"num_ctx\" must be a positive integer");
			err->hint = pstrdup("Correct the option in the provider's options.");
			return false;
		}
		json_append_key(&opts, &first_opt, "num_ctx");
		appendStringInfo(&opts, INT64_FORMAT, ctx);
	}
	if (opts.len > 0)
	{
		json_append_key(body, first, "options");
		appendStringInfo(body, "{%s}", opts.data);
	}
	return true;
}

/* output_config.format: a json_schema goes as Ollama's "format" */
static bool
write_format(const LlmTarget *target, JsonbContainer *req, StringInfo body,
			 bool *first, LlmError *err)
{
	JsonbContainer *format = json_get_object(json_get_object(req, "output_config"), "format");
	const char *type;
	JsonbValue *schema;

	if (format == NULL)
		return true;
	type = json_get_cstring(format, "type");
	schema = json_get(format, "schema");
	if (type == NULL || strcmp(type, "json_schema") != 0)
		return provider_unsupported(err, target,
									psprintf("output_config.format of type \"%s\"",
											 type ? type : "(none)"));
	if (json_value_container(schema, false) == NULL)
		return provider_fail(err, ERRCODE_INVALID_PARAMETER_VALUE, LLM_FAIL_FATAL,
							 "output_config.format of type \"json_schema\" needs a \"schema\" object");
	json_append_key(body, first, "format");
	json_append_value(body, schema);
	return true;
}

static bool
ollama_build_request(const LlmCall *call, const LlmTarget *target,
					 LlmHttpRequest *out, LlmError *err)
{
	JsonbContainer *req = &call->request->root;
	JsonbContainer *tools;
	JsonbContainer *thinking;
	const char *choice;
	const char *keep_alive;
	OllamaTranslation t;
	bool		first = true;

	memset(out, 0, sizeof(*out));
	initStringInfo(&out->body);

	if (!JsonContainerIsObject(req))
		return provider_fail(err, ERRCODE_INVALID_PARAMETER_VALUE, LLM_FAIL_FATAL,
							 "canonical request must be a JSON object");
	if (target->upstream_model == NULL)
		return provider_fail(err, ERRCODE_INVALID_PARAMETER_VALUE, LLM_FAIL_FATAL,
							 "target has no upstream model");
	if (!provider_option_string(target, "keep_alive", &keep_alive, err))
		return false;

	out->url = psprintf("%s/api/chat", provider_base_url(target));
	provider_add_header(out, "content-type", "application/json");
	if (target->secret != NULL)
		provider_add_header(out, "authorization", psprintf("Bearer %s", target->secret));
	if (!provider_option_headers(out, target, reserved_headers, err))
		return false;

	t.target = target;
	t.buf = &out->body;
	t.first_message = true;
	t.messages = json_get_array(req, "messages");

	appendStringInfoChar(t.buf, '{');
	json_append_key(t.buf, &first, "model");
	json_append_string(t.buf, target->upstream_model);
	json_append_key(t.buf, &first, "messages");
	if (!write_messages(&t, req, err))
		return false;
	/* Ollama streams NDJSON unless told not to */
	json_append_key(t.buf, &first, "stream");
	appendStringInfoString(t.buf, "false");

	tools = json_get_array(req, "tools");
	choice = json_get_cstring(json_get_object(req, "tool_choice"), "type");
	if (choice != NULL && (strcmp(choice, "any") == 0 || strcmp(choice, "tool") == 0))
		return provider_unsupported(err, target,
									psprintf("tool_choice of type \"%s\" (Ollama cannot force a tool call)", choice));
	if (json_array_size(tools) > 0 && !(choice != NULL && strcmp(choice, "none") == 0))
	{
		json_append_key(t.buf, &first, "tools");
		if (!provider_write_function_tools(t.buf, t.target, tools, err))
			return false;
	}
	if (!write_format(target, req, t.buf, &first, err) ||
		!write_options(call, target, t.buf, &first, err))
		return false;

	thinking = json_get_object(req, "thinking");
	if (thinking != NULL)
	{
		const char *type = json_get_cstring(thinking, "type");

		json_append_key(t.buf, &first, "think");
		appendStringInfoString(t.buf, type != NULL && strcmp(type, "disabled") == 0 ?
							   "false" : "true");
	}
	if (keep_alive != NULL)
	{
		json_append_key(t.buf, &first, "keep_alive");
		json_append_string(t.buf, keep_alive);
	}
	appendStringInfoChar(t.buf, '}');
	return true;
}

/* ---------- answers ---------- */

static void
begin_block(StringInfo blocks, bool *first, const char *type)
{
	if (blocks->len > 1)
		appendStringInfoChar(blocks, ',');
	*first = true;
	appendStringInfoChar(blocks, '{');
	json_append_key(blocks, first, "type");
	json_append_string(blocks, type);
}

/*
 * A tool_use block.  Arguments are an object; a server that sends a JSON
 * string (older builds, proxies) is read like OpenAI's, and text that is
 * not an object is kept as {"_raw_arguments": text}, as the openai adapter
 * does, rather than failing an answer the model did give.
 */
static void
write_tool_use(StringInfo blocks, JsonbContainer *call, int index, const char *created)
{
	JsonbContainer *fn = json_get_object(call, "function");
	const char *name = json_get_cstring(fn, "name");
	const char *id = json_get_cstring(call, "id");
	JsonbValue *args = json_get(fn, "arguments");
	StringInfoData input;
	bool		first;

	initStringInfo(&input);
	if (json_value_container(args, false) != NULL)
		json_append_value(&input, args);
	else if (args != NULL && args->type == jbvString)
	{
		char	   *text = json_value_cstring(args);
		char	   *why;
		Jsonb	   *parsed = json_parse_safe(text, strlen(text), &why);

		if (parsed != NULL && JsonContainerIsObject(&parsed->root))
			json_append_container(&input, &parsed->root);
		else
		{
			bool		first_raw = true;

			appendStringInfoChar(&input, '{');
			json_append_key(&input, &first_raw, "_raw_arguments");
			json_append_string(&input, text);
			appendStringInfoChar(&input, '}');
		}
	}
	else
		appendStringInfoString(&input, "{}");

	if (id == NULL || id[0] == '\0')
	{
		/* stable: the same answer always gets the same id */
		char	   *seed = psprintf("%s\n%d\n%s\n%s", created ? created : "", index,
									name ? name : "", input.data);

		id = psprintf("call_%08x%02d", hash_bytes((const unsigned char *) seed, strlen(seed)),
					  index % 100);
	}

	begin_block(blocks, &first, "tool_use");
	json_append_key(blocks, &first, "id");
	json_append_string(blocks, id);
	json_append_key(blocks, &first, "name");
	json_append_string(blocks, name ? name : "");
	json_append_key(blocks, &first, "input");
	appendStringInfoString(blocks, input.data);
	appendStringInfoChar(blocks, '}');
}

static int64
count(JsonbContainer *root, const char *key)
{
	int64		n;

	return json_get_int64(root, key, &n) && n >= 0 ? n : 0;
}

static bool
ollama_parse_response(const LlmCall *call, const LlmTarget *target,
					  const LlmHttpResult *res, LlmAnswer *out, LlmError *err)
{
	Jsonb	   *body;
	JsonbContainer *root;
	JsonbContainer *msg;
	JsonbContainer *calls;
	const char *model;
	const char *content;
	const char *thinking;
	const char *done_reason;
	const char *created;
	const char *error;
	int			tools = 0;
	char	   *why;
	bool		first;

	provider_init_answer(out);
	body = provider_parse_body(res, &why);
	if (body == NULL)
		return provider_malformed(err, res, why, target->secret);
	root = &body->root;
	if (!JsonContainerIsObject(root))
		return provider_malformed(err, res, "the answer is not a JSON object", target->secret);

	/* {"error": "..."} with a 200: the server failed after the status line */
	error = json_get_cstring(root, "error");
	if (error != NULL)
	{
		provider_fail(err, ERRCODE_LLM_PROVIDER_INBAND_ERROR, LLM_FAIL_RETRYABLE,
					  "%s", provider_text(error, target->secret));
		err->http_status = (int) res->status;
		return false;
	}
	msg = json_get_object(root, "message");
	if (msg == NULL)
		return provider_malformed(err, res, "the answer has no \"message\" object", target->secret);

	model = json_get_cstring(root, "model");
	out->model = (char *) (model ? model : target->upstream_model);
	out->id = NULL;				/* Ollama has none; the worker invents one */
	created = json_get_cstring(root, "created_at");

	appendStringInfoChar(&out->content, '[');
	thinking = json_get_cstring(msg, "thinking");
	if (thinking != NULL && thinking[0] != '\0')
	{
		begin_block(&out->content, &first, "thinking");
		json_append_key(&out->content, &first, "thinking");
		json_append_string(&out->content, thinking);
		appendStringInfoChar(&out->content, '}');
	}
	content = json_get_cstring(msg, "content");
	if (content != NULL && content[0] != '\0')
	{
		begin_block(&out->content, &first, "text");
		json_append_key(&out->content, &first, "text");
		json_append_string(&out->content, content);
		appendStringInfoChar(&out->content, '}');
	}
	calls = json_get_array(msg, "tool_calls");
	for (int i = 0; i < json_array_size(calls); i++)
	{
		JsonbContainer *c = json_value_container(json_array_elem(calls, i), false);

		const char *name = json_get_cstring(json_get_object(c, "function"), "name");

		/* a call with no function name is a placeholder, not a call */
		if (name == NULL || name[0] == '\0')
			continue;
		write_tool_use(&out->content, c, i, created);
		tools++;
	}
	appendStringInfoChar(&out->content, ']');

	done_reason = json_get_cstring(root, "done_reason");
	if (done_reason != NULL && strcmp(done_reason, "length") == 0)
		out->stop_reason = "max_tokens";
	else if (tools > 0)
		out->stop_reason = "tool_use";
	else
		out->stop_reason = "end_turn";	/* stop, load, unload, absent */
	out->stop_sequence = NULL;
	out->input_tokens = count(root, "prompt_eval_count");
	out->output_tokens = count(root, "eval_count");
	return true;
}

/*
 * Non-2xx: {"error": "..."}.  A 404 is a model the server has not pulled
 * ("model \"x\" not found, try pulling it first"): fatal, with a hint.
 * A 400 over the context window is LL017.
 */
static void
ollama_parse_error(const LlmHttpResult *res, LlmError *err)
{
	char	   *why;
	Jsonb	   *body = provider_parse_body(res, &why);
	const char *message = body ? json_get_cstring(&body->root, "error") : NULL;

	err->retry_after_s = provider_retry_after(res);
	if (message == NULL)
	{
		err->detail = provider_body_excerpt(res);
		return;
	}
	err->message = provider_text(message, NULL);
	if (res->status == 404)
	{
		err->sqlerrcode = ERRCODE_LLM_PROVIDER_INVALID_REQUEST;
		err->fail_class = LLM_FAIL_FATAL;
		err->hint = pstrdup("Pull the model on the Ollama server (ollama pull <model>), or correct the route's upstream model.");
	}
	/*
	 * The runner's errorInputTooLong, "the input length exceeds the context
	 * length": sent as a 400 when truncation is off (Ollama otherwise cuts
	 * the prompt silently).
	 */
	else if (res->status == 400 && strstr(message, "exceeds the context length") != NULL)
		llm_error_context_too_long(err);
}

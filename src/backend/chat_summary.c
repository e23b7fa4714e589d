/*-------------------------------------------------------------------------
 *
 * chat_summary.c
 *	  The summarize context policy: turns dropped from a conversation's
 *	  history replaced by a summary that a model alias writes, stored as a
 *	  turn of its own.
 *
 * runs in: backend.
 *
 * The dropped turns go to the summary model as a transcript ("User: ...",
 * "Assistant: ...", tool calls and results in brackets), after the
 * previous summary; when they do not fit that model's budget at once, it
 * is asked in several rounds, each summarising the last round's summary
 * and the next turns that fit.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "mb/pg_wchar.h"
#include "utils/builtins.h"
#include "utils/jsonb.h"
#include "utils/numeric.h"

#include "common/json_util.h"
#include "common/llm_errors.h"
#include "backend/call_result.h"
#include "backend/conversation.h"
#include "backend/run_as.h"
#include "backend/sql_api.h"
#include "backend/validate.h"

/* The text of content (a string or blocks) for a summary's transcript. */
static void
append_content_text(StringInfo buf, JsonbContainer *c)
{
	JsonbValue	v;
	int			i;

	if (JsonContainerIsScalar(c))
	{
		if (JsonbExtractScalar(c, &v) && v.type == jbvString)
			appendBinaryStringInfo(buf, v.val.string.val, v.val.string.len);
		return;
	}
	for (i = 0; i < json_array_size(c); i++)
	{
		JsonbValue *e = json_array_elem(c, i);
		JsonbContainer *b = json_value_container(e, false);
		const char *type = b ? json_get_cstring(b, "type") : NULL;

		if (e->type == jbvString)
		{
			appendBinaryStringInfo(buf, e->val.string.val, e->val.string.len);
			continue;
		}
		if (type == NULL)
			continue;
		if (i > 0)
			appendStringInfoChar(buf, ' ');
		if (strcmp(type, "text") == 0 && json_get_cstring(b, "text"))
			appendStringInfoString(buf, json_get_cstring(b, "text"));
		else if (strcmp(type, "tool_use") == 0)
		{
			JsonbContainer *input = json_get_object(b, "input");

			appendStringInfo(buf, "[called tool %s with ", json_get_cstring(b, "name"));
			if (input)
				json_append_container(buf, input);
			appendStringInfoChar(buf, ']');
		}
		else if (strcmp(type, "tool_result") == 0)
		{
			JsonbValue *rc = json_get(b, "content");

			appendStringInfoString(buf, "[tool result: ");
			if (rc && rc->type == jbvString)
				appendBinaryStringInfo(buf, rc->val.string.val, rc->val.string.len);
			else if (rc && json_value_container(rc, true))
				append_content_text(buf, json_value_container(rc, true));
			appendStringInfoChar(buf, ']');
		}
		else if (strcmp(type, "thinking") != 0 && strcmp(type, "redacted_thinking") != 0)
			appendStringInfo(buf, "[%s]", type);
	}
}

/* the text of an answer's content */
char *
chat_content_text(Jsonb *content)
{
	StringInfoData buf;

	initStringInfo(&buf);
	append_content_text(&buf, &content->root);
	return buf.data;
}

/*
 * Summarise old (a summary, or NULL) and turns [from, to) with the
 * policy's model, in as many calls as its budget needs; returns the text.
 */
static char *
summarize(ChatConversation *conv, const ChatPolicy *p, const char *old, int from, int to,
		  ChatAnswer *ans)
{
	const char *alias = p->summary_model ? p->summary_model : conv->alias;
	bool		known;
	int64		budget = chat_budget(alias, p->summary_max_tokens, 0, &known);
	int64		limit = (int64) (budget * 4 / CHAT_DEFAULT_RATIO);
	char	   *summary = old ? pstrdup(old) : NULL;
	int			i = from;

	do
	{
		StringInfoData prompt;
		StringInfoData hist;
		StringInfoData opts;
		LlmCallResult r;
		bool		added = false;

		initStringInfo(&prompt);
		appendStringInfo(&prompt,
						 "Summarize the conversation below so that the summary can replace it as the context "
						 "for continuing it. Keep every fact, name, number, decision, tool result and open "
						 "question the assistant will need; leave out pleasantries. Use at most " INT64_FORMAT
						 " words. Answer with the summary only.", p->summary_max_tokens / 2);
		if (summary)
			appendStringInfo(&prompt, "\n\nSummary of what came before:\n%s", summary);
		appendStringInfoString(&prompt, "\n\nConversation:");
		for (; i < to; i++)
		{
			ChatTurn   *t = &conv->turns[i];
			StringInfoData line;

			if (t->role == 's')
				continue;
			initStringInfo(&line);
			appendStringInfoString(&line, t->role == 'u' ? "\nUser: " : "\nAssistant: ");
			append_content_text(&line, &t->content->root);
			if (line.len > limit / 2)
			{
				line.len = pg_mbcliplen(line.data, line.len, limit / 2);
				line.data[line.len] = '\0';
				appendStringInfoString(&line, " [...]");
			}
			if (added && prompt.len + line.len > limit)
				break;
			appendBinaryStringInfo(&prompt, line.data, line.len);
			added = true;
		}

		initStringInfo(&hist);
		appendStringInfoString(&hist, "[{\"role\":\"user\",\"content\":");
		json_append_string(&hist, prompt.data);
		appendStringInfoString(&hist, "}]");
		initStringInfo(&opts);
		appendStringInfo(&opts, "{\"max_tokens\":" INT64_FORMAT ",\"tags\":{\"conversation\":\""
						 INT64_FORMAT "\",\"purpose\":\"summary\"}}", p->summary_max_tokens, conv->id);
		chat_answer_parts(chat_call(alias, jsonb_from_cstring(hist.data),
									jsonb_from_cstring(opts.data), &r), ans);
		summary = chat_content_text(ans->content);
	} while (i < to);
	return summary;
}

/* Store a summary as a turn of its own, and add it to conv->turns. */
static int
store_summary(ChatConversation *conv, const char *text, int through, const ChatAnswer *ans)
{
	static const char *const sql =
	"INSERT INTO llm.conversation_turns (conversation, seq, role, content, bytes, tokens,"
	"    request_id, input_tokens, cost_usd, summary_through)"
	" VALUES ($1, $2, 'summary', to_jsonb($3), octet_length(to_jsonb($3)::text), $4, $5, $6,"
	"         $7::numeric, $8)";
	Oid			types[8] = {INT8OID, INT4OID, TEXTOID, INT8OID, INT8OID, INT8OID, TEXTOID, INT4OID};
	Datum		values[8];
	char		nulls[8] = {' ', ' ', ' ', ' ', ' ', ' ', ' ', ' '};
	ChatTurn   *t = &conv->turns[conv->nturns];
	StringInfoData js;

	values[0] = Int64GetDatum(conv->id);
	values[1] = Int32GetDatum(conv->next_seq);
	values[2] = CStringGetTextDatum(text);
	values[3] = Int64GetDatum(ans->output_tokens);
	values[4] = Int64GetDatum(ans->request_id);
	values[5] = Int64GetDatum(ans->input_tokens);
	values[6] = ans->cost_usd ? CStringGetTextDatum(ans->cost_usd) : (Datum) 0;
	nulls[6] = ans->cost_usd ? ' ' : 'n';
	values[7] = Int32GetDatum(through);
	SPI_connect();
	conversation_spi(run_as_gateway_role(), sql, 8, types, values, nulls, SPI_OK_INSERT);
	SPI_finish();

	initStringInfo(&js);
	json_append_string(&js, text);
	memset(t, 0, sizeof(*t));
	t->seq = conv->next_seq++;
	t->role = 's';
	t->bytes = js.len;
	t->summary_through = through;
	t->input_tokens = t->est_tokens = -1;
	t->content = jsonb_from_cstring(js.data);
	return conv->nturns++;
}


/*
 * Summarise old (the last summary's text, or NULL) and turns [from, to)
 * (contents loaded), store the summary; its index in conv->turns.
 */
int
chat_summarize(ChatConversation *conv, const ChatPolicy *p, const char *old, int from, int to,
			   char **text)
{
	ChatAnswer	ans;

	*text = summarize(conv, p, old, from, to, &ans);
	return store_summary(conv, *text, to > 0 ? conv->turns[to - 1].seq : 0, &ans);
}

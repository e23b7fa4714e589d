/*-------------------------------------------------------------------------
 *
 * chat_context.c
 *	  A conversation as llm_chat sees it: loading it (access, lock, the
 *	  sizes of its turns), and fitting its history to the token budget.
 *
 * runs in: backend.
 *
 * Fitting (docs/design.md §27):
 * - Tokens are estimated from the bytes of JSON sent (bytes / 4), times a
 *	 ratio learned from the conversation's last answer: the provider's
 *	 input_tokens over the gateway's raw estimate of that request.  Before
 *	 the first answer the ratio is CHAT_DEFAULT_RATIO (3 bytes per token),
 *	 on the safe side of every tokenizer we know for prose.
 * - The budget is the policy's budget_tokens, else the smallest
 *	 context_window minus output reserve over the alias's enabled targets
 *	 (the history must fit whichever one answers), else
 *	 CHAT_DEFAULT_BUDGET_TOKENS, and then a history that does not fit is an
 *	 error, not trimmed (nobody said how big the window is).
 * - A history sent begins at a user turn that answers no tool call (a
 *	 "start"), so a tool_use is never sent without its tool_result or the
 *	 other way round.  drop_oldest sends the most turns from a start that
 *	 fit; summarize sends the last summary and every turn after it when
 *	 they fit, and otherwise first summarises the turns up to a start that
 *	 leaves half the budget free, so the next calls do not summarise again.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <math.h>

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


/*
 * The plans of the conversation code's statements, prepared once per
 * backend (the plan cache replans after DDL, or for another role where
 * row security applies), keyed by the statement's text, which is always a
 * string constant.  Planning them on every call cost ~2 ms per llm_chat
 * (design §27.7).
 */
#define CHAT_PLANS 32
static struct
{
	const char *sql;
	SPIPlanPtr	plan;
}			chat_plans[CHAT_PLANS];

static SPIPlanPtr
chat_plan(const char *sql, int nargs, Oid *types)
{
	int			i;
	SPIPlanPtr	plan;

	for (i = 0; i < CHAT_PLANS && chat_plans[i].sql != NULL; i++)
		if (chat_plans[i].sql == sql)
			return chat_plans[i].plan;
	plan = SPI_prepare(sql, nargs, types);
	if (plan == NULL)
		elog(ERROR, "llm_gateway: preparing a conversation statement failed: %s",
			 SPI_result_code_string(SPI_result));
	if (i == CHAT_PLANS)
		return plan;			/* not kept: freed with the SPI connection */
	if (SPI_keepplan(plan) != 0)
		elog(ERROR, "llm_gateway: SPI_keepplan failed");
	chat_plans[i].sql = sql;
	chat_plans[i].plan = plan;
	return plan;
}

/*
 * Run one statement of the conversation code: as the caller (role
 * InvalidOid) or as the gateway role.  SPI is connected; sql is a string
 * constant (its address names its plan).
 */
void
conversation_spi(Oid role, const char *sql, int nargs, Oid *types, Datum *values,
				 const char *nulls, int expect)
{
	LlmRunAs	ra;
	int			ret;

	run_as_begin(role, &ra);
	ret = SPI_execute_plan(chat_plan(sql, nargs, types), values, nulls, false, 0);
	run_as_end(&ra);
	if (ret != expect)
		elog(ERROR, "llm_gateway: conversation statement failed: %s", SPI_result_code_string(ret));
}

static Datum
spi_col(int row, int col, bool *isnull)
{
	return SPI_getbinval(SPI_tuptable->vals[row], SPI_tuptable->tupdesc, col, isnull);
}

static int64
spi_int64(int row, int col, int64 if_null)
{
	bool		isnull;
	Datum		d = spi_col(row, col, &isnull);

	return isnull ? if_null : DatumGetInt64(d);
}

/* the caller's view: row security decides whether the conversation exists for it */
static const char *const conversation_sql =
"SELECT c.owner_role, c.alias, c.system, c.options, c.context_policy,"
"       c.owner_role = current_user::text"
"       OR pg_catalog.pg_has_role(current_user, 'llm_admin', 'MEMBER')"
"       OR EXISTS (SELECT 1 FROM llm.conversation_shares s"
"                    JOIN pg_catalog.pg_roles r ON r.rolname = s.role_name"
"                   WHERE s.conversation = c.id AND s.can_continue"
"                     AND pg_catalog.pg_has_role(current_user, r.oid, 'MEMBER'))"
"  FROM llm.conversations c WHERE c.id = $1";

/* every turn of the conversation, those it shares with its ancestors included */
#define CHAIN_SQL(cols, cond) \
"SELECT " cols " FROM llm.conversation_turns t WHERE t.conversation = $1" cond \
" UNION ALL SELECT " cols " FROM llm.conversation_lineage l" \
"  JOIN llm.conversation_turns t ON t.conversation = l.ancestor AND t.seq <= l.through_seq" \
" WHERE l.conversation = $1" cond " ORDER BY 1"

/* the turns with seq in ($2, $3], their sizes, not their contents */
static const char *const turns_sql =
CHAIN_SQL("t.seq, t.role, t.bytes::int8, t.starts_exchange, t.summary_through, t.input_tokens,"
		  " t.context_est_tokens, t.tokens, t.cost_usd::text, t.context_first_seq",
		  " AND t.seq > $2 AND t.seq <= $3");

/* the contents of the turns from seq $2 on (an index range) */
static const char *const contents_sql =
CHAIN_SQL("t.seq, t.content", " AND t.seq >= $2");

/*
 * The last seq: its own turns', else the fork point (a fork's shared turns
 * end at forked_at_seq, its own start after it).
 */
static const char *const last_seq_sql =
"SELECT greatest((SELECT max(seq) FROM llm.conversation_turns WHERE conversation = $1),"
"                (SELECT forked_at_seq FROM llm.conversations WHERE id = $1), 0)";

/*
 * The lock that serialises llm_chat on a conversation.  Its statement
 * reads nothing else: what it would read was snapshotted before it waited.
 */
static const char *const lock_sql =
"SELECT 1 FROM llm.conversations WHERE id = $1 FOR NO KEY UPDATE";

/*
 * Load a conversation the caller may see, without its turns; with lock,
 * also check that it may continue it and lock it until the transaction
 * ends (a second llm_chat on it waits here, then reads the first's turns).
 */
void
conversation_load(int64 id, bool lock, ChatConversation *conv)
{
	MemoryContext outer = CurrentMemoryContext;
	MemoryContext old;
	Oid			types[1] = {INT8OID};
	Datum		values[1] = {Int64GetDatum(id)};
	bool		isnull;

	memset(conv, 0, sizeof(*conv));
	conv->id = id;
	SPI_connect();
	conversation_spi(InvalidOid, conversation_sql, 1, types, values, NULL, SPI_OK_SELECT);
	if (SPI_processed == 0)
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_OBJECT),
				 errmsg("conversation " INT64_FORMAT " does not exist", id),
				 errdetail("A conversation is visible to its owner, to llm_admin and to the roles it is shared with."),
				 errhint("Create one with llm.new_conversation(model, system).")));
	old = MemoryContextSwitchTo(outer);
	conv->owner = TextDatumGetCString(spi_col(0, 1, &isnull));
	conv->alias = TextDatumGetCString(spi_col(0, 2, &isnull));
	conv->system = NULL;
	{
		Datum		d = spi_col(0, 3, &isnull);

		if (!isnull)
			conv->system = TextDatumGetCString(d);
	}
	conv->options = DatumGetJsonbPCopy(spi_col(0, 4, &isnull));
	conv->policy = DatumGetJsonbPCopy(spi_col(0, 5, &isnull));
	conv->may_continue = DatumGetBool(spi_col(0, 6, &isnull));
	MemoryContextSwitchTo(old);

	if (lock)
	{
		if (!conv->may_continue)
			ereport(ERROR,
					(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
					 errmsg("conversation " INT64_FORMAT " is shared with this role to read, not to continue", id),
					 errhint("Its owner (%s) can share it with can_continue => true, or fork it with llm.fork_conversation().",
							 conv->owner)));
		conversation_spi(run_as_gateway_role(), lock_sql, 1, types, values, NULL, SPI_OK_SELECT);
	}
	/* after the lock, in a statement of its own: a new snapshot sees what the holder committed */
	conversation_spi(run_as_gateway_role(), last_seq_sql, 1, types, values, NULL, SPI_OK_SELECT);
	conv->next_seq = DatumGetInt32(spi_col(0, 1, &isnull)) + 1;
	conv->loaded_from = conv->next_seq;
	conv->turns = MemoryContextAllocZero(outer, sizeof(ChatTurn));
	SPI_finish();
}

/*
 * Load the sizes of the turns with seq in [from_seq, loaded_from), before
 * those already loaded.  One slot is kept free at the end (a summary made
 * by this call).
 */
static void
load_turns_before(ChatConversation *conv, int from_seq)
{
	MemoryContext outer = CurrentMemoryContext;
	Oid			types[3] = {INT8OID, INT4OID, INT4OID};
	Datum		values[3];
	ChatTurn   *turns;
	int			n;
	int			i;

	values[0] = Int64GetDatum(conv->id);
	values[1] = Int32GetDatum(from_seq - 1);
	values[2] = Int32GetDatum(conv->loaded_from - 1);
	SPI_connect();
	conversation_spi(run_as_gateway_role(), turns_sql, 3, types, values, NULL, SPI_OK_SELECT);
	n = (int) SPI_processed;
	turns = MemoryContextAllocZero(outer, sizeof(ChatTurn) * (n + conv->nturns + 1));
	memcpy(turns + n, conv->turns, sizeof(ChatTurn) * conv->nturns);
	for (i = 0; i < n; i++)
	{
		ChatTurn   *t = &turns[i];
		bool		isnull;
		Datum		d;

		t->seq = DatumGetInt32(spi_col(i, 1, &isnull));
		t->role = TextDatumGetCString(spi_col(i, 2, &isnull))[0];
		t->bytes = spi_int64(i, 3, 0);
		t->starts = DatumGetBool(spi_col(i, 4, &isnull));
		d = spi_col(i, 5, &isnull);
		t->summary_through = isnull ? 0 : DatumGetInt32(d);
		t->input_tokens = spi_int64(i, 6, -1);
		t->est_tokens = spi_int64(i, 7, -1);
		t->tokens = spi_int64(i, 8, -1);
		d = spi_col(i, 9, &isnull);
		t->cost_usd = isnull ? NULL : MemoryContextStrdup(outer, TextDatumGetCString(d));
		d = spi_col(i, 10, &isnull);
		t->context_first_seq = isnull ? 0 : DatumGetInt32(d);
	}
	SPI_finish();
	conv->turns = turns;
	conv->nturns += n;
	conv->loaded_from = from_seq;
}

/* every turn's size, for a fork's check and a replay */
void
chat_load_all_turns(ChatConversation *conv)
{
	if (conv->loaded_from > 1)
		load_turns_before(conv, 1);
}

/*
 * The contents of turns [from, nturns) and of turn also (-1: none), read
 * as one index range from the smaller seq (a summary comes just before
 * the turns sent after it).
 */
static void
load_contents(ChatConversation *conv, int from, int also)
{
	MemoryContext outer = CurrentMemoryContext;
	Oid			types[2] = {INT8OID, INT4OID};
	Datum		values[2];
	int			first_seq = from < conv->nturns ? conv->turns[from].seq : PG_INT32_MAX;
	int			i;
	int			j = 0;

	if (also >= 0)
		first_seq = Min(first_seq, conv->turns[also].seq);
	values[0] = Int64GetDatum(conv->id);
	values[1] = Int32GetDatum(first_seq);
	SPI_connect();
	conversation_spi(run_as_gateway_role(), contents_sql, 2, types, values, NULL, SPI_OK_SELECT);
	for (i = 0; i < (int) SPI_processed; i++)
	{
		bool		isnull;
		int			seq = DatumGetInt32(spi_col(i, 1, &isnull));
		Datum		d = spi_col(i, 2, &isnull);

		while (j < conv->nturns && conv->turns[j].seq < seq)
			j++;
		if (j < conv->nturns && conv->turns[j].seq == seq && conv->turns[j].content == NULL &&
			(j >= from || j == also))
		{
			MemoryContext old = MemoryContextSwitchTo(outer);

			conv->turns[j].content = DatumGetJsonbPCopy(d);
			MemoryContextSwitchTo(old);
		}
	}
	SPI_finish();
}

/*
 * The token budget of the history sent to alias: see the header.  *known:
 * a policy or a route said it.
 */
int64
chat_budget(const char *alias, int64 max_tokens, int64 policy_budget, bool *known)
{
	static const char *const sql =
	"SELECT count(*), (min((r.options->>'context_window')::numeric"
	"    - least(coalesce($2::numeric,"
	"                     CASE WHEN jsonb_typeof(r.options->'default_max_tokens') = 'number'"
	"                          THEN (r.options->>'default_max_tokens')::numeric END,"
	"                     CASE WHEN p.kind = 'anthropic' THEN 1024 END, 4096),"
	"            coalesce(CASE WHEN jsonb_typeof(r.options->'max_tokens') = 'number'"
	"                          THEN (r.options->>'max_tokens')::numeric END, 'Infinity')))"
	"    FILTER (WHERE jsonb_typeof(r.options->'context_window') = 'number'))::int8"
	"  FROM llm.routes r JOIN llm.providers p ON p.name = r.provider"
	" WHERE r.alias = $1 AND r.enabled AND p.enabled";
	Oid			types[2] = {TEXTOID, INT8OID};
	Datum		values[2] = {CStringGetTextDatum(alias), Int64GetDatum(max_tokens)};
	char		nulls[2] = {' ', max_tokens > 0 ? ' ' : 'n'};
	int64		targets;
	int64		budget;

	SPI_connect();
	conversation_spi(run_as_gateway_role(), sql, 2, types, values, nulls, SPI_OK_SELECT);
	targets = spi_int64(0, 1, 0);
	budget = spi_int64(0, 2, -1);
	SPI_finish();
	if (targets == 0)
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_OBJECT),
				 errmsg("model alias \"%s\" does not exist", alias),
				 errdetail("It has no enabled target."),
				 errhint("Define it with llm.add_route(alias, provider, upstream_model).")));
	if (budget != -1 && budget < 1)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("model alias \"%s\" leaves no room for a history: its context_window is not larger than its output reserve", alias),
				 errhint("Raise the route option context_window, or lower max_tokens.")));
	*known = policy_budget > 0 || budget > 0;
	if (policy_budget > 0)
		return budget > 0 ? Min(policy_budget, budget) : policy_budget;
	return budget > 0 ? budget : CHAT_DEFAULT_BUDGET_TOKENS;
}

/*
 * Token estimates: tokens = fixed + per_raw * raw, raw being bytes / 4 of
 * the history (turns, the message, a summary), fixed the tokens of what
 * every request of the conversation sends besides (system prompt, tools).
 * The provider's input_tokens of the last answers fit the line: per_raw
 * is the steepest slope between consecutive ones (the densest history
 * seen, so prose is not counted at the rate of a tool call's JSON), and a
 * tool schema sent every time lands in fixed, not in the slope; fixed is
 * what the last request counted beyond its history.  With one answer the
 * slope is CHAT_DEFAULT_RATIO; with none, fixed is the system prompt and
 * options at that rate too.
 */
typedef struct Estimator
{
	double		per_raw;
	double		fixed;
} Estimator;

#define ESTIMATOR_POINTS 4		/* answers whose counts the slope is taken from */

static void
estimator_init(ChatTurn *turns, int nturns, int64 fixed_bytes, Estimator *e)
{
	ChatTurn   *answers[ESTIMATOR_POINTS];
	int			n = 0;
	int			i;
	bool		have_slope = false;

	for (i = nturns - 1; i >= 0 && n < ESTIMATOR_POINTS; i--)
		if (turns[i].role == 'a' && turns[i].input_tokens > 0 && turns[i].est_tokens > 0)
			answers[n++] = &turns[i];
	e->per_raw = CHAT_DEFAULT_RATIO;
	e->fixed = fixed_bytes / 4.0 * CHAT_DEFAULT_RATIO;
	if (n == 0)
		return;
	/* the steepest slope of the last pairs: the densest history seen */
	for (i = 1; i < n; i++)
	{
		int64		d_raw = answers[i - 1]->est_tokens - answers[i]->est_tokens;
		double		slope;

		if (llabs(d_raw) < 8)
			continue;
		slope = (double) (answers[i - 1]->input_tokens - answers[i]->input_tokens) / d_raw;
		if (slope >= 0.1 && slope <= 10 && (!have_slope || slope > e->per_raw))
		{
			e->per_raw = slope;
			have_slope = true;
		}
	}
	e->fixed = Max(0.0, answers[0]->input_tokens -
				   e->per_raw * (answers[0]->est_tokens - fixed_bytes / 4.0));
}

static double
tokens_of(const Estimator *e, int64 bytes)
{
	return bytes / 4.0 * e->per_raw;
}

static int64
tokens_ceil(double tokens)
{
	return (int64) ceil(tokens);
}

/*
 * The earliest start in [lo, nturns) from which every later turn, with
 * fixed tokens (system, options, the message, a summary), fits budget;
 * nturns when only the message fits (and it answers no tool call); -1
 * when nothing does.
 */
static int
fit_from(ChatTurn *turns, int nturns, int lo, double fixed, bool msg_starts,
		 const Estimator *e, int64 budget)
{
	double		acc = fixed;
	int			best = msg_starts ? nturns : -1;
	int			i;

	if (tokens_ceil(acc) > budget)
		return -1;
	for (i = nturns - 1; i >= lo; i--)
	{
		ChatTurn   *t = &turns[i];

		if (t->role == 's')
			continue;
		acc += tokens_of(e, t->bytes);
		if (tokens_ceil(acc) > budget)
			break;
		if (t->starts)
			best = i;
	}
	return best;
}

static void
too_long(const char *alias, int64 need, int64 budget, bool known)
{
	ereport(ERROR,
			(errcode(ERRCODE_LLM_CONTEXT_TOO_LONG),
			 known ?
			 errmsg("the message needs about " INT64_FORMAT " tokens with the conversation's settings, more than its budget of " INT64_FORMAT, need, budget) :
			 need > 0 ?
			 errmsg("the message needs about " INT64_FORMAT " tokens, more than the " INT64_FORMAT " a conversation sends when no budget is set", need, budget) :
			 errmsg("the conversation's history needs more than " INT64_FORMAT " tokens, and no budget is set", budget),
			 known ?
			 errdetail("A tool_result is sent with the exchange it answers; the system prompt and tools count too.") :
			 errdetail("Neither the conversation's context policy (budget_tokens) nor a route of alias \"%s\" (option context_window) says how much history the model takes; without one, a history is sent whole up to " INT64_FORMAT " tokens.", alias, budget),
			 known ?
			 errhint("Send a shorter message, or raise budget_tokens or the route's context_window.") :
			 errhint("Set the route option context_window (llm.add_route(..., options => '{\"context_window\": 200000}')) or the conversation's context_policy budget_tokens.")));
}

/* the index of the first turn at or after lo that is not a summary (nturns if none) */
static int
first_message(ChatTurn *turns, int nturns, int lo)
{
	while (lo < nturns && turns[lo].role == 's')
		lo++;
	return lo;
}

/*
 * Messages [first, nturns) then the new one, as a JSON array; an exchange
 * whose answer was empty (nothing to send back) is left out.
 */
static Jsonb *
build_history(ChatTurn *turns, int nturns, int first, const ChatMessage *msg, int64 *bytes)
{
	StringInfoData buf;
	int		   *starts = palloc(sizeof(int) * (nturns + 1));
	int			n = 0;
	int			i;

	initStringInfo(&buf);
	appendStringInfoChar(&buf, '[');
	*bytes = 0;
	for (i = first; i < nturns; i++)
	{
		ChatTurn   *t = &turns[i];

		if (t->role == 's')
			continue;
		if (t->role == 'a' && t->bytes <= 2 && n > 0)
		{
			buf.len = starts[--n];	/* "[]" or "": drop it and its question */
			buf.data[buf.len] = '\0';
			continue;
		}
		starts[n++] = buf.len;
		if (buf.len > 1)
			appendStringInfoChar(&buf, ',');
		appendStringInfo(&buf, "{\"role\":\"%s\",\"content\":", t->role == 'u' ? "user" : "assistant");
		json_append_container(&buf, &t->content->root);
		appendStringInfoChar(&buf, '}');
		*bytes += t->bytes;
	}
	if (buf.len > 1)
		appendStringInfoChar(&buf, ',');
	appendStringInfoString(&buf, "{\"role\":\"user\",\"content\":");
	json_append_container(&buf, &msg->content->root);
	appendStringInfoString(&buf, "}]");
	return jsonb_from_cstring(buf.data);
}

static char *
system_with_summary(const char *system, const char *summary)
{
	if (summary == NULL)
		return system ? pstrdup(system) : NULL;
	return psprintf("%s%s%s", system ? system : "", system ? SUMMARY_HEADER : &SUMMARY_HEADER[2],
					summary);
}

static int64
options_bytes(Jsonb *options, int64 *max_tokens)
{
	if (!json_get_int64(&options->root, "max_tokens", max_tokens))
		*max_tokens = 0;
	return strlen(chat_jsonb_text(options));
}

/*
 * Whether the turns loaded (the newest) hold all that fitting can use:
 * drop_oldest, once they and the fixed part overflow the budget (older
 * turns cannot be sent); summarize, once they reach back to the turn
 * after the last summary's (older ones it stands for).
 */
static bool
window_enough(ChatConversation *conv, bool summarize, int64 sent_before,
			  const ChatMessage *msg, int64 budget)
{
	ChatTurn   *turns = conv->turns;
	Estimator	e;
	double		acc;
	int			i;

	if (summarize)
	{
		for (i = conv->nturns - 1; i >= 0; i--)
			if (turns[i].role == 's')
				return turns[0].seq <= turns[i].summary_through + 1;
		return false;
	}
	estimator_init(turns, conv->nturns, sent_before, &e);
	acc = e.fixed + tokens_of(&e, msg->bytes);
	for (i = conv->nturns - 1; i >= 0; i--)
	{
		if (turns[i].role != 's')
			acc += tokens_of(&e, turns[i].bytes);
		if (tokens_ceil(acc) > budget)
			return true;
	}
	return false;
}

/*
 * Load the newest turns' sizes, in windows of 16 seqs, doubling, until
 * they hold all that fitting can use: a call on a long conversation reads
 * about what it sends, not its whole history.
 */
static void
load_window(ChatConversation *conv, bool summarize, int64 sent_before, const ChatMessage *msg,
			int64 budget)
{
	int			span = 16;

	while (conv->loaded_from > 1)
	{
		load_turns_before(conv, Max(1, conv->loaded_from - span));
		span = Min(span * 2, 1 << 20);
		if (window_enough(conv, summarize, sent_before, msg, budget))
			break;
	}
}

/*
 * What to send for msg after turns [0, nturns) to alias: the turns that
 * fit, after a summary made now if the policy says so.  options: the
 * call's merged options without system.  A replay (turns its own, contents
 * loaded) never summarises: it would add calls that are not part of the
 * comparison; it trims by drop_oldest.
 */
static void
fit(ChatConversation *conv, ChatTurn *turns, int nturns, const char *alias,
	const ChatMessage *msg, Jsonb *options, bool replay, ChatContext *ctx)
{
	ChatPolicy	p;
	bool		known;
	int64		max_tokens;
	int64		sent_before = options_bytes(options, &max_tokens) +
		(conv->system ? strlen(conv->system) : 0);
	Estimator	e;
	double		fixed;
	int64		budget;
	int64		sent;
	char	   *summary_text = NULL;
	int			lo = 0;

	chat_policy_parse(conv->policy, &p);
	budget = chat_budget(alias, max_tokens, p.budget_tokens, &known);
	if (!replay)
	{
		load_window(conv, p.summarize, sent_before, msg, budget);
		turns = conv->turns;
		nturns = conv->nturns;
	}
	/* a replay's model: its own answers so far are the only measure of its tokenizer */
	estimator_init(turns, nturns, sent_before, &e);
	fixed = e.fixed + tokens_of(&e, msg->bytes);
	ctx->summary = -1;

	if (p.summarize && !replay)
	{
		int			s;
		double		with = fixed;

		for (s = nturns - 1; s >= 0 && turns[s].role != 's'; s--)
			;
		if (s >= 0)
		{
			while (lo < nturns && turns[lo].seq <= turns[s].summary_through)
				lo++;
			with += tokens_of(&e, turns[s].bytes + strlen(SUMMARY_HEADER));
			ctx->summary = s;
		}
		ctx->first = fit_from(turns, nturns, lo, with, msg->starts, &e, budget);
		if (ctx->first != first_message(turns, nturns, lo))
		{
			/* room for the summary to come: its max tokens, and the header */
			double		reserve = p.summary_max_tokens + tokens_of(&e, strlen(SUMMARY_HEADER));
			int			from = first_message(turns, nturns, lo);
			int			cut;
			char	   *old = NULL;

			if (!known)
				too_long(alias, 0, budget, false);
			cut = fit_from(turns, nturns, lo, fixed + reserve, msg->starts, &e, budget / 2);
			if (cut <= from)
				cut = fit_from(turns, nturns, lo, fixed + reserve, msg->starts, &e, budget);
			if (cut < 0)
				too_long(alias, tokens_ceil(fixed + reserve), budget, true);
			if (cut < from)
				cut = from;
			load_contents(conv, from, s);
			if (s >= 0)
				old = chat_content_text(turns[s].content);
			ctx->summary = chat_summarize(conv, &p, old, from, cut, &summary_text);
			nturns = conv->nturns;	/* the summary is a turn now */
			ctx->first = cut;
		}
		else if (s >= 0)
		{
			load_contents(conv, ctx->first, s);
			summary_text = chat_content_text(turns[s].content);
		}
	}
	else
	{
		ctx->first = fit_from(turns, nturns, 0, fixed, msg->starts, &e, budget);
		if (ctx->first >= 0 && !known &&
			(ctx->first != first_message(turns, nturns, 0) || (!replay && conv->loaded_from > 1)))
			too_long(alias, 0, budget, false);
	}
	if (ctx->first < 0)
		too_long(alias, tokens_ceil(fixed), budget, known);
	if (summary_text == NULL && !replay)
		load_contents(conv, ctx->first, -1);

	ctx->history = build_history(turns, nturns, ctx->first, msg, &sent);
	ctx->system = system_with_summary(conv->system, summary_text);
	ctx->est_raw = (int64) ceil((sent_before + msg->bytes + sent +
								 (summary_text ? strlen(SUMMARY_HEADER) + strlen(summary_text) : 0)) / 4.0);
	ctx->message_tokens = tokens_ceil(tokens_of(&e, msg->bytes));
}

/* What to send for msg on conv (locked, its turns' sizes loaded). */
void
chat_fit(ChatConversation *conv, const ChatMessage *msg, Jsonb *options, ChatContext *ctx)
{
	fit(conv, conv->turns, conv->nturns, conv->alias, msg, options, false, ctx);
}

/* For a replay: what to send for msg after the replayed turns, to alias. */
void
chat_fit_replay(ChatConversation *conv, ChatTurn *turns, int nturns, const char *alias,
				const ChatMessage *msg, Jsonb *options, ChatContext *ctx)
{
	fit(conv, turns, nturns, alias, msg, options, true, ctx);
}

/* for chat_replay.c: every turn, with its content */
void
chat_load_all_contents(ChatConversation *conv)
{
	chat_load_all_turns(conv);
	load_contents(conv, 0, -1);
}

/*
 * For llm.estimate: the alias of the conversation an llm_chat call site
 * names (arg: its first argument), and in *bytes what its history adds to
 * the message (system prompt and stored turns: an upper bound when they
 * are trimmed).  NULL (unknown) when the conversation is not a constant
 * or the caller cannot see it.
 */
char *
chat_estimate_site(Node *arg, double *bytes)
{
	static const char *const sql =
	"SELECT c.alias, coalesce(octet_length(c.system), 0)"
	"       + coalesce((SELECT sum(h.bytes) FROM llm.conversation_history(c.id) h"
	"                    WHERE h.role <> 'summary'), 0)::int8"
	"  FROM llm.conversations c WHERE c.id = $1";
	Const	   *c = (Const *) arg;
	Oid			types[1] = {INT8OID};
	Datum		values[1];
	char	   *alias = NULL;
	MemoryContext outer = CurrentMemoryContext;

	*bytes = 0;
	if (arg == NULL || !IsA(arg, Const) || c->constisnull || c->consttype != INT8OID)
		return NULL;
	values[0] = c->constvalue;
	SPI_connect();
	conversation_spi(InvalidOid, sql, 1, types, values, NULL, SPI_OK_SELECT);
	if (SPI_processed == 1)
	{
		bool		isnull;

		alias = MemoryContextStrdup(outer, TextDatumGetCString(spi_col(0, 1, &isnull)));
		*bytes = (double) spi_int64(0, 2, 0);
	}
	SPI_finish();
	return alias;
}

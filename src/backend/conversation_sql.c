/*-------------------------------------------------------------------------
 *
 * conversation_sql.c
 *	  Creating, forking and sharing conversations:
 *	  llm.new_conversation, llm.fork_conversation, llm.share_conversation,
 *	  llm.unshare_conversation.
 *
 * runs in: backend.
 *
 * Each checks the caller (what it may see goes through row security as
 * the caller, in conversation_load), then writes as llm_gateway_worker:
 * users may not insert into the conversation tables themselves, so an
 * owner_role, a lineage or a share is always one these functions wrote.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "miscadmin.h"
#include "utils/acl.h"
#include "utils/builtins.h"
#include "utils/jsonb.h"

#include "common/json_util.h"
#include "backend/conversation.h"
#include "backend/run_as.h"
#include "backend/sql_api.h"
#include "backend/validate.h"

PG_FUNCTION_INFO_V1(llm_new_conversation);
PG_FUNCTION_INFO_V1(llm_fork_conversation);
PG_FUNCTION_INFO_V1(llm_share_conversation);
PG_FUNCTION_INFO_V1(llm_unshare_conversation);

/* one statement as llm_gateway_worker; SPI is connected */
#define exec_as_gateway(sql, nargs, types, values, nulls, expect) \
	conversation_spi(run_as_gateway_role(), sql, nargs, types, values, nulls, expect)

static int64
first_int8(void)
{
	bool		isnull;

	return DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull));
}

static void
check_alias_exists(const char *alias, const char *what)
{
	Oid			types[1] = {TEXTOID};
	Datum		values[1] = {CStringGetTextDatum(alias)};

	exec_as_gateway("SELECT 1 FROM llm.routes WHERE alias = $1 LIMIT 1", 1, types, values, NULL,
					SPI_OK_SELECT);
	if (SPI_processed == 0)
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_OBJECT),
				 errmsg("%s \"%s\" does not exist", what, alias),
				 errhint("Define it with llm.add_route(alias, provider, upstream_model).")));
}

static char *
current_role_name(void)
{
	return GetUserNameFromId(GetUserId(), false);
}

/*
 * llm.new_conversation(model text, system text DEFAULT NULL, options jsonb DEFAULT '{}') -> bigint
 *
 * options: llm_messages call options (checked now, as a first call would
 * be), plus "context" (the context policy) and "title".
 */
Datum
llm_new_conversation(PG_FUNCTION_ARGS)
{
	static const char *const sql =
	"INSERT INTO llm.conversations (owner_role, alias, system, options, context_policy, title)"
	" VALUES ($1, $2, $3, $4, $5, $6) RETURNING id";
	char	   *alias;
	Jsonb	   *options;
	Jsonb	   *policy;
	JsonbValue *v;
	char	   *title = NULL;
	ChatPolicy	p;
	LlmCallSpec spec;
	Oid			types[6] = {TEXTOID, TEXTOID, TEXTOID, JSONBOID, JSONBOID, TEXTOID};
	Datum		values[6];
	char		nulls[6] = {' ', ' ', ' ', ' ', ' ', ' '};
	int64		id;

	if (PG_ARGISNULL(0))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("model alias must not be NULL"),
				 errhint("Pass the alias of a route defined with llm.add_route().")));
	alias = text_to_cstring(PG_GETARG_TEXT_PP(0));
	options = PG_ARGISNULL(2) ? jsonb_from_cstring("{}") : PG_GETARG_JSONB_P(2);
	if (!JB_ROOT_IS_OBJECT(options) || JB_ROOT_IS_SCALAR(options))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("options must be a JSON object"),
				 errhint("Pass e.g. '{\"max_tokens\": 1024, \"context\": {\"strategy\": \"summarize\"}}'.")));
	if (json_get(&options->root, "system") != NULL)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("llm.new_conversation takes the system prompt as its second argument, not as option \"system\"")));

	v = json_get(&options->root, "context");
	if (v != NULL && v->type == jbvBinary)
		policy = JsonbValueToJsonb(v);
	else if (v == NULL)
		policy = jsonb_from_cstring("{}");
	else
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("context policy: it must be a JSON object")));
	chat_policy_parse(policy, &p);
	v = json_get(&options->root, "title");
	if (v != NULL && v->type != jbvNull)
	{
		title = json_value_cstring(v);
		if (title == NULL)
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("option \"title\" must be a string")));
	}
	options = DatumGetJsonbP(DirectFunctionCall2(jsonb_delete, JsonbPGetDatum(options),
												 CStringGetTextDatum("context")));
	options = DatumGetJsonbP(DirectFunctionCall2(jsonb_delete, JsonbPGetDatum(options),
												 CStringGetTextDatum("title")));
	/* the options as a first call would take them */
	validate_call(alias, jsonb_from_cstring("[{\"role\":\"user\",\"content\":\"-\"}]"), options, &spec);

	SPI_connect();
	check_alias_exists(alias, "model alias");
	if (p.summary_model)
		check_alias_exists(p.summary_model, "summary_model alias");
	values[0] = CStringGetTextDatum(current_role_name());
	values[1] = CStringGetTextDatum(alias);
	values[2] = PG_ARGISNULL(1) ? (Datum) 0 : PG_GETARG_DATUM(1);
	nulls[2] = PG_ARGISNULL(1) ? 'n' : ' ';
	values[3] = JsonbPGetDatum(options);
	values[4] = JsonbPGetDatum(policy);
	values[5] = title ? CStringGetTextDatum(title) : (Datum) 0;
	nulls[5] = title ? ' ' : 'n';
	exec_as_gateway(sql, 6, types, values, nulls, SPI_OK_INSERT_RETURNING);
	id = first_int8();
	SPI_finish();
	PG_RETURN_INT64(id);
}

/*
 * llm.fork_conversation(conversation bigint, at_seq int) -> bigint
 *
 * The fork reads its first turns where they are: its lineage names each
 * conversation it shares turns with and up to which seq (its parent's
 * lineage, cut at at_seq, plus the parent itself), so nothing is copied,
 * however long the history.
 */
Datum
llm_fork_conversation(PG_FUNCTION_ARGS)
{
	static const char *const insert_sql =
	"INSERT INTO llm.conversations (owner_role, alias, system, options, context_policy, title,"
	"    metadata, forked_from, forked_at_seq)"
	" SELECT $1, alias, system, options, context_policy, title, metadata, id, $3"
	"   FROM llm.conversations WHERE id = $2 RETURNING id";
	static const char *const lineage_sql =
	"INSERT INTO llm.conversation_lineage (conversation, ancestor, through_seq)"
	" SELECT $1, $2, $3 WHERE $3 > 0"
	" UNION ALL"
	" SELECT $1, l.ancestor, least(l.through_seq, $3) FROM llm.conversation_lineage l"
	"  WHERE l.conversation = $2 AND $3 > 0";
	int64		id;
	int			at_seq;
	ChatConversation conv;
	Oid			types[3] = {TEXTOID, INT8OID, INT4OID};
	Datum		values[3];
	int64		fork;
	int			i;

	if (PG_ARGISNULL(0) || PG_ARGISNULL(1))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("conversation and at_seq must not be NULL")));
	id = PG_GETARG_INT64(0);
	at_seq = PG_GETARG_INT32(1);
	conversation_load(id, false, &conv);
	chat_load_all_turns(&conv);
	for (i = 0; i < conv.nturns && conv.turns[i].seq != at_seq; i++)
		;
	if (at_seq != 0 && (i == conv.nturns || conv.turns[i].role != 'a'))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("conversation " INT64_FORMAT " has no assistant turn %d to fork at", id, at_seq),
				 errdetail("A fork ends with an answer, so that its next llm_chat adds a user turn after it."),
				 errhint("Pick a seq of llm.conversation_history(%lld) whose role is assistant, or 0 for none.",
						 (long long) id)));

	SPI_connect();
	values[0] = CStringGetTextDatum(current_role_name());
	values[1] = Int64GetDatum(id);
	values[2] = Int32GetDatum(at_seq);
	exec_as_gateway(insert_sql, 3, types, values, NULL, SPI_OK_INSERT_RETURNING);
	fork = first_int8();
	types[0] = INT8OID;
	values[0] = Int64GetDatum(fork);
	exec_as_gateway(lineage_sql, 3, types, values, NULL, SPI_OK_INSERT);
	SPI_finish();
	PG_RETURN_INT64(fork);
}

/* the caller owns the conversation or administers the gateway */
static void
check_owner(ChatConversation *conv, const char *function)
{
	Oid			admin = get_role_oid("llm_admin", true);

	if (strcmp(conv->owner, current_role_name()) == 0 || superuser() ||
		(OidIsValid(admin) && has_privs_of_role(GetUserId(), admin)))
		return;
	ereport(ERROR,
			(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
			 errmsg("only the owner of conversation " INT64_FORMAT " (%s) or llm_admin may call %s",
					conv->id, conv->owner, function)));
}

static char *
role_arg(FunctionCallInfo fcinfo, bool must_exist)
{
	char	   *role;

	if (PG_ARGISNULL(0) || PG_ARGISNULL(1))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("conversation and role_name must not be NULL")));
	role = text_to_cstring(PG_GETARG_TEXT_PP(1));
	if (must_exist && !OidIsValid(get_role_oid(role, true)))
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_OBJECT),
				 errmsg("role \"%s\" does not exist", role)));
	return role;
}

/*
 * llm.share_conversation(conversation bigint, role_name text, can_continue boolean DEFAULT true)
 */
Datum
llm_share_conversation(PG_FUNCTION_ARGS)
{
	static const char *const sql =
	"INSERT INTO llm.conversation_shares (conversation, role_name, can_continue, owner_role, shared_by)"
	" VALUES ($1, $2, $3, $4, $5)"
	" ON CONFLICT (conversation, role_name) DO UPDATE"
	"   SET can_continue = excluded.can_continue, shared_by = excluded.shared_by, created_at = now()";
	char	   *role = role_arg(fcinfo, true);
	ChatConversation conv;
	Oid			types[5] = {INT8OID, TEXTOID, BOOLOID, TEXTOID, TEXTOID};
	Datum		values[5];

	/* a NULL can_continue must not grant the wider right */
	if (PG_ARGISNULL(2))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("can_continue must not be NULL"),
				 errhint("Pass true to let the role continue the conversation, false to let it only read it.")));
	conversation_load(PG_GETARG_INT64(0), false, &conv);
	check_owner(&conv, "llm.share_conversation");
	if (strcmp(role, conv.owner) == 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("role \"%s\" owns conversation " INT64_FORMAT, role, conv.id)));
	values[0] = Int64GetDatum(conv.id);
	values[1] = CStringGetTextDatum(role);
	values[2] = BoolGetDatum(PG_GETARG_BOOL(2));
	values[3] = CStringGetTextDatum(conv.owner);
	values[4] = CStringGetTextDatum(current_role_name());
	SPI_connect();
	exec_as_gateway(sql, 5, types, values, NULL, SPI_OK_INSERT);
	SPI_finish();
	PG_RETURN_VOID();
}

/*
 * llm.unshare_conversation(conversation bigint, role_name text) -> boolean
 */
Datum
llm_unshare_conversation(PG_FUNCTION_ARGS)
{
	char	   *role = role_arg(fcinfo, false);
	ChatConversation conv;
	Oid			types[2] = {INT8OID, TEXTOID};
	Datum		values[2];
	bool		found;

	conversation_load(PG_GETARG_INT64(0), false, &conv);
	check_owner(&conv, "llm.unshare_conversation");
	values[0] = Int64GetDatum(conv.id);
	values[1] = CStringGetTextDatum(role);
	SPI_connect();
	exec_as_gateway("DELETE FROM llm.conversation_shares WHERE conversation = $1 AND role_name = $2",
					2, types, values, NULL, SPI_OK_DELETE);
	found = SPI_processed > 0;
	SPI_finish();
	PG_RETURN_BOOL(found);
}

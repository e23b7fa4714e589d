/*-------------------------------------------------------------------------
 *
 * attempt.c
 *	  A call's life in the worker: take it from its slot, send it, turn the
 *	  provider's answer into the canonical one, answer.  The routing
 *	  decisions (which target, retry or fall over) are router.c's.
 *
 * runs in: worker.
 *
 * Vocabulary: a *request* is one call (one llm.requests row); an *attempt*
 * is one HTTP exchange with one target; a call makes one or more.
 *
 * Each item owns a memory context; deleting it (item_free) frees the call,
 * its translated HTTP request and the parsed answer.  curl's memory is
 * freed by http_release() on every path first.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/xlog.h"
#include "miscadmin.h"
#include "utils/builtins.h"
#include "utils/json.h"
#include "utils/memutils.h"
#include "utils/numeric.h"
#include "utils/timestamp.h"

#include "worker/attempt.h"
#include "worker/quota.h"
#include "channel/channel.h"
#include "worker/health.h"
#include "common/json_util.h"
#include "common/llm_errors.h"
#include "llm_gateway.h"
#include "worker/route_cache.h"
#include "worker/router.h"
#include "worker/embed_batch.h"
#include "worker/vertex_token.h"

LlmWorkItem *
item_create(int slot)
{
	MemoryContext cxt;
	MemoryContext old;
	LlmWorkItem *item;
	LlmRequestMsg *msg;
	char	   *p;

	/* mapping the payload can fail: before anything is allocated for the call */
	msg = channel_request(slot);

	cxt = AllocSetContextCreate(TopMemoryContext, "llm call", ALLOCSET_SMALL_SIZES);
	old = MemoryContextSwitchTo(cxt);
	item = palloc0(sizeof(LlmWorkItem));
	item->cxt = cxt;
	item->slot = slot;
	item->generation = channel_slot_generation(slot);
	item->state = LLM_ITEM_NEW;
	item->error.retry_after_s = -1;
	provider_init_answer(&item->answer);

	/* copy the call out of shared memory: the backend frees it after DONE */
	p = msg->data;
	item->alias = pnstrdup(p, msg->alias_len);
	p += msg->alias_len + 1;
	item->role = pnstrdup(p, msg->role_len);
	p += msg->role_len + 1;
	item->tags = msg->tags_len > 0 ? pnstrdup(p, msg->tags_len) : NULL;
	p += msg->tags_len + 1;
	item->allowed_regions = pnstrdup(p, msg->regions_len);
	p += msg->regions_len + 1;
	item->request = palloc(msg->request_len);
	memcpy(item->request, p, msg->request_len);
	item->timeout_ms = msg->timeout_ms;
	item->submitted_at = msg->submitted_at;
	item->deadline = TimestampTzPlusMilliseconds(msg->submitted_at, msg->timeout_ms);
	item->call.request = item->request;
	/* an embedding request (its only key is "embed"): embed_batch.c sends it */
	item->embed = embed_call_from_request(item->request, &item->embed_call) ||
		json_get(&item->request->root, "embed") != NULL;
	item->cur = -1;
	initStringInfo(&item->attempt_log);
	appendStringInfoChar(&item->attempt_log, '[');

	MemoryContextSwitchTo(old);
	return item;
}

static double
elapsed_ms(TimestampTz since)
{
	long		secs;
	int			usecs;

	TimestampDifference(since, GetCurrentTimestamp(), &secs, &usecs);
	return secs * 1000.0 + usecs / 1000.0;
}

/*
 * The call's cost in USD from the answering target's prices (route options
 * price_input, price_output, price_cache_read, price_cache_write, in USD per
 * million tokens), in numeric arithmetic: money is never a float.  *cost is
 * NULL when the target has no prices.
 *
 * The options are bounded when set (llm._check_route_options(), also a
 * trigger on llm.routes), but a row written before that check, or by a
 * superuser with the trigger disabled, must not take the worker down: a
 * price out of range fails this call with 22023 naming the option, and any
 * ERROR the arithmetic still raises fails it too, never the worker.
 */
#define LLM_PRICE_MAX	1000000
static bool
compute_cost(LlmWorkItem *item, char **cost)
{
	static const char *const keys[] = {"price_input", "price_output", "price_cache_read", "price_cache_write"};
	int64		counts[4];
	JsonbContainer *opts = &item->target.route_options->root;
	Numeric		zero = int64_to_numeric(0);
	Numeric		max_price = int64_to_numeric(LLM_PRICE_MAX);
	volatile	Datum total = NumericGetDatum(zero);
	bool		priced = false;
	int			i;
	MemoryContext cxt = CurrentMemoryContext;
	volatile bool failed = false;

	*cost = NULL;
	counts[0] = item->answer.input_tokens;
	counts[1] = item->answer.output_tokens;
	counts[2] = item->answer.cache_read_input_tokens;
	counts[3] = item->answer.cache_creation_input_tokens;
	for (i = 0; i < 4; i++)
	{
		JsonbValue *price = json_get(opts, keys[i]);

		if (price == NULL || price->type != jbvNumeric)
			continue;
		if (numeric_is_nan(price->val.numeric) ||
			DatumGetInt32(DirectFunctionCall2(numeric_cmp, NumericGetDatum(price->val.numeric),
											  NumericGetDatum(zero))) < 0 ||
			DatumGetInt32(DirectFunctionCall2(numeric_cmp, NumericGetDatum(price->val.numeric),
											  NumericGetDatum(max_price))) > 0)
		{
			item->ok = false;
			item->status = "error";
			item->error.sqlerrcode = ERRCODE_INVALID_PARAMETER_VALUE;
			item->error.message = psprintf("route option \"%s\" of route target " INT64_FORMAT " is out of range: the cost of the call cannot be computed",
										   keys[i], item->cand[item->cur].route_id);
			item->error.detail = pstrdup("The provider answered; its answer is in llm.requests.response_body.");
			item->error.hint = psprintf("Set a price between 0 and %d USD per million tokens with llm.alter_route().", LLM_PRICE_MAX);
			return false;
		}
		priced = true;
		counts[i] = Max(counts[i], 0);
		PG_TRY();
		{
			Datum		part = DirectFunctionCall2(numeric_mul, NumericGetDatum(price->val.numeric),
												   NumericGetDatum(int64_to_numeric(counts[i])));

			total = DirectFunctionCall2(numeric_add, total, part);
		}
		PG_CATCH();
		{
			MemoryContextSwitchTo(cxt);
			FlushErrorState();
			failed = true;
		}
		PG_END_TRY();
		if (failed)
		{
			item->ok = false;
			item->status = "error";
			item->error.sqlerrcode = ERRCODE_NUMERIC_VALUE_OUT_OF_RANGE;
			item->error.message = psprintf("the cost of the call cannot be computed from route option \"%s\" of route target " INT64_FORMAT,
										   keys[i], item->cand[item->cur].route_id);
			item->error.hint = pstrdup("Correct the target's prices with llm.alter_route().");
			return false;
		}
	}
	if (!priced)
		return true;
	/* bounded: at most 4 * 1e6 * 2^63 / 1e6, nothing here can overflow */
	total = DirectFunctionCall2(numeric_div, total, NumericGetDatum(int64_to_numeric(1000000)));
	total = DirectFunctionCall2(numeric_round, total, Int32GetDatum(10));
	*cost = DatumGetCString(DirectFunctionCall1(numeric_out, total));
	return true;
}

/*
 * Error text as the channel carries it: message\0detail\0hint\0, and
 * request_id\0provider\0 added at delivery (item_deliver), when the row's
 * id is known; the backend reads them for on_error = null.
 */
static void
error_payload(StringInfo buf, const LlmError *err)
{
	appendStringInfoString(buf, err->message ? err->message : "unknown error");
	appendStringInfoChar(buf, '\0');
	appendStringInfoString(buf, err->detail ? err->detail : "");
	appendStringInfoChar(buf, '\0');
	appendStringInfoString(buf, err->hint ? err->hint : "");
	appendStringInfoChar(buf, '\0');
}

/* The canonical answer: the Messages "message" plus the "gateway" key. */
static void
answer_payload(StringInfo buf, LlmWorkItem *item)
{
	LlmAnswer  *a = &item->answer;
	bool		first = true;

	appendStringInfoChar(buf, '{');
	json_append_key(buf, &first, "id");
	if (a->id)
		json_append_string(buf, a->id);
	else
		json_append_string(buf, psprintf("msg_llmgw_" INT64_FORMAT, item->request_id));
	json_append_key(buf, &first, "type");
	appendStringInfoString(buf, "\"message\"");
	json_append_key(buf, &first, "role");
	appendStringInfoString(buf, "\"assistant\"");
	json_append_key(buf, &first, "model");
	json_append_string(buf, a->model ? a->model : item->target.upstream_model);
	json_append_key(buf, &first, "content");
	if (a->content.len > 0)
		appendBinaryStringInfo(buf, a->content.data, a->content.len);
	else
		appendStringInfoString(buf, "[]");
	json_append_key(buf, &first, "stop_reason");
	if (a->stop_reason)
		json_append_string(buf, a->stop_reason);
	else
		appendStringInfoString(buf, "null");
	json_append_key(buf, &first, "stop_sequence");
	if (a->stop_sequence)
		json_append_string(buf, a->stop_sequence);
	else
		appendStringInfoString(buf, "null");
	json_append_key(buf, &first, "usage");
	appendStringInfo(buf,
					 "{\"input_tokens\":" INT64_FORMAT ",\"output_tokens\":" INT64_FORMAT
					 ",\"cache_creation_input_tokens\":" INT64_FORMAT
					 ",\"cache_read_input_tokens\":" INT64_FORMAT "}",
					 a->input_tokens, a->output_tokens,
					 a->cache_creation_input_tokens, a->cache_read_input_tokens);
	json_append_key(buf, &first, "gateway");
	appendStringInfo(buf, "{\"request_id\":" INT64_FORMAT ",\"provider\":", item->request_id);
	json_append_string(buf, item->target.provider_name);
	appendStringInfo(buf, ",\"attempts\":%d,\"latency_ms\":%.3f,\"cost_usd\":%s",
					 item->attempts, item->latency_ms, item->cost_usd ? item->cost_usd : "null");
	if (quota_warning(item))
	{
		appendStringInfoString(buf, ",\"quota_warning\":");
		json_append_string(buf, quota_warning(item));
	}
	appendStringInfoString(buf, "}}");
}

/*
 * The call is over: compute what the backend will get and release curl's
 * resources.  The worker then completes the log row and delivers the
 * answer (item_deliver), so the caller's next statement sees the row.
 */
static void
item_finish(LlmWorkItem *item)
{
	MemoryContext old = MemoryContextSwitchTo(item->cxt);

	item->latency_ms = elapsed_ms(item->submitted_at);
	if (item->ok)
		(void) compute_cost(item, &item->cost_usd);
	initStringInfo(&item->payload);
	if (item->batch)
		embed_batch_leave(item);
	if (item->ok && item->embed)
		embed_answer_payload(&item->payload, item);
	else if (item->ok)
		answer_payload(&item->payload, item);
	else
	{
		error_payload(&item->payload, &item->error);
		/* room for item_deliver's ids now, so delivering allocates nothing */
		enlargeStringInfo(&item->payload, MAXINT8LEN + 3 +
						  (item->has_target ? strlen(item->target.provider_name) : 0));
	}
	item->state = LLM_ITEM_FINISHED;
	quota_settle(item);
	if (item->xfer_live)
	{
		http_release(&item->xfer);
		item->xfer_live = false;
	}
	release_provider_slot(item);
	abandon_health(item);
	if (item->throttled)
	{
		provider_limits_queued(item->target.provider_name, -1);
		item->throttled = false;
		channel_slot_throttled(item->slot, false);
	}
	MemoryContextSwitchTo(old);
}

/*
 * Hand the outcome to the waiting backend (or free an abandoned slot).
 * Called once the call's log row is complete, or known not to be written:
 * the backend returns at once and its next statement sees the row.
 */
void
item_deliver(LlmWorkItem *item)
{
	if (item->delivered)
		return;
	item->delivered = true;
	if (!item->ok)
	{
		/* fits in the room item_finish reserved: cannot fail */
		appendStringInfo(&item->payload, INT64_FORMAT, item->request_id);
		appendStringInfoChar(&item->payload, '\0');
		appendStringInfoString(&item->payload, item->has_target ? item->target.provider_name : "");
		appendStringInfoChar(&item->payload, '\0');
	}
	channel_finish(item->slot, item->ok ? LLM_OUTCOME_OK : LLM_OUTCOME_ERROR,
				   item->ok ? 0 : item->error.sqlerrcode,
				   item->payload.data, item->payload.len);
}

void
item_fail(LlmWorkItem *item, const char *status, int sqlerrcode,
		  const char *message, const char *detail, const char *hint)
{
	MemoryContext old = MemoryContextSwitchTo(item->cxt);

	item->ok = false;
	item->status = status;
	item->error.sqlerrcode = sqlerrcode;
	item->error.message = pstrdup(message);
	item->error.detail = detail ? pstrdup(detail) : NULL;
	item->error.hint = hint ? pstrdup(hint) : NULL;
	MemoryContextSwitchTo(old);
	item_finish(item);
}

/*
 * The route's idempotency_header, if any, carries one key per logical
 * call: the same on every attempt and every target, different for every
 * call of every cluster and database (system identifier, database OID,
 * llm.requests id).  Neither Anthropic's Messages API nor OpenAI's Chat
 * Completions documents such a header, so none is sent unless a route
 * names one (an OpenAI-compatible server or proxy that honours it).
 */
static void
add_idempotency_key(LlmWorkItem *item)
{
	JsonbValue *v = json_get(&item->target.route_options->root, "idempotency_header");
	char	   *name = v ? json_value_cstring(v) : NULL;

	if (name == NULL || name[0] == '\0')
		return;
	provider_add_header(&item->http_request, name,
						psprintf("llmgw-" UINT64_FORMAT "-%u-" INT64_FORMAT,
								 GetSystemIdentifier(), MyDatabaseId, item->request_id));
}

/* One object of the attempt log. */
static void
log_attempt(LlmWorkItem *item)
{
	StringInfo	buf = &item->attempt_log;
	bool		first = true;

	if (buf->len > 1)
		appendStringInfoChar(buf, ',');
	appendStringInfoChar(buf, '{');
	json_append_key(buf, &first, "route_id");
	appendStringInfo(buf, INT64_FORMAT, item->cand[item->cur].route_id);
	json_append_key(buf, &first, "provider");
	json_append_string(buf, item->target.provider_name);
	json_append_key(buf, &first, "model");
	json_append_string(buf, item->target.upstream_model);
	/* which key was used: its label, never the secret */
	if (item->cand[item->cur].ncredentials > 0)
	{
		json_append_key(buf, &first, "credential");
		json_append_string(buf, item->cand[item->cur].credential_labels[item->cand[item->cur].credential_at]);
	}
	json_append_key(buf, &first, "http_status");
	if (item->http_status > 0)
		appendStringInfo(buf, "%ld", item->http_status);
	else
		appendStringInfoString(buf, "null");
	json_append_key(buf, &first, "error_code");
	if (item->ok)
		appendStringInfoString(buf, "null");
	else
		json_append_string(buf, unpack_sql_state(item->error.sqlerrcode));
	json_append_key(buf, &first, "latency_ms");
	appendStringInfo(buf, "%.3f", elapsed_ms(item->attempt_started));
	appendStringInfoChar(buf, '}');
}

/* Send the next attempt (after a backoff, or on the next target). */
void
item_retry(LlmWorkItem *item)
{
	MemoryContext old = MemoryContextSwitchTo(item->cxt);

	/* forget the failed attempt's outcome */
	memset(&item->error, 0, sizeof(item->error));
	item->error.retry_after_s = -1;
	item->http_status = 0;
	item->response_body = NULL;
	item->unreadable = false;
	provider_init_answer(&item->answer);
	MemoryContextSwitchTo(old);
	item_send(item);
}

/* Translate and start the HTTP exchange.  The pending row is committed. */
void
item_send(LlmWorkItem *item)
{
	MemoryContext old = MemoryContextSwitchTo(item->cxt);
	long		remaining;
	LlmError   *err = &item->error;

	/* the target's credential could not be decrypted: send nothing */
	if (item->cand[item->cur].credential_error != NULL)
	{
		const LlmRouteTarget *rt = &item->cand[item->cur];

		MemoryContextSwitchTo(old);
		item_fail(item, "error", ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
				  psprintf("could not decrypt the credential of provider \"%s\": %s",
						   item->target.provider_name, rt->credential_error),
				  NULL, rt->credential_hint);
		return;
	}

	/* past the deadline (waiting for a limit, a backoff): give up unsent */
	remaining = TimestampDifferenceMilliseconds(GetCurrentTimestamp(), item->deadline);
	if (remaining <= 0)
	{
		MemoryContextSwitchTo(old);
		item_fail(item, "timeout", ERRCODE_LLM_PROVIDER_TIMEOUT,
				  psprintf("the call timed out after %d ms before it could be sent", item->timeout_ms),
				  NULL, "Raise the timeout_ms option or llm.request_timeout_ms.");
		return;
	}

	/*
	 * Kind vertex: the stored service-account key becomes an access token
	 * first (vertex_token.c).  While it is being fetched the call waits,
	 * asking again every VTOKEN_POLL_MS; a failed fetch is this attempt's
	 * failure (LL001, credential class: the next key, then the next target).
	 */
	if (item->target.provider != NULL && strcmp(item->target.provider->kind, "vertex") == 0)
	{
		const LlmRouteTarget *rt = &item->cand[item->cur];
		VertexTokenState st;

		st = vertex_token_prepare(&item->target, rt->target.secret,
								  rt->ncredentials > 0 ? rt->credential_labels[rt->credential_at] : NULL,
								  err);
		if (st == VTOKEN_PENDING)
		{
			item->retry_at = Min(TimestampTzPlusMilliseconds(GetCurrentTimestamp(), VTOKEN_POLL_MS),
								 item->deadline);
			item->state = LLM_ITEM_WAITING;
			/* parked for the token, not for a freed provider slot (fair_share.c) */
			item->waiting_for_slot = false;
			MemoryContextSwitchTo(old);
			return;
		}
		if (st == VTOKEN_FAILED)
		{
			item->ok = false;
			item->status = "error";
			item->attempts++;
			item->tries_on_cur++;
			item->attempt_started = GetCurrentTimestamp();
			MemoryContextSwitchTo(old);
			item_settle_attempt(item);
			return;
		}
	}

	/*
	 * An embedding attempt joins a batch (embed_batch.c), which sends one
	 * request for many calls; the batch is not counted in the provider's
	 * concurrency and rate limits (docs/design.md §23).
	 */
	if (item->embed)
	{
		MemoryContextSwitchTo(old);
		embed_batch_join(item);
		return;
	}

	/*
	 * The provider's concurrency and rate limits: wait in the worker, never
	 * fail.  Checked before translating, so a call woken many times while
	 * queued does not rebuild its request each time.
	 */
	{
		int64		max_conc = 0,
					rpm = 0;
		long		wait;

		(void) json_get_int64(&item->target.provider_options->root, "max_concurrency", &max_conc);
		(void) json_get_int64(&item->target.provider_options->root, "requests_per_minute", &rpm);
		wait = provider_limits_acquire(item->target.provider_name,
									   (int) Max(max_conc, 0), (int) Max(rpm, 0));
		if (wait != 0)
		{
			if (!item->throttled)
				provider_limits_queued(item->target.provider_name, 1);
			item->waiting_for_slot = (wait < 0);
			item->retry_at = wait > 0 ?
				Min(TimestampTzPlusMilliseconds(GetCurrentTimestamp(), wait), item->deadline) :
				item->deadline;
			item->state = LLM_ITEM_WAITING;
			item->throttled = true;
			channel_slot_throttled(item->slot, true);
			MemoryContextSwitchTo(old);
			return;
		}
		if (item->throttled)
		{
			provider_limits_queued(item->target.provider_name, -1);
			channel_slot_throttled(item->slot, false);
		}
		item->throttled = false;
		item->waiting_for_slot = false;
		item->holds_provider_slot = true;
	}
	item->call.request_id = item->request_id;
	memset(&item->http_request, 0, sizeof(item->http_request));
	initStringInfo(&item->http_request.body);
	if (!item->target.provider->build_request(&item->call, &item->target,
											  &item->http_request, err))
	{
		item->ok = false;
		item->status = "error";
		MemoryContextSwitchTo(old);
		item_finish(item);
		return;
	}
	add_idempotency_key(item);
	if (item->http_request.body.len > llm_max_request_bytes)
	{
		MemoryContextSwitchTo(old);
		item_fail(item, "error", ERRCODE_PROGRAM_LIMIT_EXCEEDED,
				  psprintf("the request body is %d bytes, more than llm.max_request_bytes (%d)",
						   item->http_request.body.len, llm_max_request_bytes),
				  NULL, "Send a shorter history, or raise llm.max_request_bytes.");
		return;
	}

	item->attempts++;
	item->tries_on_cur++;
	item->attempt_started = GetCurrentTimestamp();
	http_start(&item->xfer, &item->http_request, remaining, item);
	item->xfer_live = true;
	item->state = LLM_ITEM_SENDING;
	MemoryContextSwitchTo(old);
	if (item->xfer.done)		/* could not even start */
		item_transfer_done(item);
}

/* A hint for provider failures the adapter left without one. */
static const char *
hint_for(int sqlerrcode)
{
	switch (sqlerrcode)
	{
		case ERRCODE_LLM_PROVIDER_RATE_LIMITED:
			return "The provider is rate limiting this key; retry later, or route the alias to more targets.";
		case ERRCODE_LLM_PROVIDER_OVERLOADED:
			return "The provider is overloaded; retry later, or route the alias to more targets.";
		case ERRCODE_LLM_PROVIDER_SERVER_ERROR:
			return "The provider failed; retry later, or route the alias to more targets.";
		case ERRCODE_LLM_PROVIDER_INVALID_REQUEST:
			return "The provider rejected the request itself; check the model name and options (llm.requests keeps the bodies).";
		case ERRCODE_LLM_PROVIDER_QUOTA:
			return "The provider account is out of quota or credit.";
		case ERRCODE_LLM_PROVIDER_MALFORMED:
		case ERRCODE_LLM_PROVIDER_INBAND_ERROR:
			return "The provider's answer was not usable; retry, and see llm.requests.response_body.";
		default:
			return "See llm.requests for the provider's full answer.";
	}
}

/* Fill err for a transfer that got no HTTP answer (item's own, or its embedding batch's). */
void
item_transport_error(LlmWorkItem *item, LlmHttpTransfer *t)
{
	LlmError   *err = &item->error;
	const char *why = t->errbuf[0] ? t->errbuf : curl_easy_strerror(t->result);

	item->ok = false;
	err->fail_class = LLM_FAIL_RETRYABLE;
	if (t->fail_sqlstate != 0)
	{
		/* http.c refused or could not set it up (outbound policy, no fd): unsent */
		item->status = "error";
		err->sqlerrcode = t->fail_sqlstate;
		err->message = psprintf("provider \"%s\": %s", item->target.provider_name, t->fail.message);
		err->detail = t->fail.detail[0] ? pstrdup(t->fail.detail) : NULL;
		err->hint = t->fail.hint[0] ? pstrdup(t->fail.hint) : NULL;
		err->fail_class = t->fail_retryable ? LLM_FAIL_RETRYABLE : LLM_FAIL_FATAL;
	}
	else if (t->too_large)
	{
		item->status = "error";
		err->sqlerrcode = ERRCODE_LLM_RESPONSE_TOO_LARGE;
		err->message = psprintf("provider \"%s\" answered with more than llm.max_response_bytes (%d bytes)",
								item->target.provider_name, llm_max_response_bytes);
		err->hint = pstrdup("Lower max_tokens, or raise llm.max_response_bytes.");
		err->fail_class = LLM_FAIL_FATAL;
	}
	else if (t->result == CURLE_OPERATION_TIMEDOUT)
	{
		item->status = "timeout";
		err->sqlerrcode = ERRCODE_LLM_PROVIDER_TIMEOUT;
		err->message = psprintf("provider \"%s\" did not answer within %d ms",
								item->target.provider_name, item->timeout_ms);
		err->detail = provider_scrub(why, item->target.secret);
		err->hint = pstrdup("Raise the timeout_ms option or llm.request_timeout_ms.");
	}
	else
	{
		item->status = "error";
		err->sqlerrcode = ERRCODE_LLM_PROVIDER_CONNECTION;
		err->message = psprintf("could not reach provider \"%s\"", item->target.provider_name);
		err->detail = provider_scrub(why, item->target.secret);
		err->hint = pstrdup("Check the provider's base_url and that the server can reach it.");
	}
	if (!t->too_large && t->status >= 200 && t->status < 300)
		err->message = psprintf("provider \"%s\" answered HTTP %ld but its answer was cut short",
								item->target.provider_name, t->status);
}

/* Log the attempt just ended, then finish the call or go on with it. */
void
item_settle_attempt(LlmWorkItem *item)
{
	MemoryContext old = MemoryContextSwitchTo(item->cxt);

	log_attempt(item);
	if (item->xfer_live)
	{
		http_release(&item->xfer);
		item->xfer_live = false;
	}
	release_provider_slot(item);
	MemoryContextSwitchTo(old);
	if (item->ok)
		report_health(item, true);
	if (item->ok || !after_failure(item))
		item_finish(item);
}

/* The transfer finished (with or without an HTTP answer). */
void
item_transfer_done(LlmWorkItem *item)
{
	LlmHttpTransfer *t = &item->xfer;
	MemoryContext old = MemoryContextSwitchTo(item->cxt);
	LlmHttpResult res;
	LlmError   *err = &item->error;

	if (t->result != CURLE_OK)
	{
		item_transport_error(item, t);
		/* a 2xx whose body was cut short: the provider did the work */
		if (t->status >= 200 && t->status < 300 && !t->too_large)
		{
			item->http_status = t->status;
			item->unreadable = true;
		}
		MemoryContextSwitchTo(old);
		item_settle_attempt(item);
		return;
	}

	item->http_status = t->status;
	res.status = t->status;
	res.body = t->buf ? t->buf : "";
	res.body_len = t->len;
	res.headers = NIL;
	res.header_lookup = http_response_header;
	res.header_arg = t;
	/* kept in llm.requests: scrubbed like every provider text (a proxy may echo the key) */
	item->response_body = provider_scrub(pnstrdup(res.body, res.body_len), item->target.secret);

	if (t->status >= 200 && t->status < 300)
	{
		item->ok = item->target.provider->parse_response(&item->call, &item->target, &res,
														 &item->answer, err);
		if (item->ok)
			item->status = "ok";
		else
			item->unreadable = (err->sqlerrcode == ERRCODE_LLM_PROVIDER_MALFORMED);
	}
	else
	{
		llm_error_for_status((int) t->status, err);
		item->target.provider->parse_error(&res, err);
		/*
		 * Vertex refused a cached access token (revoked, or expired early):
		 * forget it, and let this target try once more with a fresh one
		 * before the refusal counts against the key.
		 */
		if (t->status == 401 && strcmp(item->target.provider->kind, "vertex") == 0)
		{
			const LlmRouteTarget *rt = &item->cand[item->cur];

			if (vertex_token_forget(item->target.provider_name,
									rt->ncredentials > 0 ? rt->credential_labels[rt->credential_at] : NULL,
									item->target.secret) &&
				item->tries_on_cur == 1)
				err->fail_class = LLM_FAIL_RETRYABLE;
		}
		if (err->retry_after_s < 0)
			err->retry_after_s = provider_parse_retry_after(provider_header(&res, "retry-after"));
		if (err->retry_after_s < 0 && t->status == 429)
			err->retry_after_s = rate_limit_reset_s(&res);
		item->ok = false;
	}

	/* the provider's words, error type included, are scrubbed before use */
	if (err->provider_type)
		err->provider_type = provider_scrub(err->provider_type, item->target.secret);
	if (!item->ok)
	{
		/* name the provider and status; the provider's own words follow */
		const char *said = err->message ? provider_scrub(err->message, item->target.secret) : "no message";

		item->status = "error";
		if (err->sqlerrcode == ERRCODE_LLM_PROVIDER_MALFORMED)
		{
			err->detail = err->detail ? psprintf("%s: %s", said, err->detail) : pstrdup(said);
			err->message = psprintf("provider \"%s\" sent an answer the gateway cannot read",
									item->target.provider_name);
		}
		else if (t->status >= 200 && t->status < 300)
			err->message = psprintf("provider \"%s\" answered HTTP %ld with an error: %s",
									item->target.provider_name, t->status, said);
		else
			err->message = psprintf("provider \"%s\" returned HTTP %ld: %s",
									item->target.provider_name, t->status, said);
		err->detail = psprintf("Upstream model \"%s\"%s%s.%s%s", item->target.upstream_model,
							   err->provider_type ? ", provider error type " : "",
							   err->provider_type ? err->provider_type : "",
							   err->detail ? " " : "",
							   err->detail ? provider_scrub(err->detail, item->target.secret) : "");
		if (err->hint == NULL)
			err->hint = pstrdup(hint_for(err->sqlerrcode));
	}
	MemoryContextSwitchTo(old);
	item_settle_attempt(item);
}

/* The backend gave up: stop the transfer (the provider sees the connection close). */
void
item_cancel(LlmWorkItem *item)
{
	if (item->xfer_live)
	{
		http_release(&item->xfer);
		item->xfer_live = false;
	}

	item_fail(item, "cancelled", ERRCODE_QUERY_CANCELED,
			  "the call was cancelled by its caller", NULL, NULL);
}

void
item_free(LlmWorkItem *item)
{
	if (item->xfer_live)
		http_release(&item->xfer);
	quota_forget(item);
	MemoryContextDelete(item->cxt);
}

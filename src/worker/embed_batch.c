/*-------------------------------------------------------------------------
 *
 * embed_batch.c
 *	  Embedding calls in the worker.  Every embedding attempt is sent in a
 *	  batch: one provider request for the inputs of one or more calls.
 *	  Concurrent single-input calls to the same route target (same
 *	  dimensions and input type) join one open batch, which is sent when
 *	  it is full (the provider's batch limit, or provider option
 *	  embed_batch_size) or llm.embed_batch_wait_ms after its first call
 *	  joined; a call of many inputs (llm_embed(text[])) is a batch of its
 *	  own, sent at once.
 *
 * runs in: worker.
 *
 * Each call keeps its own item, log row, attempts, retries and fallback:
 * the batch only carries the HTTP exchange.  When it ends, every call
 * still in it gets the exchange's outcome as if it had made it alone (its
 * vector and its share of the tokens, or the error) and goes on through
 * item_settle_attempt, so a failed batch is retried or falls over call by
 * call, exactly as single calls would.  A call that leaves (cancelled, or
 * past its deadline) before the batch is sent is taken out of it; after,
 * its place stays empty and its vector is dropped.
 *
 * Tokens.  The provider counts the request's tokens; each call gets a
 * share proportional to its inputs' bytes, rounded down, and the tokens
 * left by rounding go one each to the first calls of the batch, so the
 * shares are deterministic and add up exactly to the provider's count.
 *
 * The batch owns its memory context (the HTTP request, the transfer);
 * members own what is copied to them.  The secret is read from a member's
 * target only while building the request, like any attempt.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "lib/ilist.h"
#include "utils/guc.h"
#include "utils/memutils.h"
#include "utils/timestamp.h"

#include "common/json_util.h"
#include "common/llm_errors.h"
#include "llm_gateway.h"
#include "providers/adapter.h"
#include "providers/adapter_util.h"
#include "worker/embed_batch.h"
#include "worker/http.h"

int			llm_embed_batch_wait_ms = 5;

/*
 * JSON quoting and separators per input, for the bound on a batch's body:
 * coalesced inputs stop joining a batch at half of llm.max_request_bytes
 * (escaping can double a text), so a batch never makes a body the limit
 * refuses while each of its calls alone would pass.
 */
#define EMBED_INPUT_OVERHEAD 4

typedef struct LlmEmbedBatch
{
	dlist_node	node;			/* in open_batches or sent_batches */
	MemoryContext cxt;
	int64		route_id;
	int			dimensions;
	const char *input_type;		/* "query", "document" or NULL */
	bool		joinable;		/* single-input calls may still join */
	int			cap;			/* most inputs */
	int			ninputs;
	int64		input_bytes;	/* the inputs' bytes, kept under llm.max_request_bytes */
	int			nmembers;
	LlmWorkItem **members;		/* [cap]; NULL where a call left after sending */
	int		   *first;			/* [cap]: index of member i's first input, as sent */
	int		   *count;			/* [cap]: its number of inputs */
	int64	   *bytes;			/* [cap]: their bytes, for its share of the tokens */
	TimestampTz send_at;
	TimestampTz deadline;		/* the latest deadline of its calls */
	bool		sent;
	LlmHttpRequest req;
	LlmHttpTransfer xfer;
	bool		xfer_live;
} LlmEmbedBatch;

static dlist_head open_batches = DLIST_STATIC_INIT(open_batches);
static dlist_head sent_batches = DLIST_STATIC_INIT(sent_batches);
static List *settled = NIL;		/* calls whose attempt ended, to be filed */

void
embed_batch_define_gucs(void)
{
	DefineCustomIntVariable("llm.embed_batch_wait_ms",
							"Longest wait for more embedding calls to the same target to send them as one request.",
							"0 sends at once, still batching the calls that arrive in the same worker turn.",
							&llm_embed_batch_wait_ms,
							5, 0, 10000,
							PGC_SIGHUP,
							GUC_UNIT_MS,
							NULL, NULL, NULL);
}

static void
fail_member(LlmWorkItem *item, int sqlerrcode, const char *message, const char *hint)
{
	item_fail(item, "error", sqlerrcode, message, NULL, hint);
}

static void free_batch(LlmEmbedBatch *b);

/* A call whose batch attempt ended, for worker.c to settle and file (this turn or later). */
static void
queue_settled(LlmWorkItem *m)
{
	MemoryContext old = MemoryContextSwitchTo(TopMemoryContext);

	settled = lappend(settled, m);
	MemoryContextSwitchTo(old);
}

/*
 * Coalesced calls must not make an answer llm.max_response_bytes refuses
 * (LL012 would fail every call of the batch, each of which alone would
 * pass): at most this many vectors, at EMBED_BYTES_PER_FLOAT each element
 * (OpenAI pretty-prints one number per line) and, when no size is asked
 * for, EMBED_ASSUMED_DIMENSIONS.  A call of many inputs is the caller's
 * own batch and is not split.
 */
#define EMBED_BYTES_PER_FLOAT 24
#define EMBED_ASSUMED_DIMENSIONS 3072
static int
response_cap(int cap, int dims)
{
	int64		per_vector = (int64) (dims > 0 ? dims : EMBED_ASSUMED_DIMENSIONS) * EMBED_BYTES_PER_FLOAT;

	return (int) Max(1, Min((int64) cap, llm_max_response_bytes / per_vector));
}

/* the dimension to ask for: the call's option, else the target's route option */
static int
wanted_dimensions(LlmWorkItem *item)
{
	int64		d = 0;

	if (item->embed_call.dimensions > 0)
		return item->embed_call.dimensions;
	if (json_get_int64(&item->target.route_options->root, "dimensions", &d) && d > 0 && d <= 65536)
		return (int) d;
	return 0;
}

static bool
same_str(const char *a, const char *b)
{
	return (a == NULL && b == NULL) || (a && b && strcmp(a, b) == 0);
}

static LlmEmbedBatch *
new_batch(LlmWorkItem *item, int dims, int cap, bool joinable)
{
	MemoryContext cxt = AllocSetContextCreate(TopMemoryContext, "llm embedding batch",
											  ALLOCSET_SMALL_SIZES);
	LlmEmbedBatch *b = MemoryContextAllocZero(cxt, sizeof(LlmEmbedBatch));

	b->cxt = cxt;
	b->route_id = item->cand[item->cur].route_id;
	b->dimensions = dims;
	b->input_type = item->embed_call.input_type ?
		MemoryContextStrdup(cxt, item->embed_call.input_type) : NULL;
	b->joinable = joinable;
	b->cap = cap;
	b->members = MemoryContextAllocZero(cxt, sizeof(LlmWorkItem *) * cap);
	b->first = MemoryContextAllocZero(cxt, sizeof(int) * cap);
	b->count = MemoryContextAllocZero(cxt, sizeof(int) * cap);
	b->bytes = MemoryContextAllocZero(cxt, sizeof(int64) * cap);
	b->send_at = TimestampTzPlusMilliseconds(GetCurrentTimestamp(),
											 joinable ? llm_embed_batch_wait_ms : 0);
	dlist_push_tail(&open_batches, &b->node);
	return b;
}

/*
 * An embedding attempt of item on its current target: join an open batch,
 * or open one.  The call is then SENDING until its batch's exchange ends.
 */
void
embed_batch_join(LlmWorkItem *item)
{
	const LlmProvider *p = item->target.provider;
	LlmEmbedBatch *b = NULL;
	dlist_iter	it;
	int			dims;
	int			cap;
	int64		bytes = 0;
	int			k;

	if (item->embed_call.ninputs < 1)
	{
		fail_member(item, ERRCODE_INTERNAL_ERROR, "the embedding request is malformed", NULL);
		return;
	}
	if (p->build_embed_request == NULL || p->parse_embed_response == NULL)
	{
		fail_member(item, ERRCODE_FEATURE_NOT_SUPPORTED,
					psprintf("provider \"%s\" (kind %s) has no embeddings, but alias \"%s\" routes an embedding call to it",
							 item->target.provider_name, p->kind, item->alias),
					"Route embedding aliases to providers of a kind with embeddings (README, \"What each kind supports\").");
		return;
	}
	dims = wanted_dimensions(item);
	cap = embed_batch_limit(&item->target);
	if (item->embed_call.ninputs > cap)
	{
		fail_member(item, ERRCODE_PROGRAM_LIMIT_EXCEEDED,
					psprintf("the call has %d inputs, more than provider \"%s\" takes in one request (%d)",
							 item->embed_call.ninputs, item->target.provider_name, cap),
					"Pass fewer inputs per llm_embed call, or raise provider option embed_batch_size within the kind's limit.");
		return;
	}

	for (k = 0; k < item->embed_call.ninputs; k++)
		bytes += strlen(item->embed_call.inputs[k]) + EMBED_INPUT_OVERHEAD;
	if (item->embed_call.ninputs == 1)
	{
		dlist_foreach(it, &open_batches)
		{
			LlmEmbedBatch *o = dlist_container(LlmEmbedBatch, node, it.cur);

			if (o->joinable && o->route_id == item->cand[item->cur].route_id &&
				o->dimensions == dims && same_str(o->input_type, item->embed_call.input_type) &&
				o->ninputs < o->cap && o->input_bytes + bytes <= llm_max_request_bytes / 2)
			{
				b = o;
				break;
			}
		}
	}
	if (b == NULL)
		b = new_batch(item, dims, item->embed_call.ninputs == 1 ? response_cap(cap, dims) :
					  item->embed_call.ninputs, item->embed_call.ninputs == 1);
	b->members[b->nmembers++] = item;
	b->ninputs += item->embed_call.ninputs;
	b->input_bytes += bytes;
	b->deadline = Max(b->deadline, item->deadline);
	if (b->ninputs >= b->cap)
		b->send_at = 0;			/* full: send in this turn */

	item->batch = b;
	item->attempts++;
	item->tries_on_cur++;
	item->attempt_started = GetCurrentTimestamp();
	item->state = LLM_ITEM_SENDING;
}

/* The call is finished (or goes on without this attempt): leave its batch. */
void
embed_batch_leave(LlmWorkItem *item)
{
	LlmEmbedBatch *b = item->batch;
	int			i;

	item->batch = NULL;
	if (b == NULL)
		return;
	for (i = 0; i < b->nmembers; i++)
		if (b->members[i] == item)
			break;
	if (i == b->nmembers)
		return;
	if (b->sent)
	{
		b->members[i] = NULL;	/* the request is out: its place stays */
		return;
	}
	b->ninputs -= item->embed_call.ninputs;
	for (int k = 0; k < item->embed_call.ninputs; k++)
		b->input_bytes -= strlen(item->embed_call.inputs[k]) + EMBED_INPUT_OVERHEAD;
	memmove(&b->members[i], &b->members[i + 1], sizeof(LlmWorkItem *) * (b->nmembers - i - 1));
	b->nmembers--;
	if (b->nmembers == 0)
	{
		dlist_delete(&b->node);
		MemoryContextDelete(b->cxt);
	}
}

static LlmWorkItem *
first_member(LlmEmbedBatch *b)
{
	int			i;

	for (i = 0; i < b->nmembers; i++)
		if (b->members[i] != NULL)
			return b->members[i];
	return NULL;
}

static void
free_batch(LlmEmbedBatch *b)
{
	int			i;

	for (i = 0; i < b->nmembers; i++)
		if (b->members[i] != NULL)
			b->members[i]->batch = NULL;
	if (b->xfer_live)
		http_release(&b->xfer);	/* wipes the header lines, the key's among them */
	else
	{
		ListCell   *lc;

		foreach(lc, b->req.headers)
			explicit_bzero(lfirst(lc), strlen(lfirst(lc)));
	}
	dlist_delete(&b->node);
	MemoryContextDelete(b->cxt);
}

/* strings of an error, copied into a member's context */
static void
copy_error(LlmWorkItem *m, const LlmError *err)
{
	MemoryContext old = MemoryContextSwitchTo(m->cxt);

	m->error = *err;
	m->error.message = err->message ? pstrdup(err->message) : NULL;
	m->error.detail = err->detail ? pstrdup(err->detail) : NULL;
	m->error.hint = err->hint ? pstrdup(err->hint) : NULL;
	m->error.provider_type = err->provider_type ? pstrdup(err->provider_type) : NULL;
	MemoryContextSwitchTo(old);
}

/*
 * The batch's exchange ended (with or without an HTTP answer): give every
 * call still in it its part of the outcome, and queue it to be settled.
 */
static void
batch_done(LlmEmbedBatch *b)
{
	LlmWorkItem *lead = first_member(b);
	LlmHttpTransfer *t = &b->xfer;
	MemoryContext old;
	LlmEmbedCall call;
	LlmEmbedAnswer answer;
	LlmHttpResult res;
	LlmError	err;
	bool		ok = false;
	char	   *body = NULL;
	int			i,
				k;
	int64		total_bytes = 0;
	int64		given = 0;
	int64	   *share;

	if (lead == NULL)
	{
		free_batch(b);
		return;
	}
	old = MemoryContextSwitchTo(b->cxt);
	memset(&err, 0, sizeof(err));
	err.retry_after_s = -1;
	memset(&answer, 0, sizeof(answer));

	/* the call as sent (the inputs themselves are not needed to read the answer) */
	memset(&call, 0, sizeof(call));
	call.ninputs = b->ninputs;
	call.inputs = palloc(sizeof(char *) * b->ninputs);
	for (i = 0; i < call.ninputs; i++)
		call.inputs[i] = "";
	call.dimensions = b->dimensions;
	call.input_type = b->input_type;

	if (t->result == CURLE_OK)
	{
		res.status = t->status;
		res.body = t->buf ? t->buf : "";
		res.body_len = t->len;
		res.headers = NIL;
		res.header_lookup = http_response_header;
		res.header_arg = t;
		body = provider_scrub(pnstrdup(res.body, res.body_len), lead->target.secret);
		if (t->status >= 200 && t->status < 300)
			ok = lead->target.provider->parse_embed_response(&call, &lead->target, &res, &answer, &err);
		else
		{
			llm_error_for_status((int) t->status, &err);
			lead->target.provider->parse_error(&res, &err);
			if (err.retry_after_s < 0)
				err.retry_after_s = provider_parse_retry_after(provider_header(&res, "retry-after"));
		}
	}

	/*
	 * Shares of the tokens by input bytes over every call sent (one that
	 * left keeps its share unlogged); the rounding remainder one each to
	 * the first calls still here, so the logged shares are deterministic.
	 */
	share = palloc0(sizeof(int64) * b->nmembers);
	for (i = 0; i < b->nmembers; i++)
		total_bytes += b->bytes[i];
	/* no count in the answer (Gemini): llm.estimate's rule, a token per 4 bytes sent */
	if (ok && answer.input_tokens == LLM_EMBED_TOKENS_UNKNOWN)
		answer.input_tokens = (total_bytes + 3) / 4;
	for (i = 0; ok && i < b->nmembers; i++)
	{
		share[i] = total_bytes > 0 ?
			(int64) ((double) answer.input_tokens * b->bytes[i] / total_bytes) : 0;
		given += share[i];
	}
	for (i = 0; ok && given < answer.input_tokens && i < b->nmembers; i++)
		if (b->members[i] != NULL)
		{
			share[i]++;
			given++;
		}
	MemoryContextSwitchTo(old);

	for (i = 0; i < b->nmembers; i++)
	{
		LlmWorkItem *m = b->members[i];
		int			n = b->count[i];

		if (m == NULL)
			continue;
		m->batch = NULL;
		if (t->result != CURLE_OK)
			item_transport_error(m, t);
		else if (ok)
		{
			MemoryContext mo = MemoryContextSwitchTo(m->cxt);

			m->http_status = t->status;
			m->ok = true;
			m->status = "ok";
			m->embed_answer.nvectors = n;
			m->embed_answer.dimension = answer.dimension;
			m->embed_answer.vectors = palloc(sizeof(float4 *) * n);
			for (k = 0; k < n; k++)
			{
				m->embed_answer.vectors[k] = palloc(sizeof(float4) * answer.dimension);
				memcpy(m->embed_answer.vectors[k], answer.vectors[b->first[i] + k],
					   sizeof(float4) * answer.dimension);
			}
			m->embed_answer.input_tokens = share[i];
			m->embed_answer.model = answer.model ? pstrdup(answer.model) : NULL;
			m->answer.input_tokens = share[i];
			m->answer.model = m->embed_answer.model;
			MemoryContextSwitchTo(mo);
		}
		else
		{
			MemoryContext mo;

			copy_error(m, &err);
			mo = MemoryContextSwitchTo(m->cxt);
			m->http_status = t->status;
			m->ok = false;
			m->status = "error";
			m->unreadable = (err.sqlerrcode == ERRCODE_LLM_PROVIDER_MALFORMED);
			m->response_body = body ? pstrdup(body) : NULL;
			m->error.message = psprintf("provider \"%s\" %s: %s", m->target.provider_name,
										t->status >= 200 && t->status < 300 ?
										psprintf("answered HTTP %ld with an answer the gateway cannot use", t->status) :
										psprintf("returned HTTP %ld", t->status),
										err.message ? err.message : "no message");
			m->error.detail = psprintf("Upstream model \"%s\"%s%s.%s%s", m->target.upstream_model,
									   err.provider_type ? ", provider error type " : "",
									   err.provider_type ? err.provider_type : "",
									   err.detail ? " " : "", err.detail ? err.detail : "");
			if (m->error.hint == NULL)
				m->error.hint = pstrdup("See llm.requests for the provider's full answer.");
			MemoryContextSwitchTo(mo);
		}
		queue_settled(m);
	}
	free_batch(b);
}

/* A body over llm.max_request_bytes (inputs that escape heavily): err filled, true. */
static bool
body_too_large(LlmEmbedBatch *b, LlmError *err)
{
	if (b->req.body.len <= llm_max_request_bytes)
		return false;
	provider_fail(err, ERRCODE_PROGRAM_LIMIT_EXCEEDED, LLM_FAIL_FATAL,
				  "the embedding request body is %d bytes, more than llm.max_request_bytes (%d)",
				  b->req.body.len, llm_max_request_bytes);
	err->hint = pstrdup("Send shorter inputs, or raise llm.max_request_bytes.");
	return true;
}

/* Send the batches that are full or have waited long enough. */
long
embed_batch_send_due(void)
{
	dlist_mutable_iter it;
	TimestampTz now = GetCurrentTimestamp();
	long		next = -1;

	dlist_foreach_modify(it, &open_batches)
	{
		LlmEmbedBatch *b = dlist_container(LlmEmbedBatch, node, it.cur);
		LlmWorkItem *lead = first_member(b);
		LlmEmbedCall call;
		LlmError	err;
		MemoryContext old;
		long		remaining;
		int			i,
					k,
					n = 0;

		if (b->send_at > now)
		{
			long		ms = Max(TimestampDifferenceMilliseconds(now, b->send_at), 1);

			next = next < 0 ? ms : Min(next, ms);
			continue;
		}
		dlist_delete(&b->node);
		dlist_push_tail(&sent_batches, &b->node);
		b->sent = true;
		remaining = TimestampDifferenceMilliseconds(now, b->deadline);

		old = MemoryContextSwitchTo(b->cxt);
		memset(&call, 0, sizeof(call));
		call.ninputs = b->ninputs;
		call.inputs = palloc(sizeof(char *) * b->ninputs);
		call.dimensions = b->dimensions;
		call.input_type = b->input_type;
		call.request_id = lead->request_id;
		for (i = 0; i < b->nmembers; i++)
		{
			LlmEmbedCall *mc = &b->members[i]->embed_call;

			b->first[i] = n;
			b->count[i] = mc->ninputs;
			b->bytes[i] = 0;
			for (k = 0; k < mc->ninputs; k++)
			{
				b->bytes[i] += strlen(mc->inputs[k]);
				call.inputs[n++] = mc->inputs[k];
			}
		}
		memset(&err, 0, sizeof(err));
		if (remaining <= 0 ||
			!lead->target.provider->build_embed_request(&call, &lead->target, &b->req, &err) ||
			body_too_large(b, &err))
		{
			MemoryContextSwitchTo(old);
			for (i = 0; i < b->nmembers; i++)
			{
				LlmWorkItem *m = b->members[i];

				m->batch = NULL;
				if (remaining <= 0)
				{
					item_fail(m, "timeout", ERRCODE_LLM_PROVIDER_TIMEOUT,
							  "the call timed out before it could be sent", NULL,
							  "Raise the timeout_ms option or llm.request_timeout_ms.");
				}
				else
				{
					copy_error(m, &err);
					m->ok = false;
					m->status = "error";
					m->error.fail_class = LLM_FAIL_FATAL;
				}
				queue_settled(m);
			}
			b->nmembers = 0;
			free_batch(b);
			continue;
		}
		http_start(&b->xfer, &b->req, remaining, b);
		b->xfer_live = true;
		MemoryContextSwitchTo(old);
		if (b->xfer.done)
			batch_done(b);
	}
	return next;
}

/* A finished transfer: true (and its calls settled) if it is a batch's. */
bool
embed_batch_transfer_done(LlmHttpTransfer *t)
{
	dlist_iter	it;

	dlist_foreach(it, &sent_batches)
	{
		LlmEmbedBatch *b = dlist_container(LlmEmbedBatch, node, it.cur);

		if (&b->xfer == t)
		{
			batch_done(b);
			return true;
		}
	}
	return false;
}

/* The next call whose batch attempt ended, to settle and file; NULL when none. */
LlmWorkItem *
embed_batch_next_settled(void)
{
	LlmWorkItem *item;

	if (settled == NIL)
		return NULL;
	item = linitial(settled);
	settled = list_delete_first(settled);
	return item;
}

/* {"type": "embedding", "embeddings", "model", "usage", "gateway"} */
void
embed_answer_payload(StringInfo buf, LlmWorkItem *item)
{
	LlmEmbedAnswer *a = &item->embed_answer;

	appendStringInfoString(buf, "{\"type\":\"embedding\",\"model\":");
	json_append_string(buf, a->model ? a->model : item->target.upstream_model);
	appendStringInfo(buf, ",\"dimension\":%d,\"embeddings\":", a->dimension);
	embed_append_vectors(buf, a);
	appendStringInfo(buf, ",\"usage\":{\"input_tokens\":" INT64_FORMAT ",\"output_tokens\":0}",
					 a->input_tokens);
	appendStringInfo(buf, ",\"gateway\":{\"request_id\":" INT64_FORMAT ",\"provider\":", item->request_id);
	json_append_string(buf, item->target.provider_name);
	appendStringInfo(buf, ",\"attempts\":%d,\"latency_ms\":%.3f,\"cost_usd\":%s}}",
					 item->attempts, item->latency_ms, item->cost_usd ? item->cost_usd : "null");
}

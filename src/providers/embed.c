/*-------------------------------------------------------------------------
 *
 * embed.c
 *	  What every embeddings adapter shares: reading the canonical embedding
 *	  request, the batch limit, and the checks on an answer.
 *
 * runs in: worker, backends (diagnostic functions) and the fuzz harness.
 * Pure like the adapters (providers/adapter.h): no ERROR on any input.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <math.h>

#include "common/json_util.h"
#include "common/shortest_dec.h"
#include "common/llm_errors.h"
#include "providers/adapter.h"
#include "providers/adapter_util.h"
#include "utils/builtins.h"

/*
 * Read {"embed": {"input": [...], "dimensions": n, "input_type": t}} into
 * *call (inputs point into palloc'd copies).  False when the request is not
 * an embedding request, or is malformed (the backend builds it, so only a
 * bug gets here; the worker then fails the call).
 */
bool
embed_call_from_request(Jsonb *request, LlmEmbedCall *call)
{
	JsonbContainer *e;
	JsonbContainer *in;
	int64		dims = 0;
	int			i;

	memset(call, 0, sizeof(*call));
	if (request == NULL || !JB_ROOT_IS_OBJECT(request))
		return false;
	e = json_get_object(&request->root, "embed");
	if (e == NULL)
		return false;
	in = json_get_array(e, "input");
	if (in == NULL || json_array_size(in) < 1)
		return false;
	call->ninputs = json_array_size(in);
	call->inputs = palloc(sizeof(char *) * call->ninputs);
	for (i = 0; i < call->ninputs; i++)
	{
		call->inputs[i] = json_value_cstring(json_array_elem(in, i));
		if (call->inputs[i] == NULL)
			return false;
	}
	if (json_get(e, "dimensions") != NULL &&
		(!json_get_int64(e, "dimensions", &dims) || dims < 1 || dims > 65536))
		return false;
	call->dimensions = (int) dims;
	call->input_type = json_get_cstring(e, "input_type");
	return true;
}

/*
 * Most inputs one request of this target may carry: the provider option
 * embed_batch_size when set (within 1 and the kind's limit), else the
 * kind's own limit (the model's, for a kind whose limit depends on it).
 */
int
embed_batch_limit(const LlmTarget *target)
{
	const LlmProvider *p = target->provider;
	int			limit = Max(p->embed_batch_max_for != NULL
							? p->embed_batch_max_for(target) : p->embed_batch_max, 1);
	int64		opt;

	if (target->provider_options != NULL &&
		json_get_int64(&target->provider_options->root, "embed_batch_size", &opt) &&
		opt >= 1 && opt < limit)
		limit = (int) opt;
	return limit;
}

/*
 * An answer must hold one vector per input, all of one non-zero dimension
 * (adapters check the count; this checks them all the same way), and, when
 * the call asked for a size, of that size.  A wrong size is LL016, fatal:
 * asking the same target again would give the same vector.
 */
bool
embed_answer_check(const LlmEmbedCall *call, const LlmEmbedAnswer *answer,
				   const LlmHttpResult *res, const char *secret, LlmError *err)
{
	if (answer->nvectors != call->ninputs || answer->vectors == NULL)
		return provider_malformed(err, res,
								  psprintf("%d embeddings for %d inputs", answer->nvectors, call->ninputs),
								  secret);
	if (answer->dimension < 1)
		return provider_malformed(err, res, "an empty embedding", secret);
	if (call->dimensions > 0 && answer->dimension != call->dimensions)
	{
		provider_fail(err, ERRCODE_LLM_EMBED_DIMENSION, LLM_FAIL_FATAL,
					  "the provider returned embeddings of dimension %d, not the %d asked for",
					  answer->dimension, call->dimensions);
		err->hint = pstrdup("Check the route target's \"dimensions\" option and that its model supports that size.");
		return false;
	}
	return true;
}

/*
 * "embeddings": [[...], ...] in input order, each element the shortest
 * text that reads back as the same float4 (so SQL gets the exact vector).
 */
void
embed_append_vectors(StringInfo buf, const LlmEmbedAnswer *answer)
{
	char		num[FLOAT_SHORTEST_DECIMAL_LEN];
	int			i;
	int			j;

	appendStringInfoChar(buf, '[');
	for (i = 0; i < answer->nvectors; i++)
	{
		if (i > 0)
			appendStringInfoChar(buf, ',');
		appendStringInfoChar(buf, '[');
		for (j = 0; j < answer->dimension; j++)
		{
			int			len = float_to_shortest_decimal_buf(answer->vectors[i][j], num);

			if (j > 0)
				appendStringInfoChar(buf, ',');
			appendBinaryStringInfo(buf, num, len);
		}
		appendStringInfoChar(buf, ']');
	}
	appendStringInfoChar(buf, ']');
}

/*
 * One JSON array of numbers into a float4 vector of *dim (set by the first
 * vector of an answer when 0).  False + *why for an empty array, a size
 * other than *dim, a non-number or a value outside real's range.
 */
bool
embed_read_vector(JsonbContainer *arr, int *dim, float4 **vec, char **why)
{
	int			n = json_array_size(arr);
	int			i;

	if (arr == NULL || n < 1)
	{
		*why = "an empty embedding";
		return false;
	}
	if (*dim == 0)
		*dim = n;
	else if (n != *dim)
	{
		*why = psprintf("embeddings of dimensions %d and %d in one answer", *dim, n);
		return false;
	}
	*vec = palloc(sizeof(float4) * n);
	for (i = 0; i < n; i++)
	{
		JsonbValue *v = json_array_elem(arr, i);
		double		d;

		if (v == NULL || v->type != jbvNumeric)
		{
			*why = "an embedding element is not a number";
			return false;
		}
		d = DatumGetFloat8(DirectFunctionCall1(numeric_float8_no_overflow,
											   NumericGetDatum(v->val.numeric)));
		if (isnan(d) || fabs(d) > 3.0e38)
		{
			*why = "an embedding element is out of range for real";
			return false;
		}
		(*vec)[i] = (float4) d;
	}
	return true;
}

/*
 * The start of every embeddings parser: the answer's body as a JSON
 * object (false and LL006 when it is not one), out cleared.
 */
bool
embed_answer_object(const LlmHttpResult *res, const LlmTarget *target, LlmEmbedAnswer *out,
					JsonbContainer **root, LlmError *err)
{
	char	   *why = NULL;
	Jsonb	   *body;

	memset(out, 0, sizeof(*out));
	body = provider_parse_body(res, &why);
	if (body == NULL)
		return provider_malformed(err, res, why, target->secret);
	if (!JsonContainerIsObject(&body->root))
		return provider_malformed(err, res, "the answer is not a JSON object", target->secret);
	*root = &body->root;
	return true;
}

/*
 * list (the answer's member key, NULL when absent) must hold one element
 * per input: then out->nvectors is set and out->vectors allocated for the
 * parser to fill; else false and LL006.
 */
bool
embed_answer_vectors(const LlmEmbedCall *call, JsonbContainer *list, const char *key,
					 const LlmHttpResult *res, const LlmTarget *target, LlmEmbedAnswer *out,
					 LlmError *err)
{
	int			n;

	if (list == NULL)
		return provider_malformed(err, res, psprintf("no \"%s\" array", key), target->secret);
	n = json_array_size(list);
	if (n != call->ninputs)
		return provider_malformed(err, res,
								  psprintf("%d elements in \"%s\" for %d inputs", n, key, call->ninputs),
								  target->secret);
	out->nvectors = n;
	out->vectors = palloc0(sizeof(float4 *) * n);
	return true;
}

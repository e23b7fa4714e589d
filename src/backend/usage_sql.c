/*-------------------------------------------------------------------------
 *
 * usage_sql.c
 *	  SQL functions of the usage rollup: merging latency histograms and
 *	  error-class counts.
 *
 * runs in: backends and the worker (the rollup's upsert calls it once per
 * group and batch, so it is C: a SQL function with a subquery costs an
 * executor start per call).
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "catalog/pg_type.h"
#include "common/int.h"
#include "fmgr.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/jsonb.h"
#include "utils/lsyscache.h"
#include "utils/numeric.h"

/* the elements of a one-dimensional int8[] without NULLs (NULL: none) */
static int64 *
hist_values(FunctionCallInfo fcinfo, int argno, int *n)
{
	ArrayType  *a;
	Datum	   *elems;
	bool	   *nulls;
	int64	   *v;
	int			i;

	*n = 0;
	if (PG_ARGISNULL(argno))
		return NULL;
	a = PG_GETARG_ARRAYTYPE_P(argno);
	if (ARR_ELEMTYPE(a) != INT8OID || ARR_NDIM(a) > 1)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("a latency histogram is a one-dimensional bigint[]")));
	deconstruct_array(a, INT8OID, 8, FLOAT8PASSBYVAL, TYPALIGN_DOUBLE, &elems, &nulls, n);
	v = palloc(sizeof(int64) * Max(*n, 1));
	for (i = 0; i < *n; i++)
		v[i] = nulls[i] ? 0 : DatumGetInt64(elems[i]);
	return v;
}

/*
 * llm._usage_hist_add(a bigint[], b bigint[]) RETURNS bigint[]: the
 * element-wise sum, as long as the longer one (a NULL is empty).
 */
PG_FUNCTION_INFO_V1(llm_usage_hist_add);
Datum
llm_usage_hist_add(PG_FUNCTION_ARGS)
{
	int			na;
	int			nb;
	int64	   *a = hist_values(fcinfo, 0, &na);
	int64	   *b = hist_values(fcinfo, 1, &nb);
	int			n = Max(na, nb);
	Datum	   *out;
	int			i;

	if (n == 0)
		PG_RETURN_ARRAYTYPE_P(construct_empty_array(INT8OID));
	out = palloc(sizeof(Datum) * n);
	for (i = 0; i < n; i++)
	{
		int64		sum;

		if (pg_add_s64_overflow(i < na ? a[i] : 0, i < nb ? b[i] : 0, &sum))
			ereport(ERROR,
					(errcode(ERRCODE_NUMERIC_VALUE_OUT_OF_RANGE),
					 errmsg("latency histogram count out of range")));
		out[i] = Int64GetDatum(sum);
	}
	PG_RETURN_ARRAYTYPE_P(construct_array(out, n, INT8OID, 8, FLOAT8PASSBYVAL, TYPALIGN_DOUBLE));
}

/* one {key: count} object's pairs, appended to keys/counts (summing equal keys) */
static void
counts_collect(Jsonb *j, char ***keys, int64 **counts, int *n, int *size)
{
	JsonbIterator *it;
	JsonbValue	v;
	JsonbIteratorToken tok;
	char	   *key = NULL;

	if (!JB_ROOT_IS_OBJECT(j))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("error classes are a JSON object of counts")));
	it = JsonbIteratorInit(&j->root);
	while ((tok = JsonbIteratorNext(&it, &v, true)) != WJB_DONE)
	{
		int64		c;
		int			i;

		if (tok == WJB_KEY)
		{
			key = pnstrdup(v.val.string.val, v.val.string.len);
			continue;
		}
		if (tok != WJB_VALUE)
			continue;
		if (v.type != jbvNumeric)
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("error class \"%s\" has no count", key)));
		c = DatumGetInt64(DirectFunctionCall1(numeric_int8, NumericGetDatum(v.val.numeric)));
		for (i = 0; i < *n; i++)
			if (strcmp((*keys)[i], key) == 0)
				break;
		if (i == *n)
		{
			if (*n == *size)
			{
				*size *= 2;
				*keys = repalloc(*keys, sizeof(char *) * *size);
				*counts = repalloc(*counts, sizeof(int64) * *size);
			}
			(*keys)[i] = key;
			(*counts)[i] = 0;
			(*n)++;
		}
		if (pg_add_s64_overflow((*counts)[i], c, &(*counts)[i]))
			ereport(ERROR,
					(errcode(ERRCODE_NUMERIC_VALUE_OUT_OF_RANGE),
					 errmsg("error class count out of range")));
	}
}

/*
 * llm._usage_counts_add(a jsonb, b jsonb) RETURNS jsonb: the sum of two
 * {key: count} objects (a NULL is empty); keys whose sum is 0 are dropped.
 */
PG_FUNCTION_INFO_V1(llm_usage_counts_add);
Datum
llm_usage_counts_add(PG_FUNCTION_ARGS)
{
	int			size = 8;
	int			n = 0;
	char	  **keys = palloc(sizeof(char *) * size);
	int64	   *counts = palloc(sizeof(int64) * size);
	JsonbParseState *state = NULL;
	JsonbValue *res;
	int			i;

	if (!PG_ARGISNULL(0))
		counts_collect(PG_GETARG_JSONB_P(0), &keys, &counts, &n, &size);
	if (!PG_ARGISNULL(1))
		counts_collect(PG_GETARG_JSONB_P(1), &keys, &counts, &n, &size);
	(void) pushJsonbValue(&state, WJB_BEGIN_OBJECT, NULL);
	for (i = 0; i < n; i++)
	{
		JsonbValue	k;
		JsonbValue	v;

		if (counts[i] == 0)
			continue;
		k.type = jbvString;
		k.val.string.val = keys[i];
		k.val.string.len = strlen(keys[i]);
		v.type = jbvNumeric;
		v.val.numeric = DatumGetNumeric(DirectFunctionCall1(int8_numeric, Int64GetDatum(counts[i])));
		(void) pushJsonbValue(&state, WJB_KEY, &k);
		(void) pushJsonbValue(&state, WJB_VALUE, &v);
	}
	res = pushJsonbValue(&state, WJB_END_OBJECT, NULL);
	PG_RETURN_JSONB_P(JsonbValueToJsonb(res));
}

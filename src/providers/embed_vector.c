/*-------------------------------------------------------------------------
 *
 * embed_vector.c
 *	  One embedding vector read from a provider's JSON array of numbers,
 *	  for the embeddings parsers of the gemini and ollama kinds.
 *
 * runs in: worker, backends (diagnostic functions), fuzz harness.  Pure
 * (providers/adapter.h): no ERROR on any input.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <math.h>

#include "common/json_util.h"
#include "providers/embed_kinds.h"
#include "utils/builtins.h"

/*
 * arr into a palloc'd float4 vector.  *dim is the answer's dimension: 0 on
 * the first vector (which sets it), and every later vector must match.
 * False with *why for an empty or ragged vector, a non-number, or a value
 * out of range for real (numeric_float8_no_overflow never raises).
 */
bool
embed_read_vector(JsonbContainer *arr, int *dim, float4 **vec, char **why)
{
	int			n = json_array_size(arr);

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
	for (int i = 0; i < n; i++)
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

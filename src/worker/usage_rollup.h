/*-------------------------------------------------------------------------
 *
 * usage_rollup.h
 *	  The usage rollup (llm.usage_hourly), aggregated per batch of
 *	  llm.requests completions and upserted in the batch's transaction.
 *
 * runs in: worker, inside the transactions of request_log.c.
 *
 *-------------------------------------------------------------------------
 */
#ifndef LLM_USAGE_ROLLUP_H
#define LLM_USAGE_ROLLUP_H

#include "datatype/timestamp.h"
#include "executor/tuptable.h"

/* The figures of one row of llm.requests that left 'pending'. */
typedef struct UsageRow
{
	TimestampTz created_at;
	const char *role_name;
	const char *alias;
	const char *provider;		/* NULL: no target */
	const char *upstream_model; /* NULL: no target */
	const char *status;
	const char *error_code;		/* NULL: none */
	int64		input_tokens;	/* NULLs as 0 */
	int64		output_tokens;
	int64		cache_read_tokens;
	int64		cache_write_tokens;
	Datum		cost_usd;		/* numeric */
	bool		has_cost;
	double		latency_ms;
	bool		has_latency;
} UsageRow;

/* Where a log row's figures are in llm.requests' tuples (log_writer.c's column map). */
typedef struct UsageColumns
{
	AttrNumber	status;
	AttrNumber	created_at;
	AttrNumber	role_name;
	AttrNumber	alias;
	AttrNumber	provider;
	AttrNumber	upstream_model;
	AttrNumber	error_code;
	AttrNumber	input_tokens;
	AttrNumber	output_tokens;
	AttrNumber	cache_read_tokens;
	AttrNumber	cache_write_tokens;
	AttrNumber	cost_usd;
	AttrNumber	latency_ms;
} UsageColumns;

typedef struct UsageRollup UsageRollup;

/* Latency histogram: 4 buckets per doubling of ms, see the install script. */
#define USAGE_HIST_BUCKETS	90
extern int	usage_hist_bucket(double latency_ms);

/* an empty rollup in CurrentMemoryContext, for one batch */
extern UsageRollup *usage_rollup_create(void);
/* count a row that just left 'pending' */
extern void usage_rollup_add(UsageRollup *u, const UsageRow *row);
/* the same, from a row of llm.requests just moved out of 'pending' */
extern void usage_rollup_add_slot(UsageRollup *u, TupleTableSlot *slot, const UsageColumns *c);
/* upsert every group into llm.usage_hourly (if it exists); in a transaction */
extern void usage_rollup_flush(UsageRollup *u);

#endif							/* LLM_USAGE_ROLLUP_H */

/*-------------------------------------------------------------------------
 *
 * estimate.h
 *	  What estimate.c (llm.estimate: the call sites of a plan and their
 *	  cost) shares with estimate_exact.c (counting their rows by running the
 *	  plan without calls).
 *
 * runs in: backends.
 *
 *-------------------------------------------------------------------------
 */
#ifndef LLM_ESTIMATE_H
#define LLM_ESTIMATE_H

#include "nodes/plannodes.h"
#include "nodes/primnodes.h"

#include "backend/pipeline.h"

/* one call site found in a plan */
typedef struct CallSite
{
	FuncExpr   *call;
	Plan	   *node;			/* evaluates it (for estimates and widths) */
	int			count_node_id;	/* the node whose rows count in exact mode */
	bool		in_qual;		/* evaluated per row read, not per row returned */
	bool		per_loop;		/* evaluated once per run of the node (VALUES) */
	double		calls;
	PlannedStmt *stmt;
} CallSite;

static inline bool
estimate_is_pipeline(Plan *plan)
{
	return IsA(plan, CustomScan) &&
		((CustomScan *) plan)->methods == &llm_pipeline_scan_methods;
}

/* estimate_exact.c: set each of sites' calls (those of orig) to the rows counted */
extern void estimate_count_exactly(PlannedStmt *orig, const char *query, List *sites);

#endif							/* LLM_ESTIMATE_H */

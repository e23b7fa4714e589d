/*-------------------------------------------------------------------------
 *
 * pipeline.h
 *	  The LLM Pipeline: a plan node that runs the provider calls of many rows
 *	  of one statement at once.
 *
 * runs in: backends.  pipeline_plan.c (the planner hook) puts a CustomScan
 * between a plan node whose target list calls a provider and that node's
 * parent; pipeline_exec.c runs it.  What they share is the shape of the
 * CustomScan:
 *
 *	 lefttree			the wrapped node, its target list rewritten to
 *						return, in order: every original column (a
 *						column that held a call now holds a NULL of its
 *						type), the values the calls' columns need besides
 *						the calls, and then each call's arguments (but
 *						constants)
 *	 custom_scan_tlist	the node's scan tuple: Var(OUTER_VAR, i) for each
 *						of the child's columns, then one entry per call:
 *						the call itself with each argument a Const or
 *						Var(OUTER_VAR, position), so the executor reads the
 *						function and arguments from here and EXPLAIN
 *						VERBOSE shows the call as written
 *	 targetlist			the original target list, every column of the
 *						child and every call replaced by Var(INDEX_VAR, i)
 *						on the scan tuple: so the parent sees the same
 *						columns at the same positions as before
 *	 custom_private		list of one int8 Const: the rows the parent needs
 *						(a constant LIMIT + OFFSET above, through subquery
 *						scans and Results without a filter), -1 when
 *						unknown
 *
 *-------------------------------------------------------------------------
 */
#ifndef LLM_PIPELINE_H
#define LLM_PIPELINE_H

#include "nodes/extensible.h"
#include "nodes/plannodes.h"

#include "backend/sql_api.h"

#define LLM_PIPELINE_NAME "LLM Pipeline"

/* llm.statement_concurrency: calls one statement keeps in flight */
extern int	llm_statement_concurrency;

extern const CustomScanMethods llm_pipeline_scan_methods;

/* pipeline_plan.c */
extern void pipeline_init(void);
extern const LlmCallKind *pipeline_call_kind(Oid funcid);

typedef void (*pipeline_child_fn) (Plan **child, Plan *parent, bool inner_of_merge, void *arg);
extern void pipeline_for_each_child(Plan *plan, pipeline_child_fn fn, void *arg);
extern int64 pipeline_child_bound(Plan *parent, int64 parent_bound);

#endif							/* LLM_PIPELINE_H */

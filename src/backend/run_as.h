/*-------------------------------------------------------------------------
 *
 * run_as.h
 *	  Running a backend's own SQL as another role, or as the caller, with
 *	  a search_path nobody else chooses.
 *
 * runs in: backend.  The C functions that write tables their callers may
 * only read (credentials, conversation turns) check the caller first and
 * then run their statements between run_as_begin and run_as_end.
 *
 *-------------------------------------------------------------------------
 */
#ifndef LLM_RUN_AS_H
#define LLM_RUN_AS_H

typedef struct LlmRunAs
{
	Oid			save_userid;
	int			save_sec;
	int			guc_nest;
} LlmRunAs;

/*
 * role: InvalidOid stays the caller (only the search_path is pinned), else
 * a security-restricted operation as role.  An ERROR before run_as_end is
 * undone by the (sub)transaction's abort, as for SECURITY DEFINER.
 */
extern void run_as_begin(Oid role, LlmRunAs *ra);
extern void run_as_end(LlmRunAs *ra);

/* the role the gateway writes as: llm_gateway_worker */
extern Oid	run_as_gateway_role(void);

#endif							/* LLM_RUN_AS_H */

/*-------------------------------------------------------------------------
 *
 * run_as.c
 *	  A backend's own SQL as another role, or as the caller, with
 *	  search_path pinned to pg_catalog, pg_temp.
 *
 * runs in: backend.
 *
 * Pinning matters even as the caller: a caller's search_path could
 * redirect an operator of a query whose answer decides what is then
 * written with more rights (may this role continue that conversation?).
 * The setting lives in its own GUC nest level, so it ends with the
 * statement whatever the caller's session says.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "miscadmin.h"
#include "utils/acl.h"
#include "utils/guc.h"

#include "backend/run_as.h"

void
run_as_begin(Oid role, LlmRunAs *ra)
{
	GetUserIdAndSecContext(&ra->save_userid, &ra->save_sec);
	ra->guc_nest = NewGUCNestLevel();
	(void) set_config_option("search_path", "pg_catalog, pg_temp", PGC_USERSET, PGC_S_SESSION,
							 GUC_ACTION_SAVE, true, 0, false);
	if (OidIsValid(role))
		SetUserIdAndSecContext(role, ra->save_sec | SECURITY_LOCAL_USERID_CHANGE |
							   SECURITY_RESTRICTED_OPERATION);
}

void
run_as_end(LlmRunAs *ra)
{
	SetUserIdAndSecContext(ra->save_userid, ra->save_sec);
	AtEOXact_GUC(true, ra->guc_nest);
}

Oid
run_as_gateway_role(void)
{
	return get_role_oid("llm_gateway_worker", false);
}

/*-------------------------------------------------------------------------
 *
 * credential_loader.c
 *	  Load and decrypt the credentials of every provider for the worker.
 *
 * runs in: worker (from the route cache's reload, inside a transaction
 * with SPI connected).
 *
 * Only the worker decrypts, once per route-cache load, not per call.  The
 * plaintexts live in the cache's memory context and are wiped
 * (OPENSSL_cleanse) when it is reset.  Each ciphertext is decrypted for
 * its provider's current base_url (common/credentials.c binds it to the
 * origin it was stored for), read in the same query.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <openssl/crypto.h>

#include "executor/spi.h"
#include "utils/builtins.h"
#include "utils/memutils.h"

#include "common/credentials.h"
#include "worker/credential_loader.h"

/* Memory-context reset callback: wipe the plaintexts before they are freed. */
static void
wipe_secrets(void *arg)
{
	List	   *all = (List *) arg;
	ListCell   *lc;

	foreach(lc, all)
	{
		LlmProviderCredentials *pc = lfirst(lc);
		int			i;

		for (i = 0; i < pc->ncredentials; i++)
			OPENSSL_cleanse(pc->credentials[i].secret, strlen(pc->credentials[i].secret));
	}
}

static void
close_provider(LlmProviderCredentials *pc, List *usable)
{
	ListCell   *lc;
	int			i = 0;

	pc->ncredentials = list_length(usable);
	pc->credentials = palloc0(sizeof(LlmCredential) * Max(pc->ncredentials, 1));
	foreach(lc, usable)
		pc->credentials[i++] = *(LlmCredential *) lfirst(lc);
	if (pc->ncredentials > 0)
	{
		pc->error = NULL;
		pc->hint = NULL;
	}
}

List *
credentials_load(MemoryContext cxt)
{
	List	   *all = NIL;
	List	   *usable = NIL;
	LlmProviderCredentials *pc = NULL;
	MemoryContext old;
	MemoryContextCallback *cb;
	uint64		i;
	int			ret;

	ret = SPI_execute("SELECT c.provider, c.label, c.ciphertext, p.base_url "
					  "  FROM llm.credentials c JOIN llm.providers p ON p.name = c.provider "
					  " WHERE c.enabled ORDER BY c.provider, c.label",
					  true, 0);
	if (ret != SPI_OK_SELECT)
		elog(ERROR, "could not read llm.credentials: %s", SPI_result_code_string(ret));

	old = MemoryContextSwitchTo(cxt);

	/* registered first, so that an ERROR below still wipes what was decrypted */
	cb = palloc0(sizeof(MemoryContextCallback));
	cb->func = wipe_secrets;
	cb->arg = NIL;
	MemoryContextRegisterResetCallback(cxt, cb);

	for (i = 0; i < SPI_processed; i++)
	{
		HeapTuple	tup = SPI_tuptable->vals[i];
		TupleDesc	desc = SPI_tuptable->tupdesc;
		bool		isnull;
		char	   *provider = TextDatumGetCString(SPI_getbinval(tup, desc, 1, &isnull));
		char	   *label = TextDatumGetCString(SPI_getbinval(tup, desc, 2, &isnull));
		Datum		blob = SPI_getbinval(tup, desc, 3, &isnull);
		char	   *base_url = TextDatumGetCString(SPI_getbinval(tup, desc, 4, &isnull));
		LlmCredError err;
		char	   *plain;

		if (pc == NULL || strcmp(pc->provider, provider) != 0)
		{
			if (pc != NULL)
				close_provider(pc, usable);
			pc = palloc0(sizeof(LlmProviderCredentials));
			pc->provider = provider;
			pc->base_url = base_url;
			all = lappend(all, pc);
			cb->arg = all;
			usable = NIL;
		}

		plain = credential_decrypt(provider, base_url, DatumGetByteaPP(blob), &err);
		if (plain != NULL)
		{
			LlmCredential *c = palloc(sizeof(LlmCredential));

			c->label = label;
			c->secret = plain;
			usable = lappend(usable, c);
			continue;
		}
		/* keep the first reason, for the case that none is usable */
		if (pc->error == NULL)
		{
			pc->error = err.message;
			pc->hint = err.hint;
		}
		ereport(WARNING,
				(errcode(err.sqlerrcode),
				 errmsg("credential \"%s\" of provider \"%s\" cannot be used: %s",
						label, provider, err.message),
				 err.detail ? errdetail_internal("%s", err.detail) : 0,
				 err.hint ? errhint("%s", err.hint) : 0));
	}
	if (pc != NULL)
		close_provider(pc, usable);

	MemoryContextSwitchTo(old);
	return all;
}

LlmProviderCredentials *
credentials_find(List *all, const char *provider, const char *base_url)
{
	ListCell   *lc;

	foreach(lc, all)
	{
		LlmProviderCredentials *pc = lfirst(lc);

		if (strcmp(pc->provider, provider) != 0)
			continue;
		if (base_url != NULL && strcmp(pc->base_url, base_url) != 0)
		{
			/* never hand out a key decrypted for another base_url */
			LlmProviderCredentials *stale = palloc0(sizeof(LlmProviderCredentials));

			stale->provider = pc->provider;
			stale->base_url = pstrdup(base_url);
			stale->error = pstrdup("the provider's base_url changed while its credentials were being loaded");
			stale->hint = pstrdup("Retry the call.");
			return stale;
		}
		return pc;
	}
	return NULL;
}

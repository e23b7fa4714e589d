/*-------------------------------------------------------------------------
 *
 * credential_loader.h
 *	  The worker's decrypted provider credentials.
 *
 * runs in: worker.
 *
 *-------------------------------------------------------------------------
 */
#ifndef LLM_CREDENTIAL_LOADER_H
#define LLM_CREDENTIAL_LOADER_H

#include "nodes/pg_list.h"
#include "utils/palloc.h"

/* One decrypted credential of a provider. */
typedef struct LlmCredential
{
	char	   *label;
	char	   *secret;			/* plaintext, worker memory only */
} LlmCredential;

/* Every enabled credential of one provider, as the worker loaded them. */
typedef struct LlmProviderCredentials
{
	char	   *provider;
	char	   *base_url;		/* the base_url they were decrypted for */
	int			ncredentials;	/* usable ones, by label */
	LlmCredential *credentials;
	char	   *error;			/* set when none is usable: why (no secret) */
	char	   *hint;			/* goes with error */
	uint32		next;			/* round-robin position of the next pick */
} LlmProviderCredentials;

/*
 * Load and decrypt every enabled credential, in one query, each for its
 * provider's current base_url.  Caller is in a transaction with SPI
 * connected; the result (a List of LlmProviderCredentials *) lives in cxt,
 * whose reset wipes the plaintexts.  Credentials that cannot be decrypted
 * are left out with a WARNING; a provider with none left gets error and
 * hint.
 */
extern List *credentials_load(MemoryContext cxt);

/*
 * The entry of provider in a credentials_load() list, or NULL if it has
 * none.  base_url is the one the caller will send to: if the entry was
 * decrypted for another (the provider changed between the two reads), an
 * entry with an error is returned, so nothing is sent.
 */
extern LlmProviderCredentials *credentials_find(List *all, const char *provider,
												const char *base_url);

#endif							/* LLM_CREDENTIAL_LOADER_H */

/*-------------------------------------------------------------------------
 *
 * credentials.h
 *	  Provider secrets encrypted at rest: the master key, AES-256-GCM
 *	  encryption (backends) and decryption (worker).
 *
 * runs in: backends (llm.set_credential and friends encrypt), worker
 * (decrypts when it loads its route cache).
 *
 *-------------------------------------------------------------------------
 */
#ifndef LLM_CREDENTIALS_H
#define LLM_CREDENTIALS_H

#include "nodes/pg_list.h"
#include "utils/palloc.h"

/* llm.master_key_file */
extern char *llm_master_key_file;

/* Called from define_gucs(), before MarkGUCPrefixReserved("llm"). */
extern void credentials_define_gucs(void);

/*
 * Backend side: the ciphertext of secret for provider, as stored in
 * llm.credentials.ciphertext.  ERRORs when the master key is unavailable.
 */
extern bytea *credential_encrypt(const char *provider, const char *secret);

/*
 * Worker side: the palloc'd plaintext, or NULL with *errmsg set to why
 * (never containing the secret).  Never ERRORs.
 */
extern char *credential_decrypt(const char *provider, bytea *blob, char **errmsg);

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
	int			ncredentials;	/* usable ones, by label */
	LlmCredential *credentials;
	char	   *error;			/* set when none is usable: why (no secret) */
	char	   *hint;			/* goes with error */
	uint32		next;			/* round-robin position of the next pick */
} LlmProviderCredentials;

/*
 * Worker side: load and decrypt every enabled credential, in one query.
 * Caller is in a transaction with SPI connected; the result (a List of
 * LlmProviderCredentials *) lives in cxt, whose reset
 * wipes the plaintexts.  Credentials that cannot be decrypted are left
 * out with a WARNING; a provider with none left gets error and hint.
 */
extern List *credentials_load(MemoryContext cxt);

/* The entry of provider in a credentials_load() list, or NULL if it has none. */
extern LlmProviderCredentials *credentials_find(List *all, const char *provider);

/* The next usable secret of pc in turn (NULL when pc is NULL or has none). */
extern const char *credentials_next_secret(LlmProviderCredentials *pc);

#endif							/* LLM_CREDENTIALS_H */

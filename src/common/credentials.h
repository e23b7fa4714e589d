/*-------------------------------------------------------------------------
 *
 * credentials.h
 *	  Provider secrets encrypted at rest: the master key and AES-256-GCM
 *	  encryption bound to the provider and to its base_url's origin.
 *
 * runs in: backends (llm.set_credential and friends encrypt, see
 * backend/credentials_sql.c) and the worker (decrypts when it loads its
 * route cache, see worker/credential_loader.c).  Nothing here ERRORs on
 * the worker's path: decryption reports failures as values.
 *
 *-------------------------------------------------------------------------
 */
#ifndef LLM_CREDENTIALS_H
#define LLM_CREDENTIALS_H

#include "utils/palloc.h"

/* llm.master_key_file */
extern char *llm_master_key_file;

/* longest secret accepted, in bytes */
#define CRED_MAX_SECRET_BYTES	16384

/* A failure as a value (the worker must not ERROR); never holds a secret. */
typedef struct LlmCredError
{
	int			sqlerrcode;
	char	   *message;
	char	   *detail;			/* may be NULL */
	char	   *hint;			/* may be NULL */
} LlmCredError;

/* Called from define_gucs(), before MarkGUCPrefixReserved("llm"). */
extern void credentials_define_gucs(void);

/*
 * The origin of a base URL as the credential is bound to it:
 * "scheme://host:port", scheme and host lower-cased, the default port
 * filled in; parsed by curl's URL parser, as curl will parse it when it
 * connects.  NULL (with *why) when base_url is not an http(s) URL.
 */
extern char *credential_origin(const char *base_url, const char **why);

/* Backends: ERROR unless the master key is usable. */

/* Backends: hex id of the current master key (after ..._require). */
extern char *credential_master_key_id(void);

/*
 * Backends: the ciphertext of secret for provider at base_url, as stored
 * in llm.credentials.ciphertext.  ERRORs when the master key is
 * unavailable or base_url has no origin.
 */
extern bytea *credential_encrypt(const char *provider, const char *base_url,
								 const char *secret);

/* hex key id recorded in a credential_encrypt() result */
extern char *credential_key_id_of(bytea *blob);

/*
 * Worker: the palloc'd plaintext, or NULL with *err filled (never
 * containing the secret).  base_url is the provider's current one: a
 * ciphertext stored for another origin does not decrypt.  Never ERRORs.
 */
extern char *credential_decrypt(const char *provider, const char *base_url,
								bytea *blob, LlmCredError *err);

#endif							/* LLM_CREDENTIALS_H */

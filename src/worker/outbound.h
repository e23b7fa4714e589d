/*-------------------------------------------------------------------------
 *
 * outbound.h
 *	  Outbound policy: which hosts and addresses the worker may send to.
 *
 * runs in: worker (checks); the GUCs are defined in every process.
 *
 *-------------------------------------------------------------------------
 */
#ifndef LLM_OUTBOUND_H
#define LLM_OUTBOUND_H

#include <sys/socket.h>

/* GUCs: all PGC_SIGHUP, so only postgresql.conf / ALTER SYSTEM set them */
extern char *llm_allowed_hosts;
extern bool llm_allow_http;
extern bool llm_use_env_proxy;

/* Called from define_gucs(), before MarkGUCPrefixReserved("llm"). */
extern void outbound_define_gucs(void);

/* A refusal, written into fixed buffers: the address check runs in a curl callback. */
typedef struct LlmOutboundRefusal
{
	char		message[384];
	char		detail[384];
	char		hint[256];
} LlmOutboundRefusal;

/* What the URL check learnt, for the address check at connect time. */
typedef struct LlmOutboundTarget
{
	char		host[256];		/* as curl parsed it, lower case */
	bool		https;
	bool		explicit_host;	/* named by a pattern without wildcard */
} LlmOutboundTarget;

/*
 * Check a URL before anything is sent: scheme, llm.allowed_hosts, and for an
 * IP-literal host the address rules.  False with *refusal filled (SQLSTATE
 * 42501) when the URL may not be used.
 */
extern bool outbound_check_url(const char *url, LlmOutboundTarget *target,
							   LlmOutboundRefusal *refusal);

/*
 * Check the address curl is about to connect to (https required except to
 * loopback, link-local and metadata addresses refused unless the host is
 * named explicitly).  Allocates nothing and never ERRORs.
 */
extern bool outbound_check_address(const LlmOutboundTarget *target,
								   const struct sockaddr *addr,
								   LlmOutboundRefusal *refusal);

#endif							/* LLM_OUTBOUND_H */

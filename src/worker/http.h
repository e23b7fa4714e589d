/*-------------------------------------------------------------------------
 *
 * http.h
 *	  libcurl multi glue for the worker: transfers, sockets and timers.
 *
 * runs in: worker.
 *
 *-------------------------------------------------------------------------
 */
#ifndef LLM_HTTP_H
#define LLM_HTTP_H

#include <curl/curl.h>

#include "providers/adapter.h"
#include "worker/outbound.h"

typedef struct LlmHttpTransfer
{
	CURL	   *easy;
	struct curl_slist *headers;
	void	   *owner;			/* the work item */

	/* answer body: malloc'd, because curl callbacks must not ERROR */
	char	   *buf;
	size_t		len;
	size_t		cap;
	bool		too_large;

	/* where it goes, as the outbound policy judged the URL */
	LlmOutboundTarget dest;
	List	   *req_headers;	/* the request's header lines, wiped at release */

	/*
	 * A failure http.c decided itself (outbound policy, no file descriptor,
	 * an option curl refused): when fail_sqlstate is set and the transfer
	 * failed, this is the call's error, not curl's.  Nothing was sent.
	 */
	int			fail_sqlstate;
	bool		fail_retryable;
	LlmOutboundRefusal fail;

	/* outcome */
	bool		done;
	CURLcode	result;
	long		status;
	double		total_ms;
	char		errbuf[CURL_ERROR_SIZE];
} LlmHttpTransfer;

extern void http_init(void);
extern int	http_socket_fd(void);
extern long http_timeout_ms(void);
extern void http_start(LlmHttpTransfer *t, LlmHttpRequest *req, long timeout_ms, void *owner);
extern void http_abort(LlmHttpTransfer *t);
extern void http_drive(bool sockets_ready);
extern LlmHttpTransfer *http_next_done(void);
extern const char *http_response_header(void *transfer, const char *name);
extern bool http_ready(void);
extern void http_release(LlmHttpTransfer *t);
extern int	http_active(void);

#endif							/* LLM_HTTP_H */

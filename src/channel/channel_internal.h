/*-------------------------------------------------------------------------
 *
 * channel_internal.h
 *	  What the channel's three files share and nothing else includes.
 *
 * runs in: backends and the worker (see channel.h for the protocol).
 *
 *-------------------------------------------------------------------------
 */
#ifndef LLM_CHANNEL_INTERNAL_H
#define LLM_CHANNEL_INTERNAL_H

#include "channel/channel.h"

/* first DSA segment, inside the fixed shared memory */
#define LLM_DSA_INITIAL_SIZE	(4 * 1024 * 1024)

extern LlmChannel *channel;
extern dsa_area *channel_area;

static inline int *
free_next(void)
{
	return (int *) ((char *) channel + channel->free_next_off);
}

static inline int *
submit_ring(void)
{
	return (int *) ((char *) channel + channel->submit_ring_off);
}

static inline LlmCancelEntry *
cancel_ring(void)
{
	return (LlmCancelEntry *) ((char *) channel + channel->cancel_ring_off);
}

static inline int
cancel_ring_size(void)
{
	return channel->nslots * 2;
}

extern dsa_pointer channel_alloc(Size size);
extern void *channel_address(dsa_pointer dp);
extern void release_slot(int i);
extern void wake_procno(int procno);
extern void wake_worker(void);

#endif							/* LLM_CHANNEL_INTERNAL_H */

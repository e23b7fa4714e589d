/*-------------------------------------------------------------------------
 *
 * channel.h
 *	  The shared-memory channel between calling backends and the worker.
 *
 * runs in: backends (submit, wait, abandon) and the worker (take, finish).
 * This is the only module both sides include.
 *
 * A *slot* is one call in flight.  Its state moves
 *
 *	 FREE -> SUBMITTED (backend) -> RUNNING (worker) -> ANSWERED (worker)
 *		  -> DONE (worker) -> FREE (backend)
 *
 * ANSWERED means the answer is in place while the worker completes the
 * call's log row; DONE, that the row is complete too.  The backend takes
 * the answer at ANSWERED and returns at once, leaving the slot DETACHED:
 * the worker frees it when the row is complete.  The backend remembers the
 * slot, and its next statement that reads llm.requests first waits for the
 * row and then takes a fresh snapshot (log_visibility.c), so a caller
 * always finds its finished row.  A call without a row (the log could not
 * be written) goes from RUNNING straight to DONE.
 *
 * A backend that gives up (cancel, timeout, exit) moves SUBMITTED, RUNNING
 * or ANSWERED to ABANDONED; the worker then stops the transfer and frees
 * the slot.  State changes are compare-and-swap on slot->state, so a backend
 * abandoning and the worker finishing race safely: exactly one of them
 * wins and that one frees the payloads.
 *
 * Payloads (the canonical request, the answer) live in a DSA area placed in
 * the channel's fixed shared memory and limited by llm.shared_memory_mb.
 * The submit and cancel queues are rings of slot numbers under one
 * spinlock; a cancel entry carries the slot's generation so a stale entry
 * for a recycled slot is ignored.
 *
 *-------------------------------------------------------------------------
 */
#ifndef LLM_CHANNEL_H
#define LLM_CHANNEL_H

#include "port/atomics.h"
#include "storage/condition_variable.h"
#include "storage/latch.h"
#include "storage/spin.h"
#include "utils/dsa.h"

#define LLM_SLOT_FREE		0
#define LLM_SLOT_SUBMITTED	1
#define LLM_SLOT_RUNNING	2
#define LLM_SLOT_DONE		3
#define LLM_SLOT_ABANDONED	4
#define LLM_SLOT_ANSWERED	5
#define LLM_SLOT_DETACHED	6

/*
 * The worker and waiting backends poll (llm.poll_us) only while at most
 * this many calls are in flight: then each call's hand-offs are what its
 * latency is made of.  With more, the worker's turns come often and serve
 * many calls each, and polling would only take CPU from the backends and
 * the provider.
 */
#define LLM_POLL_MAX_IN_FLIGHT 4

/* Why a slot is DONE without a response. */
typedef enum LlmSlotFailure
{
	LLM_FAILURE_NONE = 0,
	LLM_FAILURE_WORKER_EXITED,	/* the worker that held the call exited */
	LLM_FAILURE_NO_MEMORY		/* no shared memory left for the answer */
} LlmSlotFailure;

/* The request as the backend hands it over (one DSA chunk). */
typedef struct LlmRequestMsg
{
	Oid			userid;			/* calling role */
	int32		timeout_ms;		/* whole-call deadline */
	TimestampTz submitted_at;
	uint32		alias_len;		/* bytes of data[] that follow, in order: */
	uint32		role_len;		/* alias\0 role\0 tags\0 regions\0 (tags: JSON */
	uint32		tags_len;		/* text; regions: llm.allowed_regions of the caller) */
	uint32		regions_len;
	uint32		request_len;	/* then the canonical request, a Jsonb varlena */
	char		data[FLEXIBLE_ARRAY_MEMBER];
} LlmRequestMsg;

/* How a call ended, as the backend sees it. */
typedef enum LlmOutcome
{
	LLM_OUTCOME_OK,				/* text is the answer (JSON) */
	LLM_OUTCOME_ERROR			/* text is message\0detail\0hint\0 */
} LlmOutcome;

typedef struct LlmResponseMsg
{
	int32		outcome;		/* LlmOutcome */
	int			sqlerrcode;
	uint32		len;			/* bytes in text[] */
	char		text[FLEXIBLE_ARRAY_MEMBER];
} LlmResponseMsg;

typedef struct LlmSlot
{
	pg_atomic_uint32 state;
	uint32		generation;		/* bumped each time a backend claims it */
	int			backend_procno; /* requester, for its latch */
	uint32		worker_incarnation; /* worker that took it; 0 = not taken */
	int32		failure;		/* LlmSlotFailure when DONE without a response */
	dsa_pointer request;		/* LlmRequestMsg */
	dsa_pointer response;		/* LlmResponseMsg, set before DONE */
} LlmSlot;

/* A cancel notice: which slot, and which use of it. */
typedef struct LlmCancelEntry
{
	int			slot;
	uint32		generation;
} LlmCancelEntry;

/* Counters for llm.gateway_status(). */
typedef struct LlmChannelStats
{
	pg_atomic_uint64 submitted;
	pg_atomic_uint64 completed;
	pg_atomic_uint64 abandoned;
	pg_atomic_uint64 waited_for_slot;
} LlmChannelStats;

typedef struct LlmChannel
{
	slock_t		mutex;			/* protects the rings, free list, worker fields */
	int			nslots;

	/* the worker, if one is attached */
	pid_t		worker_pid;
	Latch	   *worker_latch;
	uint32		worker_incarnation;

	ConditionVariable slot_freed;	/* backends waiting for a free slot */

	int			free_head;		/* free list threaded through free_next[] */
	int			submit_head;	/* ring of submitted slots */
	int			submit_count;
	int			cancel_head;	/* ring of cancel notices */
	int			cancel_count;

	int			lwlock_tranche;
	LlmChannelStats stats;

	/* offsets of the variable parts from the start of this struct */
	Size		free_next_off;
	Size		submit_ring_off;
	Size		cancel_ring_off;
	Size		dsa_off;
	Size		dsa_size;

	LlmSlot		slots[FLEXIBLE_ARRAY_MEMBER];
} LlmChannel;

/* shared memory set-up (llm_gateway.c hooks) */
extern Size channel_shmem_size(void);
extern void channel_shmem_init(void);

/* both sides */
extern LlmChannel *channel_get(void);
extern dsa_area *channel_dsa(void);

/* backend side */
typedef struct LlmCallResult
{
	LlmOutcome	outcome;
	int			sqlerrcode;
	char	   *text;			/* palloc'd copy; answer JSON or error parts */
	uint32		len;
} LlmCallResult;

/* Runs on the answer as soon as it is taken, while the worker logs the call. */
typedef void (*LlmAnswerHook) (const LlmCallResult *result, void *arg);

extern void channel_call(const LlmRequestMsg *hdr, const char *data, Size data_len,
						 int timeout_ms, LlmCallResult *result,
						 LlmAnswerHook on_answer, void *arg);

extern bool channel_call_detached(void);
extern bool channel_call_unlogged(void);
extern void channel_wait_logged(void);

/* worker side */
extern void channel_worker_attach(void);
extern void channel_worker_detach(void);
extern int	channel_take_submitted(int *slots, int max);
extern int	channel_take_cancels(LlmCancelEntry *out, int max);
extern bool channel_start(int slot);
extern LlmRequestMsg *channel_request(int slot);
extern bool channel_finish(int slot, LlmOutcome outcome, int sqlerrcode,
						   const char *text, Size len, bool row_pending);
extern void channel_row_done(int slot);
extern void channel_release_abandoned(int slot);
extern uint32 channel_slot_generation(int slot);
extern bool channel_slot_abandoned(int slot);

#endif							/* LLM_CHANNEL_H */

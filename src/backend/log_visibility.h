/*-------------------------------------------------------------------------
 *
 * log_visibility.h
 *	  A session reads its own calls' finished log rows.
 *
 * runs in: backends.
 *
 *-------------------------------------------------------------------------
 */
#ifndef LLM_LOG_VISIBILITY_H
#define LLM_LOG_VISIBILITY_H

extern void logvis_install_hook(void);

#endif							/* LLM_LOG_VISIBILITY_H */

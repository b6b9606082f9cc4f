/*
 * The logging half of the liblustreapi.so.1 stand-in: the functions that take a `...` or a
 * va_list (stable Rust can define neither) and the state they share (level, callbacks).
 *
 * Exported symbols are listed in exports.map. The lsa_* functions are hidden: the Rust part
 * calls them directly, never through an exported llapi_* symbol, so an LD_PRELOAD library
 * overriding llapi_error & co. cannot change what the library itself does.
 *
 * SPDX-License-Identifier: MIT OR Apache-2.0
 */
#define _GNU_SOURCE
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lustreapi_subset.h"

#define HIDDEN __attribute__((visibility("hidden")))

static void error_callback_default(enum llapi_message_level level, int err, const char *fmt,
				   va_list ap)
{
	vfprintf(stderr, fmt, ap);
	if (!(level & LLAPI_MSG_NO_ERRNO) && err != 0)
		fprintf(stderr, ": %s (%d)\n", strerror(err), err);
	else
		fputc('\n', stderr);
}

static void info_callback_default(enum llapi_message_level level, int err, const char *fmt,
				  va_list ap)
{
	(void)level;
	(void)err;
	vfprintf(stdout, fmt, ap);
}

static int msg_level = LLAPI_MSG_NORMAL;
static llapi_log_callback_t error_cb = error_callback_default;
static llapi_log_callback_t info_cb = info_callback_default;
/* Set by the Rust part while an event FIFO is registered (LOGGED_MESSAGE events). */
static void (*event_sink)(int level, int rc, const char *msg);

void llapi_msg_set_level(int level)
{
	if (level < LLAPI_MSG_OFF)
		level = LLAPI_MSG_OFF;
	if (level > LLAPI_MSG_MAX)
		level = LLAPI_MSG_MAX;
	__atomic_store_n(&msg_level, level, __ATOMIC_RELAXED);
}

int llapi_msg_get_level(void)
{
	return __atomic_load_n(&msg_level, __ATOMIC_RELAXED);
}

llapi_log_callback_t llapi_error_callback_set(llapi_log_callback_t cb)
{
	return __atomic_exchange_n(&error_cb, cb, __ATOMIC_SEQ_CST);
}

llapi_log_callback_t llapi_info_callback_set(llapi_log_callback_t cb)
{
	return __atomic_exchange_n(&info_cb, cb, __ATOMIC_SEQ_CST);
}

static int enabled(int level)
{
	return (level & LLAPI_MSG_MASK) <= __atomic_load_n(&msg_level, __ATOMIC_RELAXED);
}

static void vlog_error(int level, int err, const char *fmt, va_list ap)
{
	llapi_log_callback_t cb = __atomic_load_n(&error_cb, __ATOMIC_SEQ_CST);

	if (cb != NULL && enabled(level))
		cb((enum llapi_message_level)level, err < 0 ? -err : err, fmt, ap);
}

void llapi_error(enum llapi_message_level level, int err, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	vlog_error((int)level, err, fmt, ap);
	va_end(ap);
}

void llapi_printf(enum llapi_message_level level, const char *fmt, ...)
{
	llapi_log_callback_t cb = __atomic_load_n(&info_cb, __ATOMIC_SEQ_CST);
	va_list ap;

	if (cb == NULL || !enabled((int)level))
		return;
	va_start(ap, fmt);
	cb(level, 0, fmt, ap);
	va_end(ap);
}

void llapi_hsm_log_error(enum llapi_message_level level, int _rc, const char *fmt, va_list args)
{
	void (*sink)(int, int, const char *) = __atomic_load_n(&event_sink, __ATOMIC_SEQ_CST);
	char msg[1024];

	if (sink == NULL || fmt == NULL)
		return;
	vsnprintf(msg, sizeof(msg), fmt, args);
	sink((int)level, _rc < 0 ? -_rc : _rc, msg);
}

/* ---- hidden entry points for the Rust part ------------------------------------------------ */

static void lsa_log_fmt(int level, int err, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));

static void lsa_log_fmt(int level, int err, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	vlog_error(level, err, fmt, ap);
	va_end(ap);
}

/* A message already formatted by Rust; the callback still gets a real format and va_list. */
HIDDEN void lsa_log_msg(int level, int err, const char *msg)
{
	lsa_log_fmt(level, err, "%s", msg);
}

HIDDEN void lsa_set_event_sink(void (*sink)(int level, int rc, const char *msg))
{
	__atomic_store_n(&event_sink, sink, __ATOMIC_SEQ_CST);
}

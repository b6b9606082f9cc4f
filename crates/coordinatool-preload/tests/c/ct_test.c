/*
 * A small copytool driving the preload in its tests. Usage:
 *   ct_test MODE MOUNT COUNT [ARCHIVE_ID...]
 * MODE: seq (actions ended in the receiving thread), threads (one thread per action),
 * fork (one child process per action), forkclose (fork, and the child closes every fd
 * above stderr before action_end), poll (O_NONBLOCK registration, get_fd + poll),
 * hold (actions wait for their CANCEL, then both are acknowledged), signals (like seq;
 * SIGUSR1 has an SA_RESTART handler, SIGUSR2 one without: recv reports -EINTR as "EINTR").
 * It stops receiving once COUNT non-CANCEL actions were ended, waits for its workers,
 * unregisters and exits 0. An item whose data is "errval=N" is ended with errval N.
 * SIGPIPE keeps its default action: a write to a dead server must not kill us.
 *
 * SPDX-License-Identifier: MIT OR Apache-2.0
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "lustreapi_subset.h"

static struct hsm_copytool_private *ct;
static volatile sig_atomic_t restarted_signals;

static void on_restarted(int sig)
{
	(void)sig;
	restarted_signals++;
}

static void on_interrupting(int sig)
{
	(void)sig;
}
static const char *mode;

struct held {
	uint64_t cookie;
	struct hsm_copyaction_private *hcp;
	struct hsm_extent ext;
};

static void say(const char *fmt, ...)
{
	char line[512];
	va_list ap;
	int n;

	va_start(ap, fmt);
	n = vsnprintf(line, sizeof(line), fmt, ap);
	va_end(ap);
	if (n > 0 && write(1, line, (size_t)n) < 0)
		_exit(3);
}

static int item_errval(const struct hsm_action_item *hai)
{
	char data[64] = { 0 };
	size_t len = hai->hai_len - sizeof(struct hsm_action_item_fixed);

	if (len >= sizeof(data))
		len = sizeof(data) - 1;
	memcpy(data, hai->hai_data, len);
	if (strncmp(data, "errval=", 7) == 0)
		return atoi(data + 7);
	return 0;
}

/* Runs one action to its end: begin, end with the item's errval. With close_fds (children of
 * "forkclose"), every descriptor above stderr is closed between begin and end, so the
 * preload cannot use anything inherited from the registering process. */
static void run_action_fds(const struct hsm_action_item *hai, int close_fds)
{
	struct hsm_copyaction_private *hcp = NULL;
	struct hsm_extent ext;
	int errval = item_errval(hai);
	int rc;

	memcpy(&ext, &hai->hai_extent, sizeof(ext));
	rc = llapi_hsm_action_begin(&hcp, ct, hai, -1, 0, false);
	if (rc < 0) {
		/* Report the failure the way copytools do. */
		if (llapi_hsm_action_begin(&hcp, ct, hai, -1, 0, true) == 0)
			rc = llapi_hsm_action_end(&hcp, &ext, 0, -rc);
		say("BEGINFAIL cookie=%#llx rc=%d\n", (unsigned long long)hai->hai_cookie, rc);
		return;
	}
	if (close_fds)
		for (int fd = 3; fd < 1024; fd++)
			close(fd);
	rc = llapi_hsm_action_end(&hcp, &ext, 0, errval);
	say("END cookie=%#llx errval=%d rc=%d\n", (unsigned long long)hai->hai_cookie, errval, rc);
}

static void run_action(const struct hsm_action_item *hai)
{
	run_action_fds(hai, 0);
}

static void *thread_main(void *arg)
{
	struct hsm_action_item *hai = arg;

	run_action(hai);
	free(hai);
	return NULL;
}

int main(int argc, char **argv)
{
	int archives[16];
	int n_archives = 0;
	int count, ended = 0, rc;
	pthread_t *threads = NULL;
	size_t n_threads = 0;
	struct held held[256];
	size_t n_held = 0;
	int nonblock;

	if (argc < 4) {
		fprintf(stderr, "usage: ct_test MODE MOUNT COUNT [ARCHIVE...]\n");
		return 1;
	}
	mode = argv[1];
	count = atoi(argv[3]);
	for (int i = 4; i < argc && n_archives < 16; i++)
		archives[n_archives++] = atoi(argv[i]);
	nonblock = strcmp(mode, "poll") == 0;
	threads = calloc(4096, sizeof(*threads));

	if (strcmp(mode, "signals") == 0) {
		struct sigaction sa;

		memset(&sa, 0, sizeof(sa));
		sigemptyset(&sa.sa_mask);
		sa.sa_handler = on_restarted;
		sa.sa_flags = SA_RESTART;
		sigaction(SIGUSR1, &sa, NULL);
		sa.sa_handler = on_interrupting;
		sa.sa_flags = 0;
		sigaction(SIGUSR2, &sa, NULL);
	}
	rc = llapi_hsm_copytool_register(&ct, argv[2], n_archives, archives,
					 nonblock ? O_NONBLOCK : 0);
	if (rc < 0) {
		say("REGISTER rc=%d\n", rc);
		return 1;
	}
	say("REGISTER rc=0\n");

	while (ended < count) {
		struct hsm_action_list *hal = NULL;
		struct hsm_action_item *hai;
		int msgsize = 0;

		if (nonblock) {
			struct pollfd p = { .fd = llapi_hsm_copytool_get_fd(ct), .events = POLLIN };

			rc = llapi_hsm_copytool_recv(ct, &hal, &msgsize);
			if (rc == -EAGAIN) {
				say("EAGAIN\n");
				if (p.fd < 0) {
					say("GETFD rc=%d\n", p.fd);
					return 1;
				}
				while (poll(&p, 1, -1) < 0 && errno == EINTR)
					;
				say("POLLIN\n");
				continue;
			}
		} else {
			rc = llapi_hsm_copytool_recv(ct, &hal, &msgsize);
			if (rc == -EINTR) {
				say("EINTR usr1=%d\n", (int)restarted_signals);
				continue;
			}
		}
		if (rc < 0) {
			say("RECV rc=%d\n", rc);
			return 1;
		}
		if ((size_t)msgsize != hal_size(hal) || hal->hal_version != 1) {
			say("BADHAL msgsize=%d hal_size=%zu\n", msgsize, hal_size(hal));
			return 2;
		}
		say("HAL fsname=%s archive=%u count=%u\n", hal->hal_fsname, hal->hal_archive_id,
		    hal->hal_count);
		hai = hai_first(hal);
		if (hal->hal_count > 4096) {
			say("TOOMANY\n");
			return 1;
		}
		for (uint32_t i = 0; i < hal->hal_count; i++, hai = hai_next(hai)) {
			unsigned long long cookie = hai->hai_cookie;

			if (hai->hai_action == HSMA_CANCEL) {
				struct hsm_copyaction_private *hcp = NULL;
				struct hsm_extent ext;

				say("CANCEL cookie=%#llx\n", cookie);
				memcpy(&ext, &hai->hai_extent, sizeof(ext));
				for (size_t h = 0; h < n_held; h++) {
					if (held[h].hcp && held[h].cookie == cookie) {
						rc = llapi_hsm_action_end(&held[h].hcp, &held[h].ext, 0,
									  ECANCELED);
						say("END cookie=%#llx errval=%d rc=%d\n", cookie,
						    ECANCELED, rc);
						ended++;
					}
				}
				/* Acknowledge the CANCEL item too (a double ack for the key). */
				if (llapi_hsm_action_begin(&hcp, ct, hai, -1, 0, true) == 0)
					llapi_hsm_action_end(&hcp, &ext, 0, ECANCELED);
				continue;
			}
			if (strcmp(mode, "hold") == 0) {
				struct held *h = &held[n_held++ % 256];

				h->cookie = cookie;
				memcpy(&h->ext, &hai->hai_extent, sizeof(h->ext));
				rc = llapi_hsm_action_begin(&h->hcp, ct, hai, -1, 0, false);
				say("HOLD cookie=%#llx rc=%d\n", cookie, rc);
				continue;
			}
			ended++;
			if (strcmp(mode, "threads") == 0) {
				void *copy = malloc(hai->hai_len);

				memcpy(copy, hai, hai->hai_len);
				if (pthread_create(&threads[n_threads], NULL, thread_main, copy) != 0) {
					say("PTHREAD failed\n");
					return 1;
				}
				n_threads++;
			} else if (strcmp(mode, "fork") == 0 || strcmp(mode, "forkclose") == 0) {
				pid_t pid = fork();

				if (pid < 0) {
					say("FORK failed\n");
					return 1;
				}
				if (pid == 0) {
					run_action_fds(hai, strcmp(mode, "forkclose") == 0);
					_exit(0);
				}
			} else {
				run_action(hai);
			}
		}
		/* Workers of this list end while no thread is inside recv. */
		for (size_t i = 0; i < n_threads; i++)
			pthread_join(threads[i], NULL);
		n_threads = 0;
	}
	if (strncmp(mode, "fork", 4) == 0)
		while (wait(NULL) > 0 || errno == EINTR)
			;
	if (getenv("CT_WAIT_FILE")) {
		say("WAITING\n");
		while (access(getenv("CT_WAIT_FILE"), F_OK) != 0)
			usleep(10000);
	}
	rc = llapi_hsm_copytool_unregister(&ct);
	say("UNREGISTER rc=%d\n", rc);
	free(threads);
	return rc == 0 ? 0 : 1;
}

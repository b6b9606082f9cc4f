/*
 * ctposix - a small POSIX copytool for Lustre HSM, the project's reference C copytool.
 *
 * Written for coordinatool-rs from the documented behaviour of lhsmtool_posix (not from its
 * source): it registers with liblustreapi, receives hsm_action_lists and, for every item,
 *   ARCHIVE  copies <mount>/.lustre/fid/<dfid> into <hsm-root>/<archive id>/<fid>,
 *   RESTORE  copies that archive file back into the volatile file of the restore,
 *   REMOVE   unlinks the archive file,
 *   CANCEL   marks the running action with the same cookie as canceled,
 * reporting progress after every chunk and ending each action with the right errval. Actions
 * run concurrently, one thread per item (default) or one child process per item (--fork).
 * After an archive, a "shadow" symlink <hsm-root>/shadow/<path in Lustre> points at the
 * archive copy (the path comes from llapi_fid2path_at), as lhsmtool_posix keeps one.
 *
 * Besides the daemon mode, two one-shot modes of lhsmtool_posix:
 *   --import SRC DST MNT    creates DST (in Lustre) as a released file archived in archive N
 *                           (the first --archive, else 1) with llapi_hsm_import, and moves
 *                           SRC (absolute, or relative to --hsm-root) to the new FID's archive
 *                           path: a restore (explicit or on first read) brings the data in;
 *   --rebind OLD NEW MNT    moves the archive copy of FID OLD to that of FID NEW (FIDs as
 *   --rebind LIST MNT       llapi_fid_parse reads them), or every "OLD NEW" line of LIST.
 *
 * It builds with `cc -std=c99 -Wall -Wextra -Werror` against include/lustreapi_subset.h and
 * links with -llustreapi, so it runs unmodified on Lustre or on the simulator's stand-in.
 *
 * Usage:
 *   ctposix [--archive N]... --hsm-root DIR [--threads N | --fork] [--wait-file PATH]
 *           [--no-progress] [--poll] [--chunk-size SIZE] [--bandwidth BW]
 *           [--event-fifo PATH] [--no-shadow] MOUNT
 *   ctposix [--archive N] --hsm-root DIR --import SRC DST MOUNT
 *   ctposix [--archive N] --hsm-root DIR --rebind OLD_FID NEW_FID MOUNT | --rebind LIST MOUNT
 * SIZE and BW are read with llapi_parse_size: a number with an optional unit k, m, g, t, p, e
 * (powers of 1024) or fraction ("1.5m"); a bare --chunk-size counts bytes, a bare
 * --bandwidth MiB per second (lhsmtool_posix's default unit). --bandwidth caps each copy.
 * --event-fifo writes lhsmtool_posix's JSON events (llapi_hsm_register_event_fifo) and turns
 * the library's error messages into LOGGED_MESSAGE events (llapi_hsm_log_error).
 *
 * Standard output gets one line per event, written with a single write(2) so that lines
 * from threads and children never interleave:
 *   REGISTER mount=<mnt> archives=<ids|ANY>
 *   <ACTION> begin [fid] cookie=0x.. [dfid=[..]]
 *   <ACTION> wait [fid] cookie=0x.. path=<wait file>
 *   <ACTION> progress [fid] cookie=0x.. offset=N length=N
 *   <ACTION> end [fid] cookie=0x.. rc=<copy result> errval=<reported> end_rc=<action_end>
 *   CANCEL [fid] cookie=0x.. running=<0|1>
 *   SHADOW [fid] path=<path in Lustre> link=<shadow symlink>
 *   SHUTDOWN | STOP signal=N | RECV error rc=N
 *   IMPORT [fid] src=<archived file> dst=<Lustre file> archive=N copy=<archive copy>
 *   REBIND [old] [new] copy=<new archive copy>
 * Exit status: 0 on -ESHUTDOWN and on SIGTERM/SIGINT (after unregistering), 1 on setup
 * errors.
 *
 * SPDX-License-Identifier: MIT OR Apache-2.0
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <limits.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "lustreapi_subset.h"

/*
 * liblustreapi functions lhsmtool_posix also uses that the project's header does not
 * declare (prototypes of lustreapi.h; the last-but-two argument of llapi_hsm_import is an
 * `enum lov_pattern` since 2.17, passed as an int here).
 */
int llapi_fid2path_at(int mnt_fd, const struct lu_fid *fid, char *path, int pathlen,
		      long long *recno, int *linkno);
int llapi_fid_parse(const char *fidstr, struct lu_fid *fid, char **endptr);
int llapi_parse_size(const char *optarg, unsigned long long *size,
		     unsigned long long *size_units, int bytes_spec);
int llapi_hsm_import(const char *dst, int archive, const struct stat *st,
		     unsigned long long stripe_size, int stripe_offset, int stripe_count,
		     int stripe_pattern, char *pool_name, struct lu_fid *newfid);

#define MAX_ARCHIVES 32
/* Slots of the table of running actions (shared with --fork children). */
#define MAX_RUNNING 1024
#define DEFAULT_CHUNK (1024 * 1024)
#define MAX_CHUNK (1ULL << 30)
#define ONE_MB (1024ULL * 1024ULL)
#define DEFAULT_THREADS 64

#define FIDF "[0x%llx:0x%x:0x%x]"
#define FIDNF "0x%llx:0x%x:0x%x"
#define FIDP(f) (unsigned long long)(f)->f_seq, (unsigned)(f)->f_oid, (unsigned)(f)->f_ver

struct options {
	int archives[MAX_ARCHIVES];
	int archive_count;
	const char *hsm_root;
	const char *mount;
	const char *wait_file;
	int threads;
	int fork_mode;
	int no_progress;
	int poll_mode;
	size_t chunk;
	unsigned long long bandwidth; /* bytes per second, 0: unlimited */
	const char *event_fifo;
	int no_shadow;
	int import_mode;
	int rebind_mode;
	int nargs;     /* positional arguments (the last one is the mount) */
	char **args;
};

/* One running action; lives in MAP_SHARED memory so --fork children see cancels. */
struct running {
	unsigned long long cookie; /* 0: free slot */
	/* The FID completes the key: cookies are only unique per MDT. */
	unsigned long long fid_seq;
	unsigned int fid_oid;
	unsigned int fid_ver;
	int canceled;
};

/* What a worker needs: a copy of the item (the HAL buffer is reused by the next recv). */
struct job {
	unsigned int archive_id;
	struct hsm_action_item *hai;
};

static struct options opt;
static struct hsm_copytool_private *ctdata;
static int mnt_fd = -1;
static struct running *running_table;
static volatile sig_atomic_t stop_signal;
static int sig_pipe[2] = { -1, -1 };
static pthread_mutex_t slots_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t slots_cond = PTHREAD_COND_INITIALIZER;
static int slots_used;

/* One stdout line per call, in a single write(2). */
static void event(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void event(const char *fmt, ...)
{
	char line[1024];
	va_list ap;
	int n;
	ssize_t w;
	size_t off = 0;

	va_start(ap, fmt);
	n = vsnprintf(line, sizeof(line) - 1, fmt, ap);
	va_end(ap);
	if (n < 0)
		return;
	if ((size_t)n > sizeof(line) - 2)
		n = (int)(sizeof(line) - 2);
	line[n++] = '\n';
	while (off < (size_t)n) {
		w = write(STDOUT_FILENO, line + off, (size_t)n - off);
		if (w < 0 && errno == EINTR)
			continue;
		if (w <= 0)
			return;
		off += (size_t)w;
	}
}

static const char *action_name(unsigned int action)
{
	switch (action) {
	case HSMA_NONE:
		return "NOOP";
	case HSMA_ARCHIVE:
		return "ARCHIVE";
	case HSMA_RESTORE:
		return "RESTORE";
	case HSMA_REMOVE:
		return "REMOVE";
	case HSMA_CANCEL:
		return "CANCEL";
	default:
		return "UNKNOWN";
	}
}

/* ---- table of running actions ------------------------------------------------------------ */

static struct running *running_add(unsigned long long cookie, const struct lu_fid *fid)
{
	int i;

	for (i = 0; i < MAX_RUNNING; i++) {
		unsigned long long expected = 0;

		if (__atomic_compare_exchange_n(&running_table[i].cookie, &expected, cookie, false,
						__ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST)) {
			__atomic_store_n(&running_table[i].fid_seq, fid->f_seq, __ATOMIC_SEQ_CST);
			__atomic_store_n(&running_table[i].fid_oid, fid->f_oid, __ATOMIC_SEQ_CST);
			__atomic_store_n(&running_table[i].fid_ver, fid->f_ver, __ATOMIC_SEQ_CST);
			__atomic_store_n(&running_table[i].canceled, 0, __ATOMIC_SEQ_CST);
			return &running_table[i];
		}
	}
	return NULL;
}

static void running_del(struct running *r)
{
	if (r != NULL)
		__atomic_store_n(&r->cookie, 0ULL, __ATOMIC_SEQ_CST);
}

static int running_cancel(unsigned long long cookie, const struct lu_fid *fid)
{
	int i, found = 0;

	for (i = 0; i < MAX_RUNNING; i++) {
		struct running *r = &running_table[i];

		if (__atomic_load_n(&r->cookie, __ATOMIC_SEQ_CST) == cookie &&
		    __atomic_load_n(&r->fid_seq, __ATOMIC_SEQ_CST) == fid->f_seq &&
		    __atomic_load_n(&r->fid_oid, __ATOMIC_SEQ_CST) == fid->f_oid &&
		    __atomic_load_n(&r->fid_ver, __ATOMIC_SEQ_CST) == fid->f_ver) {
			__atomic_store_n(&running_table[i].canceled, 1, __ATOMIC_SEQ_CST);
			found = 1;
		}
	}
	return found;
}

static int is_canceled(const struct running *r)
{
	return r != NULL && __atomic_load_n(&r->canceled, __ATOMIC_SEQ_CST);
}

/* ---- helpers ----------------------------------------------------------------------------- */

static void sleep_ms(long ms)
{
	struct timespec ts = { ms / 1000, (ms % 1000) * 1000000L };

	while (nanosleep(&ts, &ts) < 0 && errno == EINTR)
		;
}

static int mkdir_p(const char *dir)
{
	char buf[PATH_MAX];
	char *p;

	if (snprintf(buf, sizeof(buf), "%s", dir) >= (int)sizeof(buf))
		return -ENAMETOOLONG;
	for (p = buf + 1; *p != '\0'; p++) {
		if (*p != '/')
			continue;
		*p = '\0';
		if (mkdir(buf, 0755) < 0 && errno != EEXIST)
			return -errno;
		*p = '/';
	}
	if (mkdir(buf, 0755) < 0 && errno != EEXIST)
		return -errno;
	return 0;
}

static int archive_path(char *buf, size_t len, unsigned int archive_id, const struct lu_fid *fid)
{
	int n = snprintf(buf, len, "%s/%u/" FIDNF, opt.hsm_root, archive_id, FIDP(fid));

	return n < 0 || (size_t)n >= len ? -ENAMETOOLONG : 0;
}

/* The archive id of --import and --rebind: the first --archive, else 1 (the default id). */
static unsigned int oneshot_archive_id(void)
{
	return opt.archive_count > 0 && opt.archives[0] > 0 ? (unsigned int)opt.archives[0] : 1;
}

/* The shadow symlink of the file `fid`: <hsm-root>/shadow/<its path in Lustre>. */
static int shadow_path(char *buf, size_t len, const struct lu_fid *fid, char *rel, int rel_len)
{
	long long recno = -1;
	int linkno = 0;
	int rc = llapi_fid2path_at(mnt_fd, fid, rel, rel_len, &recno, &linkno);
	int n;

	if (rc < 0)
		return rc;
	n = snprintf(buf, len, "%s/shadow/%s", opt.hsm_root, rel);
	return n < 0 || (size_t)n >= len ? -ENAMETOOLONG : 0;
}

/* Points the shadow symlink of `fid` at its archive copy `copy` (best effort, as lhsmtool). */
static void make_shadow(const struct lu_fid *fid, const char *copy)
{
	char rel[PATH_MAX], link[PATH_MAX + 16], dir[PATH_MAX + 16];
	char *slash;
	int rc;

	if (opt.no_shadow)
		return;
	rc = shadow_path(link, sizeof(link), fid, rel, sizeof(rel));
	if (rc < 0) {
		llapi_error(LLAPI_MSG_WARN, -rc, "no shadow link for " FIDF, FIDP(fid));
		return;
	}
	snprintf(dir, sizeof(dir), "%s", link);
	slash = strrchr(dir, '/');
	if (slash != NULL)
		*slash = '\0';
	rc = mkdir_p(dir);
	/* A previous archive of that path, or of a file that had that name. */
	if (rc == 0 && unlink(link) < 0 && errno != ENOENT)
		rc = -errno;
	if (rc == 0 && symlink(copy, link) < 0)
		rc = -errno;
	if (rc < 0) {
		llapi_error(LLAPI_MSG_WARN, -rc, "cannot create shadow link '%s'", link);
		return;
	}
	event("SHADOW " FIDF " path=%s link=%s", FIDP(fid), rel, link);
}

/* Removes the shadow symlink of `fid` if it still points at `copy`. */
static void drop_shadow(const struct lu_fid *fid, const char *copy)
{
	char rel[PATH_MAX], link[PATH_MAX + 16], target[PATH_MAX];
	ssize_t n;

	if (opt.no_shadow || shadow_path(link, sizeof(link), fid, rel, sizeof(rel)) < 0)
		return;
	n = readlink(link, target, sizeof(target) - 1);
	if (n < 0)
		return;
	target[n] = '\0';
	if (strcmp(target, copy) == 0)
		unlink(link);
}

/*
 * Holds the action while the wait file exists. Returns -ECANCELED as soon as the action is
 * canceled (flag set by a CANCEL item, or progress answering -ECANCELED).
 */
static int hold_on_wait_file(struct hsm_copyaction_private *hcp, const struct hsm_action_item *hai,
			     const struct running *r)
{
	struct stat st;
	int announced = 0;
	int ticks = 0;

	if (opt.wait_file == NULL)
		return 0;
	while (stat(opt.wait_file, &st) == 0) {
		if (!announced) {
			event("%s wait " FIDF " cookie=%#llx path=%s", action_name(hai->hai_action),
			      FIDP(&hai->hai_fid), (unsigned long long)hai->hai_cookie,
			      opt.wait_file);
			announced = 1;
		}
		if (is_canceled(r))
			return -ECANCELED;
		/* Ask the coordinator now and then, as a long copy would. */
		if (hcp != NULL && !opt.no_progress && ++ticks % 10 == 0) {
			struct hsm_extent he = { hai->hai_extent.offset, 0 };
			int rc = llapi_hsm_action_progress(hcp, &he, 0, 0);

			if (rc == -ECANCELED)
				return rc;
		}
		sleep_ms(20);
	}
	return 0;
}

/* Sleeps until `done` bytes since `start` are within --bandwidth. */
static void throttle(const struct timespec *start, unsigned long long done)
{
	struct timespec now;
	long double due, elapsed;

	clock_gettime(CLOCK_MONOTONIC, &now);
	due = (long double)done / (long double)opt.bandwidth;
	elapsed = (long double)(now.tv_sec - start->tv_sec) +
		  (long double)(now.tv_nsec - start->tv_nsec) / 1e9L;
	if (due > elapsed)
		sleep_ms((long)((due - elapsed) * 1000.0L) + 1);
}

/*
 * Copies `length` bytes (LUSTRE_EOF: to the end) from src_fd at `offset` to dst_fd at the
 * same offset, reporting each chunk. Returns 0 or a negative errno (-ECANCELED on cancel).
 */
static int copy_data(struct hsm_copyaction_private *hcp, const struct hsm_action_item *hai,
		     const struct running *r, int src_fd, int dst_fd, unsigned long long offset,
		     unsigned long long length)
{
	char *buf;
	unsigned long long done = 0;
	unsigned long long total = length;
	struct stat st;
	struct timespec start;
	int rc = 0;

	if (length == LUSTRE_EOF && fstat(src_fd, &st) == 0)
		total = (unsigned long long)st.st_size > offset ? (unsigned long long)st.st_size - offset : 0;
	buf = malloc(opt.chunk);
	if (buf == NULL)
		return -ENOMEM;
	clock_gettime(CLOCK_MONOTONIC, &start);
	while (length == LUSTRE_EOF || done < length) {
		size_t want = opt.chunk;
		ssize_t got, put = 0;

		if (is_canceled(r)) {
			rc = -ECANCELED;
			break;
		}
		if (length != LUSTRE_EOF && length - done < want)
			want = (size_t)(length - done);
		got = pread(src_fd, buf, want, (off_t)(offset + done));
		if (got < 0) {
			if (errno == EINTR)
				continue;
			rc = -errno;
			break;
		}
		if (got == 0)
			break;
		while (put < got) {
			ssize_t w = pwrite(dst_fd, buf + put, (size_t)(got - put),
					   (off_t)(offset + done + (unsigned long long)put));

			if (w < 0 && errno == EINTR)
				continue;
			if (w <= 0) {
				rc = w < 0 ? -errno : -EIO;
				break;
			}
			put += w;
		}
		if (rc != 0)
			break;
		if (!opt.no_progress) {
			struct hsm_extent he = { offset + done, (unsigned long long)got };

			rc = llapi_hsm_action_progress(hcp, &he, total, 0);
			event("%s progress " FIDF " cookie=%#llx offset=%llu length=%lld rc=%d",
			      action_name(hai->hai_action), FIDP(&hai->hai_fid),
			      (unsigned long long)hai->hai_cookie, offset + done, (long long)got, rc);
			if (rc == -ECANCELED)
				break;
			/* Other progress errors are not fatal to the copy (the end reports). */
			rc = 0;
		}
		done += (unsigned long long)got;
		if (opt.bandwidth != 0)
			throttle(&start, done);
	}
	free(buf);
	return rc;
}

/* Ends an action; logs the line tests wait for. */
static int finish(struct hsm_copyaction_private **phcp, const struct hsm_action_item *hai,
		  int rc)
{
	int errval = rc < 0 ? -rc : rc;
	int flags = errval == ETIMEDOUT ? HP_FLAG_RETRY : 0;
	int end_rc = llapi_hsm_action_end(phcp, &hai->hai_extent, flags, errval);

	if (end_rc < 0)
		llapi_error(LLAPI_MSG_ERROR, -end_rc, "action_end failed for cookie %#llx",
			    (unsigned long long)hai->hai_cookie);
	event("%s end " FIDF " cookie=%#llx rc=%d errval=%d end_rc=%d",
	      action_name(hai->hai_action), FIDP(&hai->hai_fid),
	      (unsigned long long)hai->hai_cookie, rc, errval, end_rc);
	return end_rc;
}

/* Reports a failure without doing the work (begin with is_error, then end). */
static void report_failure(const struct hsm_action_item *hai, int rc)
{
	struct hsm_copyaction_private *hcp = NULL;
	int brc = llapi_hsm_action_begin(&hcp, ctdata, hai, -1, 0, true);

	if (brc < 0) {
		llapi_error(LLAPI_MSG_ERROR, -brc, "cannot report failure of cookie %#llx",
			    (unsigned long long)hai->hai_cookie);
		event("%s end " FIDF " cookie=%#llx rc=%d errval=%d end_rc=%d",
		      action_name(hai->hai_action), FIDP(&hai->hai_fid),
		      (unsigned long long)hai->hai_cookie, rc, rc < 0 ? -rc : rc, brc);
		return;
	}
	finish(&hcp, hai, rc);
}

static int begin(struct hsm_copyaction_private **phcp, const struct hsm_action_item *hai,
		 int mdt_index)
{
	int rc = llapi_hsm_action_begin(phcp, ctdata, hai, mdt_index, 0, false);

	if (rc < 0) {
		llapi_error(LLAPI_MSG_ERROR, -rc, "action_begin failed for cookie %#llx",
			    (unsigned long long)hai->hai_cookie);
		event("%s begin " FIDF " cookie=%#llx rc=%d", action_name(hai->hai_action),
		      FIDP(&hai->hai_fid), (unsigned long long)hai->hai_cookie, rc);
		report_failure(hai, rc);
		return rc;
	}
	return 0;
}

static void do_archive(const struct job *job, const struct running *r)
{
	const struct hsm_action_item *hai = job->hai;
	struct hsm_copyaction_private *hcp = NULL;
	char dst[PATH_MAX], tmp[PATH_MAX + 8], dir[PATH_MAX];
	int src_fd = -1, dst_fd = -1, rc;
	int whole = hai->hai_extent.offset == 0 && hai->hai_extent.length == LUSTRE_EOF;

	if (begin(&hcp, hai, -1) < 0)
		return;
	event("ARCHIVE begin " FIDF " cookie=%#llx", FIDP(&hai->hai_fid),
	      (unsigned long long)hai->hai_cookie);
	rc = hold_on_wait_file(hcp, hai, r);
	if (rc < 0)
		goto out;
	src_fd = llapi_hsm_action_get_fd(hcp);
	if (src_fd < 0) {
		rc = src_fd;
		goto out;
	}
	snprintf(dir, sizeof(dir), "%s/%u", opt.hsm_root, job->archive_id);
	rc = mkdir_p(dir);
	if (rc < 0)
		goto out;
	rc = archive_path(dst, sizeof(dst), job->archive_id, &hai->hai_fid);
	if (rc < 0)
		goto out;
	/* A whole-file copy goes to a temporary name renamed at the end (never half a file). */
	snprintf(tmp, sizeof(tmp), "%s%s", dst, whole ? "_tmp" : "");
	dst_fd = open(tmp, O_WRONLY | O_CREAT | (whole ? O_TRUNC : 0), 0600);
	if (dst_fd < 0) {
		rc = -errno;
		goto out;
	}
	rc = copy_data(hcp, hai, r, src_fd, dst_fd, hai->hai_extent.offset, hai->hai_extent.length);
	if (rc == 0 && fsync(dst_fd) < 0)
		rc = -errno;
	if (close(dst_fd) < 0 && rc == 0)
		rc = -errno;
	dst_fd = -1;
	if (rc == 0 && whole && rename(tmp, dst) < 0)
		rc = -errno;
	if (rc < 0 && whole)
		unlink(tmp);
	if (rc == 0)
		make_shadow(&hai->hai_fid, dst);
out:
	if (src_fd >= 0)
		close(src_fd);
	if (dst_fd >= 0)
		close(dst_fd);
	finish(&hcp, hai, rc);
}

static void do_restore(const struct job *job, const struct running *r)
{
	const struct hsm_action_item *hai = job->hai;
	struct hsm_copyaction_private *hcp = NULL;
	struct lu_fid dfid;
	char src[PATH_MAX];
	int mdt_index = -1, src_fd = -1, dst_fd = -1, rc;

	rc = llapi_get_mdt_index_by_fid(mnt_fd, &hai->hai_fid, &mdt_index);
	if (rc < 0) {
		llapi_error(LLAPI_MSG_WARN, -rc, "cannot get the MDT index of " FIDF,
			    FIDP(&hai->hai_fid));
		mdt_index = -1;
	}
	if (begin(&hcp, hai, mdt_index) < 0)
		return;
	rc = llapi_hsm_action_get_dfid(hcp, &dfid);
	if (rc < 0)
		goto out;
	event("RESTORE begin " FIDF " cookie=%#llx dfid=" FIDF, FIDP(&hai->hai_fid),
	      (unsigned long long)hai->hai_cookie, FIDP(&dfid));
	rc = hold_on_wait_file(hcp, hai, r);
	if (rc < 0)
		goto out;
	rc = archive_path(src, sizeof(src), job->archive_id, &hai->hai_fid);
	if (rc < 0)
		goto out;
	src_fd = open(src, O_RDONLY);
	if (src_fd < 0) {
		rc = -errno;
		llapi_error(LLAPI_MSG_ERROR, -rc, "cannot open archive copy '%s'", src);
		goto out;
	}
	dst_fd = llapi_hsm_action_get_fd(hcp);
	if (dst_fd < 0) {
		rc = dst_fd;
		dst_fd = -1;
		goto out;
	}
	rc = copy_data(hcp, hai, r, src_fd, dst_fd, hai->hai_extent.offset, hai->hai_extent.length);
out:
	/* The volatile must stay open until action_end has returned (layout swap). */
	finish(&hcp, hai, rc);
	if (src_fd >= 0)
		close(src_fd);
	if (dst_fd >= 0)
		close(dst_fd);
}

static void do_remove(const struct job *job)
{
	const struct hsm_action_item *hai = job->hai;
	struct hsm_copyaction_private *hcp = NULL;
	char dst[PATH_MAX];
	int rc;

	if (begin(&hcp, hai, -1) < 0)
		return;
	event("REMOVE begin " FIDF " cookie=%#llx", FIDP(&hai->hai_fid),
	      (unsigned long long)hai->hai_cookie);
	rc = archive_path(dst, sizeof(dst), job->archive_id, &hai->hai_fid);
	if (rc == 0)
		drop_shadow(&hai->hai_fid, dst);
	if (rc == 0 && unlink(dst) < 0)
		rc = -errno;
	finish(&hcp, hai, rc);
}

static void run_job(struct job *job)
{
	const struct hsm_action_item *hai = job->hai;
	struct running *r = NULL;

	switch (hai->hai_action) {
	case HSMA_ARCHIVE:
	case HSMA_RESTORE:
		r = running_add(hai->hai_cookie, &hai->hai_fid);
		if (hai->hai_action == HSMA_ARCHIVE)
			do_archive(job, r);
		else
			do_restore(job, r);
		running_del(r);
		break;
	case HSMA_REMOVE:
		do_remove(job);
		break;
	default:
		event("%s unknown action %u " FIDF " cookie=%#llx", action_name(hai->hai_action),
		      hai->hai_action, FIDP(&hai->hai_fid), (unsigned long long)hai->hai_cookie);
		report_failure(hai, -EINVAL);
		break;
	}
}

static void free_job(struct job *job)
{
	free(job->hai);
	free(job);
}

static void *job_thread(void *arg)
{
	struct job *job = arg;

	run_job(job);
	free_job(job);
	pthread_mutex_lock(&slots_lock);
	slots_used--;
	pthread_cond_signal(&slots_cond);
	pthread_mutex_unlock(&slots_lock);
	return NULL;
}

static void reap_children(void)
{
	while (waitpid(-1, NULL, WNOHANG) > 0)
		;
}

static void start_job(struct job *job)
{
	pthread_t tid;
	pthread_attr_t attr;
	int rc;

	if (opt.fork_mode) {
		pid_t pid;

		reap_children();
		pid = fork();
		if (pid == 0) {
			run_job(job);
			_exit(0);
		}
		if (pid < 0) {
			llapi_error(LLAPI_MSG_ERROR, errno, "fork failed");
			report_failure(job->hai, -errno);
		}
		free_job(job);
		return;
	}
	pthread_mutex_lock(&slots_lock);
	while (slots_used >= opt.threads)
		pthread_cond_wait(&slots_cond, &slots_lock);
	slots_used++;
	pthread_mutex_unlock(&slots_lock);
	pthread_attr_init(&attr);
	pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
	rc = pthread_create(&tid, &attr, job_thread, job);
	pthread_attr_destroy(&attr);
	if (rc != 0) {
		llapi_error(LLAPI_MSG_ERROR, rc, "cannot start a thread");
		report_failure(job->hai, -rc);
		free_job(job);
		pthread_mutex_lock(&slots_lock);
		slots_used--;
		pthread_mutex_unlock(&slots_lock);
	}
}

static void process_hal(struct hsm_action_list *hal, int msgsize, const char *fsname)
{
	struct hsm_action_item *hai;
	const char *end = (const char *)hal + msgsize;
	unsigned int i;

	if (strcmp(hal->hal_fsname, fsname) != 0) {
		llapi_error(LLAPI_MSG_ERROR, EINVAL, "HAL for filesystem '%s', mounted is '%s'",
			    hal->hal_fsname, fsname);
		return;
	}
	hai = hai_first(hal);
	for (i = 0; i < hal->hal_count; i++, hai = hai_next(hai)) {
		struct job *job;

		if ((const char *)hai + sizeof(*hai) > end ||
		    (const char *)hai + hai->hai_len > end || hai->hai_len < sizeof(*hai)) {
			llapi_error(LLAPI_MSG_ERROR | LLAPI_MSG_NO_ERRNO, 0,
				    "item %u of a HAL of %d bytes is out of bounds", i, msgsize);
			return;
		}
		if (hai->hai_action == HSMA_CANCEL) {
			int found = running_cancel(hai->hai_cookie, &hai->hai_fid);

			event("CANCEL " FIDF " cookie=%#llx running=%d", FIDP(&hai->hai_fid),
			      (unsigned long long)hai->hai_cookie, found);
			continue;
		}
		job = calloc(1, sizeof(*job));
		if (job == NULL || (job->hai = malloc(hai->hai_len)) == NULL) {
			free(job);
			report_failure(hai, -ENOMEM);
			continue;
		}
		memcpy(job->hai, hai, hai->hai_len);
		job->archive_id = hal->hal_archive_id;
		start_job(job);
	}
}

static void on_signal(int sig)
{
	int saved = errno;
	char c = 1;

	stop_signal = sig;
	if (sig_pipe[1] >= 0 && write(sig_pipe[1], &c, 1) < 0) {
		/* Nothing to do: the flag is set. */
	}
	errno = saved;
}

static void on_sigchld(int sig)
{
	(void)sig;
}

/* ---- one-shot modes: --import and --rebind ---------------------------------------------- */

/* Copies src to a new dst (used when a rename crosses filesystems). */
static int copy_file(const char *src, const char *dst)
{
	char buf[65536];
	int in, out, rc = 0;
	ssize_t n;

	in = open(src, O_RDONLY);
	if (in < 0)
		return -errno;
	out = open(dst, O_WRONLY | O_CREAT | O_EXCL, 0600);
	if (out < 0) {
		rc = -errno;
		close(in);
		return rc;
	}
	while ((n = read(in, buf, sizeof(buf))) != 0) {
		ssize_t put = 0;

		if (n < 0) {
			if (errno == EINTR)
				continue;
			rc = -errno;
			break;
		}
		while (put < n) {
			ssize_t w = write(out, buf + put, (size_t)(n - put));

			if (w < 0 && errno == EINTR)
				continue;
			if (w <= 0) {
				rc = w < 0 ? -errno : -EIO;
				break;
			}
			put += w;
		}
		if (rc < 0)
			break;
	}
	if (rc == 0 && fsync(out) < 0)
		rc = -errno;
	if (close(out) < 0 && rc == 0)
		rc = -errno;
	close(in);
	if (rc < 0)
		unlink(dst);
	return rc;
}

/* Moves an archive copy to `dst` (creating its directory). */
static int move_copy(const char *src, const char *dst)
{
	char dir[PATH_MAX];
	char *slash;
	int rc;

	snprintf(dir, sizeof(dir), "%s", dst);
	slash = strrchr(dir, '/');
	if (slash != NULL && slash != dir) {
		*slash = '\0';
		rc = mkdir_p(dir);
		if (rc < 0)
			return rc;
	}
	if (rename(src, dst) == 0)
		return 0;
	if (errno != EXDEV)
		return -errno;
	rc = copy_file(src, dst);
	if (rc == 0 && unlink(src) < 0)
		rc = -errno;
	return rc;
}

/*
 * --import SRC DST: DST becomes a released file archived in the one-shot archive id, with
 * SRC's size, times, mode and owner; SRC moves to the archive path of DST's new FID.
 */
static int import_one(const char *src, const char *dst)
{
	char srcpath[PATH_MAX], copy[PATH_MAX];
	unsigned int archive_id = oneshot_archive_id();
	struct lu_fid fid;
	struct stat st;
	int n, rc;

	if (src[0] == '/')
		n = snprintf(srcpath, sizeof(srcpath), "%s", src);
	else
		n = snprintf(srcpath, sizeof(srcpath), "%s/%s", opt.hsm_root, src);
	if (n < 0 || (size_t)n >= sizeof(srcpath))
		return -ENAMETOOLONG;
	if (stat(srcpath, &st) < 0) {
		rc = -errno;
		llapi_error(LLAPI_MSG_ERROR, -rc, "cannot import '%s'", srcpath);
		return rc;
	}
	if (!S_ISREG(st.st_mode)) {
		llapi_error(LLAPI_MSG_ERROR | LLAPI_MSG_NO_ERRNO, 0,
			    "cannot import '%s': not a regular file", srcpath);
		return -EINVAL;
	}
	rc = llapi_hsm_import(dst, (int)archive_id, &st, 0, -1, 0, 0, NULL, &fid);
	if (rc < 0) {
		llapi_error(LLAPI_MSG_ERROR, -rc, "cannot import '%s' as '%s'", srcpath, dst);
		return rc;
	}
	rc = archive_path(copy, sizeof(copy), archive_id, &fid);
	if (rc == 0)
		rc = move_copy(srcpath, copy);
	if (rc < 0) {
		llapi_error(LLAPI_MSG_ERROR, -rc, "cannot move '%s' into the archive, '%s' removed",
			    srcpath, dst);
		unlink(dst);
		return rc;
	}
	make_shadow(&fid, copy);
	event("IMPORT " FIDF " src=%s dst=%s archive=%u copy=%s", FIDP(&fid), srcpath, dst,
	      archive_id, copy);
	return 0;
}

/* A FID argument: the whole string must be one FID. */
static int parse_fid_arg(const char *text, struct lu_fid *fid)
{
	char *end = NULL;
	int rc = llapi_fid_parse(text, fid, &end);

	if (rc == 0 && *end != '\0')
		rc = -EINVAL;
	if (rc < 0)
		llapi_error(LLAPI_MSG_ERROR, -rc, "bad FID '%s' (expected [0xSEQ:0xOID:0xVER])",
			    text);
	return rc;
}

/* --rebind OLD NEW: the archive copy of OLD becomes that of NEW. */
static int rebind_one(const struct lu_fid *old_fid, const struct lu_fid *new_fid)
{
	char old_copy[PATH_MAX], new_copy[PATH_MAX];
	unsigned int archive_id = oneshot_archive_id();
	int rc;

	rc = archive_path(old_copy, sizeof(old_copy), archive_id, old_fid);
	if (rc == 0)
		rc = archive_path(new_copy, sizeof(new_copy), archive_id, new_fid);
	if (rc == 0 && access(new_copy, F_OK) == 0)
		rc = -EEXIST;
	if (rc == 0)
		rc = move_copy(old_copy, new_copy);
	if (rc < 0) {
		llapi_error(LLAPI_MSG_ERROR, -rc, "cannot rebind " FIDF " to " FIDF,
			    FIDP(old_fid), FIDP(new_fid));
		return rc;
	}
	make_shadow(new_fid, new_copy);
	event("REBIND " FIDF " " FIDF " copy=%s", FIDP(old_fid), FIDP(new_fid), new_copy);
	return 0;
}

/* --rebind LIST: one "OLD NEW" pair per line (blank lines and #-comments skipped). */
static int rebind_list(const char *list)
{
	char line[1024];
	FILE *f = fopen(list, "r");
	int lineno = 0, failed = 0;

	if (f == NULL) {
		llapi_error(LLAPI_MSG_ERROR, errno, "cannot open rebind list '%s'", list);
		return -errno;
	}
	while (fgets(line, sizeof(line), f) != NULL) {
		struct lu_fid old_fid, new_fid;
		char *p = line, *end = NULL;

		lineno++;
		while (*p == ' ' || *p == '\t')
			p++;
		if (*p == '\n' || *p == '\0' || *p == '#')
			continue;
		if (llapi_fid_parse(p, &old_fid, &end) < 0 ||
		    llapi_fid_parse(end, &new_fid, &end) < 0 ||
		    strspn(end, " \t\r\n") != strlen(end)) {
			llapi_error(LLAPI_MSG_ERROR | LLAPI_MSG_NO_ERRNO, 0,
				    "%s:%d: expected two FIDs, found '%.*s'", list, lineno,
				    (int)strcspn(line, "\n"), line);
			failed++;
			continue;
		}
		if (rebind_one(&old_fid, &new_fid) < 0)
			failed++;
	}
	fclose(f);
	return failed ? -EINVAL : 0;
}

static void usage(FILE *out)
{
	fprintf(out,
		"usage: ctposix [--archive N]... --hsm-root DIR [--threads N | --fork]\n"
		"               [--wait-file PATH] [--no-progress] [--poll] [--chunk-size SIZE]\n"
		"               [--bandwidth BW] [--event-fifo PATH] [--no-shadow] MOUNT\n"
		"       ctposix [--archive N] --hsm-root DIR --import SRC DST MOUNT\n"
		"       ctposix [--archive N] --hsm-root DIR --rebind OLD_FID NEW_FID MOUNT\n"
		"       ctposix [--archive N] --hsm-root DIR --rebind LIST MOUNT\n");
}

static int parse_options(int argc, char **argv)
{
	static const struct option longopts[] = {
		{ "archive", required_argument, NULL, 'A' },
		{ "hsm-root", required_argument, NULL, 'p' },
		{ "hsm_root", required_argument, NULL, 'p' },
		{ "threads", required_argument, NULL, 't' },
		{ "fork", no_argument, NULL, 'F' },
		{ "wait-file", required_argument, NULL, 'w' },
		{ "no-progress", no_argument, NULL, 'N' },
		{ "poll", no_argument, NULL, 'P' },
		{ "chunk-size", required_argument, NULL, 'c' },
		{ "chunk_size", required_argument, NULL, 'c' },
		{ "bandwidth", required_argument, NULL, 'b' },
		{ "event-fifo", required_argument, NULL, 'f' },
		{ "event_fifo", required_argument, NULL, 'f' },
		{ "no-shadow", no_argument, NULL, 'S' },
		{ "no_shadow", no_argument, NULL, 'S' },
		{ "import", no_argument, NULL, 'I' },
		{ "rebind", no_argument, NULL, 'R' },
		{ "help", no_argument, NULL, 'h' },
		{ NULL, 0, NULL, 0 },
	};
	int c;
	char *endp;
	long v;
	unsigned long long value, unit;

	opt.threads = DEFAULT_THREADS;
	opt.chunk = DEFAULT_CHUNK;
	while ((c = getopt_long(argc, argv, "A:p:t:Fw:NPc:b:f:h", longopts, NULL)) != -1) {
		switch (c) {
		case 'A':
			v = strtol(optarg, &endp, 0);
			if (*optarg == '\0' || *endp != '\0' || v < 0 || v > INT_MAX) {
				fprintf(stderr, "ctposix: --archive %s: not an archive id\n", optarg);
				return -1;
			}
			if (opt.archive_count == MAX_ARCHIVES) {
				fprintf(stderr, "ctposix: at most %d --archive options\n",
					MAX_ARCHIVES);
				return -1;
			}
			opt.archives[opt.archive_count++] = (int)v;
			break;
		case 'p':
			opt.hsm_root = optarg;
			break;
		case 't':
			v = strtol(optarg, &endp, 0);
			if (*optarg == '\0' || *endp != '\0' || v < 1 || v > 100000) {
				fprintf(stderr, "ctposix: --threads %s: expected 1 to 100000\n",
					optarg);
				return -1;
			}
			opt.threads = (int)v;
			break;
		case 'F':
			opt.fork_mode = 1;
			break;
		case 'w':
			opt.wait_file = optarg;
			break;
		case 'N':
			opt.no_progress = 1;
			break;
		case 'P':
			opt.poll_mode = 1;
			break;
		case 'c':
			unit = 0; /* a bare number counts bytes */
			if (llapi_parse_size(optarg, &value, &unit, 0) < 0 || value < 1 ||
			    value > MAX_CHUNK) {
				fprintf(stderr,
					"ctposix: --chunk-size %s: expected a size from 1 byte to 1g "
					"(units k, m, g)\n",
					optarg);
				return -1;
			}
			opt.chunk = (size_t)value;
			break;
		case 'b':
			unit = ONE_MB; /* a bare number counts MiB per second */
			if (llapi_parse_size(optarg, &value, &unit, 0) < 0) {
				fprintf(stderr,
					"ctposix: --bandwidth %s: expected a size per second "
					"(MiB by default, units k, m, g, ...)\n",
					optarg);
				return -1;
			}
			opt.bandwidth = value;
			break;
		case 'f':
			opt.event_fifo = optarg;
			break;
		case 'S':
			opt.no_shadow = 1;
			break;
		case 'I':
			opt.import_mode = 1;
			break;
		case 'R':
			opt.rebind_mode = 1;
			break;
		case 'h':
			usage(stdout);
			exit(0);
		default:
			usage(stderr);
			return -1;
		}
	}
	opt.nargs = argc - optind;
	opt.args = argv + optind;
	if (opt.import_mode && opt.rebind_mode) {
		fprintf(stderr, "ctposix: --import and --rebind are exclusive\n");
		return -1;
	}
	if (opt.import_mode && opt.nargs != 3) {
		fprintf(stderr, "ctposix: --import expects SRC DST MOUNT\n");
		usage(stderr);
		return -1;
	}
	if (opt.rebind_mode && opt.nargs != 2 && opt.nargs != 3) {
		fprintf(stderr, "ctposix: --rebind expects OLD_FID NEW_FID MOUNT or LIST MOUNT\n");
		usage(stderr);
		return -1;
	}
	if (!opt.import_mode && !opt.rebind_mode && opt.nargs != 1) {
		fprintf(stderr, "ctposix: expected exactly one MOUNT argument\n");
		usage(stderr);
		return -1;
	}
	if (opt.hsm_root == NULL) {
		fprintf(stderr, "ctposix: --hsm-root is required\n");
		usage(stderr);
		return -1;
	}
	opt.mount = opt.args[opt.nargs - 1];
	return 0;
}

/* Waits until the copytool fd or the signal pipe is readable. */
static void wait_readable(void)
{
	struct pollfd fds[2];

	fds[0].fd = llapi_hsm_copytool_get_fd(ctdata);
	fds[0].events = POLLIN;
	fds[1].fd = sig_pipe[0];
	fds[1].events = POLLIN;
	while (!stop_signal && poll(fds, 2, -1) < 0 && errno == EINTR)
		;
}

int main(int argc, char **argv)
{
	char fsname[LUSTRE_MAXFSNAME + 1];
	char ids[MAX_ARCHIVES * 12 + 4];
	struct sigaction sa;
	size_t off = 0;
	int rc, i, exit_code = 0;

	if (parse_options(argc, argv) < 0)
		return 1;
	running_table = mmap(NULL, sizeof(struct running) * MAX_RUNNING, PROT_READ | PROT_WRITE,
			     MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	if (running_table == MAP_FAILED) {
		perror("ctposix: mmap");
		return 1;
	}
	if (pipe(sig_pipe) < 0) {
		perror("ctposix: pipe");
		return 1;
	}
	fcntl(sig_pipe[1], F_SETFL, O_NONBLOCK);
	/* No SA_RESTART: a blocking recv returns -EINTR and the loop sees the flag. */
	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = on_signal;
	sigemptyset(&sa.sa_mask);
	sigaction(SIGTERM, &sa, NULL);
	sigaction(SIGINT, &sa, NULL);
	sa.sa_handler = on_sigchld;
	sa.sa_flags = SA_RESTART;
	sigaction(SIGCHLD, &sa, NULL);
	signal(SIGPIPE, SIG_IGN);

	llapi_msg_set_level(LLAPI_MSG_INFO);
	rc = mkdir_p(opt.hsm_root);
	if (rc < 0) {
		llapi_error(LLAPI_MSG_FATAL, -rc, "cannot create hsm root '%s'", opt.hsm_root);
		return 1;
	}
	rc = llapi_search_fsname(opt.mount, fsname);
	if (rc < 0) {
		llapi_error(LLAPI_MSG_FATAL, -rc, "cannot find a Lustre filesystem at '%s'",
			    opt.mount);
		return 1;
	}
	mnt_fd = open(opt.mount, O_RDONLY | O_DIRECTORY);
	if (mnt_fd < 0) {
		llapi_error(LLAPI_MSG_FATAL, errno, "cannot open mount point '%s'", opt.mount);
		return 1;
	}
	if (opt.event_fifo != NULL) {
		rc = llapi_hsm_register_event_fifo(opt.event_fifo);
		if (rc < 0) {
			llapi_error(LLAPI_MSG_FATAL, -rc, "cannot open event FIFO '%s'",
				    opt.event_fifo);
			return 1;
		}
		/* From now on the library's and our errors become LOGGED_MESSAGE events. */
		llapi_error_callback_set(llapi_hsm_log_error);
	}
	if (opt.import_mode || opt.rebind_mode) {
		struct lu_fid old_fid, new_fid;

		if (opt.import_mode)
			rc = import_one(opt.args[0], opt.args[1]);
		else if (opt.nargs == 2)
			rc = rebind_list(opt.args[0]);
		else if ((rc = parse_fid_arg(opt.args[0], &old_fid)) == 0 &&
			 (rc = parse_fid_arg(opt.args[1], &new_fid)) == 0)
			rc = rebind_one(&old_fid, &new_fid);
		if (opt.event_fifo != NULL)
			llapi_hsm_unregister_event_fifo(opt.event_fifo);
		close(mnt_fd);
		return rc < 0 ? 1 : 0;
	}
	rc = llapi_hsm_copytool_register(&ctdata, opt.mount, opt.archive_count, opt.archives,
					 opt.poll_mode ? O_NONBLOCK : 0);
	if (rc < 0) {
		llapi_error(LLAPI_MSG_FATAL, -rc, "cannot start copytool interface");
		return 1;
	}
	for (i = 0; i < opt.archive_count; i++)
		off += (size_t)snprintf(ids + off, sizeof(ids) - off, "%s%d", i ? "," : "",
					opt.archives[i]);
	if (opt.archive_count == 0)
		snprintf(ids, sizeof(ids), "ANY");
	event("REGISTER mount=%s fsname=%s archives=%s mode=%s%s", opt.mount, fsname, ids,
	      opt.fork_mode ? "fork" : "threads", opt.poll_mode ? " poll" : "");
	llapi_printf(LLAPI_MSG_INFO, "ctposix: registered on %s (%s)\n", opt.mount, fsname);

	while (!stop_signal) {
		struct hsm_action_list *hal = NULL;
		int msgsize = 0;

		if (opt.poll_mode)
			wait_readable();
		if (stop_signal)
			break;
		rc = llapi_hsm_copytool_recv(ctdata, &hal, &msgsize);
		if (rc == -ESHUTDOWN) {
			event("SHUTDOWN");
			break;
		}
		if (rc == -EAGAIN || rc == -EINTR)
			continue;
		if (rc < 0) {
			event("RECV error rc=%d", rc);
			llapi_error(LLAPI_MSG_ERROR, -rc, "cannot receive action list");
			/* Do not spin on a persistent error. */
			sleep_ms(100);
			continue;
		}
		process_hal(hal, msgsize, fsname);
		if (opt.fork_mode)
			reap_children();
	}
	if (stop_signal)
		event("STOP signal=%d", (int)stop_signal);
	rc = llapi_hsm_copytool_unregister(&ctdata);
	if (rc < 0) {
		llapi_error(LLAPI_MSG_ERROR, -rc, "cannot unregister");
		exit_code = 1;
	}
	if (opt.event_fifo != NULL)
		llapi_hsm_unregister_event_fifo(opt.event_fifo);
	close(mnt_fd);
	return exit_code;
}

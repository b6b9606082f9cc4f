/*
 * A test-only stand-in for liblustreapi.so.1, built by tests/copytool_stub.rs with
 * `cc -shared -Wl,-soname,liblustreapi.so.1`. It follows the documented behaviour of the real
 * copytool functions (lustre-hsm.md §5.3, §6) closely enough to drive the safe Rust API end to
 * end, without any kernel:
 *
 *   - the "mount point" is any existing directory (else -ENOENT, like a non-Lustre mount);
 *   - the kernel side of the KUC pipe is stub_push(mnt, bytes, len): the test writes complete
 *     kuc_hdr + hsm_action_list messages into the pipe of the copytool registered on mnt;
 *   - every call is appended as one line to <mnt>/.stub_log, which the test reads back;
 *   - a file <mnt>/.stub_<call>_errno holding a number N makes that call fail with -N
 *     (register, begin, progress, end).
 *
 * Not the simulated Lustre (that is a later crate): no coordinator, no MDT, no ioctls.
 * SPDX-License-Identifier: MIT OR Apache-2.0
 */
#define _GNU_SOURCE
#include "lustreapi_subset.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#define STUB_MAX_ARCHIVES 64

struct hsm_copytool_private {
	unsigned int magic;
	char *mnt;
	int rfd;
	int wfd;
	int archive_count;
	int archives[STUB_MAX_ARCHIVES];
	unsigned char *buf; /* HAL_MAXSIZE + 8 */
	struct hsm_copytool_private *next;
};

struct hsm_copyaction_private {
	unsigned int magic;
	const struct hsm_copytool_private *ct;
	struct hsm_action_item_fixed hai;
	int data_fd;
};

static pthread_mutex_t registry_lock = PTHREAD_MUTEX_INITIALIZER;
static struct hsm_copytool_private *registry;
static int msg_level = LLAPI_MSG_NORMAL;
static llapi_log_callback_t error_cb;
static llapi_log_callback_t info_cb;

static void stub_log(const char *mnt, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void stub_log(const char *mnt, const char *fmt, ...)
{
	char path[4096];
	FILE *f;
	va_list ap;

	snprintf(path, sizeof(path), "%s/.stub_log", mnt);
	f = fopen(path, "a");
	if (!f)
		return;
	va_start(ap, fmt);
	vfprintf(f, fmt, ap);
	va_end(ap);
	fputc('\n', f);
	fclose(f);
}

/* The errno injected for `call` on `mnt`, 0 if none. */
static int stub_injected(const char *mnt, const char *call)
{
	char path[4096];
	FILE *f;
	int n = 0;

	snprintf(path, sizeof(path), "%s/.stub_%s_errno", mnt, call);
	f = fopen(path, "r");
	if (!f)
		return 0;
	if (fscanf(f, "%d", &n) != 1)
		n = 0;
	fclose(f);
	return n;
}

static int is_dir(const char *path)
{
	struct stat st;

	return path && stat(path, &st) == 0 && S_ISDIR(st.st_mode);
}

/* Test hook: writes a raw message into the pipe of the newest copytool registered on mnt. */
int stub_push(const char *mnt, const void *buf, size_t len)
{
	struct hsm_copytool_private *ct;
	int wfd = -1;
	ssize_t n;

	pthread_mutex_lock(&registry_lock);
	for (ct = registry; ct; ct = ct->next)
		if (strcmp(ct->mnt, mnt) == 0) {
			wfd = ct->wfd;
			break;
		}
	pthread_mutex_unlock(&registry_lock);
	if (wfd < 0)
		return -ENOENT;
	n = write(wfd, buf, len);
	if (n < 0)
		return -errno;
	return n == (ssize_t)len ? 0 : -EIO;
}

int llapi_hsm_copytool_register(struct hsm_copytool_private **priv, const char *mnt,
				int archive_count, int *archives, int rfd_flags)
{
	struct hsm_copytool_private *ct;
	int fds[2];
	int i, rc;

	if (!priv || !mnt || archive_count < 0 || archive_count > STUB_MAX_ARCHIVES)
		return -EINVAL;
	if (archive_count > 0 && !archives)
		return -EINVAL;
	for (i = 0; i < archive_count; i++) {
		if (archives[i] < 0)
			return -EINVAL;
		if (archives[i] == 0)
			archive_count = 0;
	}
	if (!is_dir(mnt))
		return -ENOENT;
	rc = stub_injected(mnt, "register");
	if (rc)
		return -rc;

	ct = calloc(1, sizeof(*ct));
	if (!ct)
		return -ENOMEM;
	ct->buf = malloc(HAL_MAXSIZE + 8);
	ct->mnt = strdup(mnt);
	if (!ct->buf || !ct->mnt || pipe(fds) < 0) {
		free(ct->buf);
		free(ct->mnt);
		free(ct);
		return -ENOMEM;
	}
	if (fcntl(fds[0], F_SETFL, rfd_flags) < 0) {
		rc = -errno;
		close(fds[0]);
		close(fds[1]);
		free(ct->buf);
		free(ct->mnt);
		free(ct);
		return rc;
	}
	ct->magic = CT_PRIV_MAGIC;
	ct->rfd = fds[0];
	ct->wfd = fds[1];
	ct->archive_count = archive_count;
	for (i = 0; i < archive_count; i++)
		ct->archives[i] = archives[i];

	pthread_mutex_lock(&registry_lock);
	ct->next = registry;
	registry = ct;
	pthread_mutex_unlock(&registry_lock);

	{
		char ids[STUB_MAX_ARCHIVES * 12] = "";
		size_t off = 0;

		for (i = 0; i < archive_count && off < sizeof(ids); i++)
			off += snprintf(ids + off, sizeof(ids) - off, "%s%d", i ? "," : "",
					archives[i]);
		stub_log(mnt, "register count=%d ids=%s nonblock=%d", archive_count, ids,
			 (rfd_flags & O_NONBLOCK) ? 1 : 0);
	}
	*priv = ct;
	return 0;
}

int llapi_hsm_copytool_unregister(struct hsm_copytool_private **priv)
{
	struct hsm_copytool_private *ct, **pp;

	if (!priv || !*priv || (*priv)->magic != CT_PRIV_MAGIC)
		return -EINVAL;
	ct = *priv;
	pthread_mutex_lock(&registry_lock);
	for (pp = &registry; *pp; pp = &(*pp)->next)
		if (*pp == ct) {
			*pp = ct->next;
			break;
		}
	pthread_mutex_unlock(&registry_lock);
	close(ct->rfd);
	close(ct->wfd);
	stub_log(ct->mnt, "unregister");
	ct->magic = 0;
	free(ct->buf);
	free(ct->mnt);
	free(ct);
	*priv = NULL;
	return 0;
}

int llapi_hsm_copytool_get_fd(struct hsm_copytool_private *ct)
{
	if (!ct || ct->magic != CT_PRIV_MAGIC)
		return -EINVAL;
	return ct->rfd;
}

/* Reads exactly len bytes; -EAGAIN if nothing at all was available in non-blocking mode. */
static int read_full(int fd, unsigned char *buf, size_t len, int may_eagain)
{
	size_t done = 0;

	while (done < len) {
		ssize_t n = read(fd, buf + done, len - done);

		if (n > 0) {
			done += (size_t)n;
			continue;
		}
		if (n == 0)
			return -EPIPE;
		if (errno == EINTR)
			continue;
		if (errno == EAGAIN) {
			struct pollfd p = { .fd = fd, .events = POLLIN };

			if (done == 0 && may_eagain)
				return -EAGAIN;
			poll(&p, 1, -1);
			continue;
		}
		return -errno;
	}
	return 0;
}

int llapi_hsm_copytool_recv(struct hsm_copytool_private *ct, struct hsm_action_list **halh,
			    int *msgsize)
{
	struct kuc_hdr *kuch;
	struct hsm_action_list *hal;
	int rc, i, keep;

	if (!ct || ct->magic != CT_PRIV_MAGIC || !halh || !msgsize)
		return -EINVAL;
	*halh = NULL;
	*msgsize = 0;
	kuch = (struct kuc_hdr *)ct->buf;
	for (;;) {
		memset(ct->buf, 0, sizeof(*kuch));
		rc = read_full(ct->rfd, ct->buf, sizeof(*kuch), 1);
		if (rc)
			return rc;
		if (kuch->kuc_magic != KUC_MAGIC || kuch->kuc_msglen < sizeof(*kuch))
			return -EPROTO;
		rc = read_full(ct->rfd, ct->buf + sizeof(*kuch), kuch->kuc_msglen - sizeof(*kuch), 0);
		if (rc)
			return rc;
		if (kuch->kuc_transport == KUC_TRANSPORT_GENERIC &&
		    kuch->kuc_msgtype == KUC_MSG_SHUTDOWN)
			return -ESHUTDOWN;
		if (kuch->kuc_transport != KUC_TRANSPORT_HSM ||
		    kuch->kuc_msgtype != HMT_ACTION_LIST)
			return -EPROTO;
		if (kuch->kuc_msglen < sizeof(*kuch) + sizeof(struct hsm_action_list))
			return -EPROTO;
		hal = (struct hsm_action_list *)(ct->buf + sizeof(*kuch));
		keep = ct->archive_count == 0;
		for (i = 0; i < ct->archive_count; i++)
			if ((uint32_t)ct->archives[i] == hal->hal_archive_id)
				keep = 1;
		if (!keep) {
			stub_log(ct->mnt, "recv filtered archive=%u", hal->hal_archive_id);
			continue;
		}
		*halh = hal;
		*msgsize = kuch->kuc_msglen - sizeof(*kuch);
		stub_log(ct->mnt, "recv size=%d count=%u", *msgsize, hal->hal_count);
		return 0;
	}
}

static void fid_path(char *out, size_t len, const char *mnt, const struct lu_fid *fid)
{
	snprintf(out, len, "%s/.lustre/fid/%#llx:0x%x:0x%x", mnt, (unsigned long long)fid->f_seq,
		 fid->f_oid, fid->f_ver);
}

int llapi_hsm_action_begin(struct hsm_copyaction_private **phcp,
			   const struct hsm_copytool_private *ct,
			   const struct hsm_action_item *hai, int restore_mdt_index,
			   int restore_open_flags, bool is_error)
{
	struct hsm_copyaction_private *hcp;
	char path[4096];
	int rc;

	if (!phcp || !ct || !hai)
		return -EINVAL;
	hcp = calloc(1, sizeof(*hcp));
	if (!hcp)
		return -ENOMEM;
	hcp->magic = CP_PRIV_MAGIC;
	hcp->ct = ct;
	hcp->data_fd = -1;
	memcpy(&hcp->hai, hai, sizeof(hcp->hai));
	hcp->hai.hai_len = sizeof(hcp->hai);
	stub_log(ct->mnt, "begin cookie=%#llx action=%u hai_len=%u mdt=%d oflags=%d is_error=%d",
		 (unsigned long long)hai->hai_cookie, hai->hai_action, hai->hai_len,
		 restore_mdt_index, restore_open_flags, is_error ? 1 : 0);
	if (is_error)
		goto out;
	rc = stub_injected(ct->mnt, "begin");
	if (rc) {
		free(hcp);
		return -rc;
	}
	if (hai->hai_action == HSMA_ARCHIVE) {
		struct lu_fid dfid = hai->hai_dfid;

		fid_path(path, sizeof(path), ct->mnt, &dfid);
		hcp->data_fd = open(path, O_RDONLY | O_NOFOLLOW | O_NONBLOCK);
		if (hcp->data_fd < 0) {
			rc = -errno;
			free(hcp);
			return rc;
		}
	} else if (hai->hai_action == HSMA_RESTORE) {
		snprintf(path, sizeof(path), "%s/.stub_volatile_XXXXXX", ct->mnt);
		hcp->data_fd = mkstemp(path);
		if (hcp->data_fd < 0) {
			rc = -errno;
			free(hcp);
			return rc;
		}
		unlink(path);
		/* The volatile's FID: recognisable, derived from the cookie. */
		hcp->hai.hai_dfid.f_seq = 0xf00000000ULL;
		hcp->hai.hai_dfid.f_oid = (uint32_t)hai->hai_cookie;
		hcp->hai.hai_dfid.f_ver = 0;
	}
out:
	*phcp = hcp;
	return 0;
}

int llapi_hsm_action_progress(struct hsm_copyaction_private *hcp, const struct hsm_extent *he,
			      uint64_t total, int hp_flags)
{
	int rc;

	if (!hcp || hcp->magic != CP_PRIV_MAGIC || !he)
		return -EINVAL;
	if (he->length != 0 && he->offset + he->length - 1 < he->offset)
		return -EINVAL;
	stub_log(hcp->ct->mnt, "progress cookie=%#llx offset=%llu length=%llu total=%llu flags=%d",
		 (unsigned long long)hcp->hai.hai_cookie, (unsigned long long)he->offset,
		 (unsigned long long)he->length, (unsigned long long)total, hp_flags);
	rc = stub_injected(hcp->ct->mnt, "progress");
	return -rc;
}

int llapi_hsm_action_end(struct hsm_copyaction_private **phcp, const struct hsm_extent *he,
			 int hp_flags, int errval)
{
	struct hsm_copyaction_private *hcp;
	int rc;

	if (!phcp || !*phcp || !he || (*phcp)->magic != CP_PRIV_MAGIC)
		return -EINVAL;
	hcp = *phcp;
	stub_log(hcp->ct->mnt, "end cookie=%#llx offset=%llu length=%llu flags=%d errval=%d",
		 (unsigned long long)hcp->hai.hai_cookie, (unsigned long long)he->offset,
		 (unsigned long long)he->length, hp_flags, abs(errval));
	rc = stub_injected(hcp->ct->mnt, "end");
	if (hcp->data_fd >= 0)
		close(hcp->data_fd);
	hcp->magic = 0;
	free(hcp);
	*phcp = NULL;
	return -rc;
}

int llapi_hsm_action_get_dfid(const struct hsm_copyaction_private *hcp, struct lu_fid *fid)
{
	if (hcp->magic != CP_PRIV_MAGIC)
		return -EINVAL;
	if (hcp->hai.hai_action != HSMA_ARCHIVE && hcp->hai.hai_action != HSMA_RESTORE)
		return -EINVAL;
	*fid = hcp->hai.hai_dfid;
	return 0;
}

int llapi_hsm_action_get_fd(const struct hsm_copyaction_private *hcp)
{
	int fd;

	if (!hcp || hcp->magic != CP_PRIV_MAGIC)
		return -EINVAL;
	if (hcp->hai.hai_action != HSMA_ARCHIVE && hcp->hai.hai_action != HSMA_RESTORE)
		return -EINVAL;
	fd = dup(hcp->data_fd);
	return fd < 0 ? -errno : fd;
}

struct hsm_user_request *llapi_hsm_user_request_alloc(int itemcount, int data_len)
{
	if (itemcount < 0 || data_len < 0)
		return NULL;
	return calloc(1, sizeof(struct hsm_request) +
			 (size_t)itemcount * sizeof(struct hsm_user_item) + (size_t)data_len);
}

int llapi_hsm_request(const char *path, const struct hsm_user_request *request)
{
	char line[8192];
	size_t off;
	uint32_t i;
	const unsigned char *data;

	if (!path || !request)
		return -EINVAL;
	if (!is_dir(path))
		return -ENOENT;
	off = (size_t)snprintf(line, sizeof(line), "request action=%u archive=%u flags=%llu items=",
			       request->hur_request.hr_action, request->hur_request.hr_archive_id,
			       (unsigned long long)request->hur_request.hr_flags);
	for (i = 0; i < request->hur_request.hr_itemcount && off < sizeof(line); i++) {
		struct hsm_user_item item = request->hur_user_item[i];

		off += (size_t)snprintf(line + off, sizeof(line) - off, "%s[%#llx:0x%x:0x%x]@%llu+%llu",
					i ? "," : "", (unsigned long long)item.hui_fid.f_seq,
					item.hui_fid.f_oid, item.hui_fid.f_ver,
					(unsigned long long)item.hui_extent.offset,
					(unsigned long long)item.hui_extent.length);
	}
	data = (const unsigned char *)&request->hur_user_item[request->hur_request.hr_itemcount];
	if (off < sizeof(line))
		off += (size_t)snprintf(line + off, sizeof(line) - off, " data=");
	for (i = 0; i < request->hur_request.hr_data_len && off < sizeof(line); i++)
		off += (size_t)snprintf(line + off, sizeof(line) - off, "%02x", data[i]);
	stub_log(path, "%s", line);
	return 0;
}

static int stat_path(const char *path)
{
	struct stat st;

	if (!path)
		return -EINVAL;
	return stat(path, &st) == 0 ? 0 : -errno;
}

int llapi_hsm_current_action(const char *path, struct hsm_current_action *hca)
{
	int rc = stat_path(path);

	if (rc)
		return rc;
	hca->hca_state = HPS_WAITING;
	hca->hca_action = HUA_ARCHIVE;
	hca->hca_location.offset = 4096;
	hca->hca_location.length = 8192;
	return 0;
}

static void fill_state(struct hsm_user_state *hus)
{
	memset(hus, 0, sizeof(*hus));
	hus->hus_states = HS_EXISTS | HS_ARCHIVED;
	hus->hus_archive_id = 3;
	hus->hus_in_progress_state = HPS_RUNNING;
	hus->hus_in_progress_action = HUA_RESTORE;
	hus->hus_in_progress_location.offset = 0;
	hus->hus_in_progress_location.length = LUSTRE_EOF;
}

int llapi_hsm_state_get_fd(int fd, struct hsm_user_state *hus)
{
	struct stat st;

	if (fstat(fd, &st) < 0)
		return -errno;
	fill_state(hus);
	return 0;
}

int llapi_hsm_state_get(const char *path, struct hsm_user_state *hus)
{
	int rc = stat_path(path);

	if (rc)
		return rc;
	fill_state(hus);
	return 0;
}

int llapi_hsm_state_set_fd(int fd, uint64_t setmask, uint64_t clearmask, uint32_t archive_id)
{
	(void)fd;
	(void)setmask;
	(void)clearmask;
	(void)archive_id;
	return -ENOTSUP;
}

int llapi_hsm_state_set(const char *path, uint64_t setmask, uint64_t clearmask,
			uint32_t archive_id)
{
	if (!is_dir(path))
		return -ENOENT;
	stub_log(path, "state_set set=%#llx clear=%#llx archive=%u", (unsigned long long)setmask,
		 (unsigned long long)clearmask, archive_id);
	return 0;
}

int llapi_hsm_register_event_fifo(const char *path)
{
	(void)path;
	return 0;
}

int llapi_hsm_unregister_event_fifo(const char *path)
{
	(void)path;
	return 0;
}

void llapi_hsm_log_error(enum llapi_message_level level, int _rc, const char *fmt, va_list args)
{
	(void)level;
	(void)_rc;
	(void)fmt;
	(void)args;
}

void llapi_msg_set_level(int level)
{
	msg_level = level;
}

int llapi_msg_get_level(void)
{
	return msg_level;
}

llapi_log_callback_t llapi_error_callback_set(llapi_log_callback_t cb)
{
	llapi_log_callback_t old = error_cb;

	error_cb = cb;
	return old;
}

llapi_log_callback_t llapi_info_callback_set(llapi_log_callback_t cb)
{
	llapi_log_callback_t old = info_cb;

	info_cb = cb;
	return old;
}

void llapi_error(enum llapi_message_level level, int err, const char *fmt, ...)
{
	va_list ap;

	if ((int)(level & LLAPI_MSG_MASK) > msg_level)
		return;
	va_start(ap, fmt);
	if (error_cb) {
		error_cb(level, err, fmt, ap);
	} else {
		vfprintf(stderr, fmt, ap);
		fputc('\n', stderr);
	}
	va_end(ap);
}

void llapi_printf(enum llapi_message_level level, const char *fmt, ...)
{
	va_list ap;

	if ((int)(level & LLAPI_MSG_MASK) > msg_level)
		return;
	va_start(ap, fmt);
	if (info_cb)
		info_cb(level, 0, fmt, ap);
	else
		vfprintf(stdout, fmt, ap);
	va_end(ap);
}

int llapi_search_fsname(const char *pathname, char *fsname)
{
	if (!is_dir(pathname))
		return -ENOENT;
	strcpy(fsname, "stubfs");
	return 0;
}

int llapi_get_mdt_index_by_fid(int fd, const struct lu_fid *fid, int *mdt_index)
{
	struct stat st;

	if (fstat(fd, &st) < 0)
		return -errno;
	*mdt_index = (int)(fid->f_seq & 3);
	return 0;
}

int llapi_fid2path(const char *device, const char *fidstr, char *path, int pathlen,
		   long long *recno, int *linkno)
{
	unsigned long long seq;
	unsigned int oid, ver;

	if (!is_dir(device))
		return -ENOENT;
	if (!recno || !linkno || *recno != -1 || *linkno != 0)
		return -EINVAL;
	if (sscanf(fidstr, "[0x%llx:0x%x:0x%x]", &seq, &oid, &ver) != 3)
		return -EINVAL;
	if (snprintf(path, (size_t)pathlen, "dir/%llx/%x", seq, oid) >= pathlen)
		return -ERANGE;
	return 0;
}

static void ino_fid(const struct stat *st, struct lu_fid *fid)
{
	fid->f_seq = 0x200000401ULL;
	fid->f_oid = (uint32_t)st->st_ino;
	fid->f_ver = 0;
}

int llapi_path2fid(const char *path, struct lu_fid *fid)
{
	struct stat st;

	if (stat(path, &st) < 0)
		return -errno;
	ino_fid(&st, fid);
	return 0;
}

int llapi_fd2fid(int fd, struct lu_fid *fid)
{
	struct stat st;

	if (fstat(fd, &st) < 0)
		return -errno;
	ino_fid(&st, fid);
	return 0;
}

/*
 * A minimal liblustreapi.so.1 for the preload's tests: the action functions the preload finds
 * with dlsym(RTLD_NEXT), checking that the copytool handle they get has Lustre's layout
 * (mnt, mnt_fd and open_by_fid_fd usable), plus the log and fsname helpers. The copytool
 * entry points fail with -ENOSYS, so a test that runs without the preload fails loudly.
 *
 * SPDX-License-Identifier: MIT OR Apache-2.0
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "lustreapi_subset.h"

#define STUB_CP_MAGIC 0x19880429U
/* Cookies with this value in their top 32 bits make action_begin fail with -ENOENT. */
#define STUB_BEGIN_FAILS 0xBADBADULL

struct hsm_copyaction_private {
	uint32_t magic;
	struct hsm_action_item_fixed hai;
};

static int level = LLAPI_MSG_NORMAL;

static int check_ct(const struct hsm_copytool_private *ct)
{
	const struct hsm_copytool_private_layout *l = (const void *)ct;
	struct stat a, b;
	char path[4096];

	if (l == NULL || l->mnt == NULL)
		return -EINVAL;
	/* The real functions use these three fields: they must be valid. */
	if (fstat(l->mnt_fd, &a) != 0 || stat(l->mnt, &b) != 0 || a.st_ino != b.st_ino)
		return -EBADF;
	snprintf(path, sizeof(path), "%s/.lustre/fid", l->mnt);
	if (fstat(l->open_by_fid_fd, &a) != 0 || stat(path, &b) != 0 || a.st_ino != b.st_ino)
		return -EBADF;
	return 0;
}

int llapi_hsm_action_begin(struct hsm_copyaction_private **phcp,
			   const struct hsm_copytool_private *ct,
			   const struct hsm_action_item *hai, int restore_mdt_index,
			   int restore_open_flags, bool is_error)
{
	struct hsm_copyaction_private *hcp;
	uint64_t cookie;
	int rc;

	(void)restore_mdt_index;
	(void)restore_open_flags;
	if (phcp == NULL || hai == NULL)
		return -EINVAL;
	rc = check_ct(ct);
	if (rc)
		return rc;
	memcpy(&cookie, &hai->hai_cookie, sizeof(cookie));
	if (!is_error && (cookie >> 32) == STUB_BEGIN_FAILS)
		return -ENOENT;
	hcp = calloc(1, sizeof(*hcp));
	if (hcp == NULL)
		return -ENOMEM;
	hcp->magic = STUB_CP_MAGIC;
	memcpy(&hcp->hai, hai, sizeof(hcp->hai));
	*phcp = hcp;
	return 0;
}

int llapi_hsm_action_end(struct hsm_copyaction_private **phcp, const struct hsm_extent *he,
			 int hp_flags, int errval)
{
	(void)hp_flags;
	(void)errval;
	if (phcp == NULL || *phcp == NULL || he == NULL || (*phcp)->magic != STUB_CP_MAGIC)
		return -EINVAL;
	(*phcp)->magic = 0;
	free(*phcp);
	*phcp = NULL;
	return 0;
}

int llapi_hsm_copytool_register(struct hsm_copytool_private **priv, const char *mnt,
				int archive_count, int *archives, int rfd_flags)
{
	(void)priv; (void)mnt; (void)archive_count; (void)archives; (void)rfd_flags;
	return -ENOSYS;
}

int llapi_hsm_copytool_unregister(struct hsm_copytool_private **priv)
{
	(void)priv;
	return -ENOSYS;
}

int llapi_hsm_copytool_get_fd(struct hsm_copytool_private *ct)
{
	(void)ct;
	return -ENOSYS;
}

int llapi_hsm_copytool_recv(struct hsm_copytool_private *priv, struct hsm_action_list **hal,
			    int *msgsize)
{
	(void)priv; (void)hal; (void)msgsize;
	return -ENOSYS;
}

void llapi_msg_set_level(int l)
{
	level = l;
}

int llapi_msg_get_level(void)
{
	return level;
}

void llapi_error(enum llapi_message_level lvl, int err, const char *fmt, ...)
{
	va_list ap;

	if ((int)(lvl & LLAPI_MSG_MASK) > level)
		return;
	va_start(ap, fmt);
	fprintf(stderr, "llapi: ");
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	if (err && !(lvl & LLAPI_MSG_NO_ERRNO))
		fprintf(stderr, ": %s (%d)", strerror(err), err);
	fprintf(stderr, "\n");
}

int llapi_search_fsname(const char *pathname, char *fsname)
{
	(void)pathname;
	strcpy(fsname, "testfs");
	return 0;
}

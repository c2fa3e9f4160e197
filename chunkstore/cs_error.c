/*
 * cs_error.c — the store's error codes: names for them, and translation of LMDB's codes.
 *
 * Design notes:
 * - A file that cannot grow fails a write in one of two ways. When not a byte fits, write()
 *   returns ENOSPC (full file system), EFBIG (the process's file size limit, RLIMIT_FSIZE) or
 *   EDQUOT; these map to CS_EFULL directly. When part of a write fits, write() returns a short
 *   count, which LMDB reports as EIO. cs__write_err tells that case apart from a failing device
 *   by looking, right after the failure, at the data file and its file system: a file at the
 *   size limit, or a file system with (almost) no free block left, makes it CS_EFULL.
 */
#include "cs_internal.h"

#include <errno.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <unistd.h>

const char *cs_strerror(int err)
{
    switch (err) {
    case 0: return "success";
    case CS_ECORRUPT: return "stored data is corrupt (content does not match its id)";
    case CS_ENOTFOUND: return "not found";
    case CS_EFORMAT: return "malformed input";
    case CS_EVERSION: return "written by an unsupported version";
    case CS_EFULL: return "no space left (disk or file size limit full)";
    case CS_ELMDB: return "LMDB failure";
    case CS_EZSTD: return "compression failed";
    case CS_EBUSY: return "busy: another process holds the store's lock";
    case CS_EMISSING: return "the store lacks chunks or a parent manifest this needs";
    }
    if (err < 0 && err > -4096) return strerror(-err);
    return "unknown error";
}

int cs__lmdb_err(int rc)
{
    switch (rc) {
    case MDB_SUCCESS: return 0;
    case MDB_NOTFOUND: return CS_ENOTFOUND;
    case MDB_CORRUPTED:
    case MDB_PAGE_NOTFOUND:
    case MDB_BAD_TXN: /* a transaction that hit a fatal error */
        return CS_ECORRUPT;
    case MDB_VERSION_MISMATCH:
    case MDB_INVALID: return CS_EVERSION;
    case ENOSPC:
    case EFBIG:
    case EDQUOT: return CS_EFULL;
    }
    if (rc > 0) return -rc;
    return CS_ELMDB;
}

/* After a short write the file system has less than a block free, or the file ends at the size
 * limit; this much slack absorbs blocks a file system keeps for its own metadata. */
#define FULL_SLACK (1u << 20)

int cs__write_err(cs_store *st, int rc)
{
    if (rc != -EIO) return rc;
    int fd;
    if (mdb_env_get_fd(st->env, &fd) != 0) return rc;
    struct stat sb;
    struct rlimit rl;
    if (fstat(fd, &sb) == 0 && getrlimit(RLIMIT_FSIZE, &rl) == 0 && rl.rlim_cur != RLIM_INFINITY &&
        (uint64_t)sb.st_size + FULL_SLACK >= (uint64_t)rl.rlim_cur)
        return CS_EFULL;
    struct statvfs vfs;
    if (fstatvfs(fd, &vfs) == 0) {
        /* root may write into the blocks a file system reserves; others may not */
        uint64_t blocks = geteuid() == 0 ? (uint64_t)vfs.f_bfree : (uint64_t)vfs.f_bavail;
        if (blocks * vfs.f_frsize < FULL_SLACK) return CS_EFULL;
    }
    return rc;
}

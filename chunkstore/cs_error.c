#include "cs_internal.h"

#include <errno.h>
#include <string.h>

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

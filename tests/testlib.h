/*
 * testlib.h — the small harness every cloudlet test program uses.
 *
 * A test program holds several cases; ctest runs each case in its own process
 * (`prog CASE`), so one crash or hang never hides another result. Checks abort the
 * case with the file, line and values on failure.
 */
#ifndef CLOUDLET_TESTLIB_H
#define CLOUDLET_TESTLIB_H

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct tl_case {
    const char *name;
    void (*fn)(void);
};

#define TL_FAIL(...)                                                                               \
    do {                                                                                           \
        fprintf(stderr, "%s:%d: ", __FILE__, __LINE__);                                            \
        fprintf(stderr, __VA_ARGS__);                                                              \
        fputc('\n', stderr);                                                                       \
        abort();                                                                                   \
    } while (0)

#define CHECK(cond)                                                                                \
    do {                                                                                           \
        if (!(cond)) TL_FAIL("check failed: %s", #cond);                                           \
    } while (0)

#define CHECK_EQ(a, b)                                                                             \
    do {                                                                                           \
        long long tl_a_ = (long long)(a), tl_b_ = (long long)(b);                                  \
        if (tl_a_ != tl_b_) TL_FAIL("%s == %s: %lld != %lld", #a, #b, tl_a_, tl_b_);               \
    } while (0)

#define CHECK_MEM(a, b, n)                                                                         \
    do {                                                                                           \
        if (memcmp((a), (b), (n)) != 0) TL_FAIL("bytes of %s and %s differ", #a, #b);             \
    } while (0)

#define CHECK_STR(a, b)                                                                            \
    do {                                                                                           \
        const char *tl_a_ = (a), *tl_b_ = (b);                                                     \
        if (strcmp(tl_a_, tl_b_) != 0) TL_FAIL("%s == %s: \"%s\" != \"%s\"", #a, #b, tl_a_, tl_b_); \
    } while (0)

/* For calls returning 0 or a negative error code. */
#define CHECK_OK(expr)                                                                             \
    do {                                                                                           \
        long long tl_r_ = (long long)(expr);                                                       \
        if (tl_r_ != 0) TL_FAIL("%s returned %lld", #expr, tl_r_);                                 \
    } while (0)

#define TL_MAIN(...)                                                                               \
    int main(int argc, char **argv)                                                                \
    {                                                                                              \
        static const struct tl_case tl_cases_[] = {__VA_ARGS__};                                   \
        size_t tl_n_ = sizeof tl_cases_ / sizeof tl_cases_[0];                                     \
        for (size_t i = 0; i < tl_n_; i++) {                                                       \
            if (argc < 2 || strcmp(argv[1], tl_cases_[i].name) == 0) {                             \
                tl_cases_[i].fn();                                                                 \
                if (argc >= 2) return 0;                                                           \
            }                                                                                      \
        }                                                                                          \
        if (argc >= 2) {                                                                           \
            fprintf(stderr, "no test case named %s\n", argv[1]);                                   \
            return 2;                                                                              \
        }                                                                                          \
        return 0;                                                                                  \
    }

#define TL_CASE(fn) {#fn, fn}

/* A fresh directory under $TMPDIR (or /tmp), removed by tl_rmtree. Returns a malloc'd path. */
char *tl_tmpdir(void);
/* rm -rf path. */
void tl_rmtree(const char *path);
/* Deterministic pseudo-random bytes (xorshift), for reproducible test data. */
void tl_fill_random(void *buf, size_t len, uint64_t seed);

#endif

/* Key files, their text format, and the keys derived from the fleet key (docs/keys.md). */
#define _GNU_SOURCE
#include "node.h"
#include "testlib.h"

#include <dirent.h>
#include <sodium.h>
#include <sys/stat.h>
#include <unistd.h>

static char *path_in(const char *dir, const char *name)
{
    char *p = NULL;
    if (asprintf(&p, "%s/%s", dir, name) < 0) abort();
    return p;
}

static void write_text(const char *path, const char *text, mode_t mode)
{
    FILE *f = fopen(path, "w");
    CHECK(f);
    fputs(text, f);
    CHECK_EQ(fclose(f), 0);
    CHECK_EQ(chmod(path, mode), 0);
}

static mode_t mode_of(const char *path)
{
    struct stat sb;
    CHECK_EQ(stat(path, &sb), 0);
    return sb.st_mode & 07777;
}

/* How many names dir holds, besides . and .. */
static int count_entries(const char *dir)
{
    DIR *d = opendir(dir);
    CHECK(d);
    int n = 0;
    for (struct dirent *e; (e = readdir(d));)
        if (strcmp(e->d_name, ".") && strcmp(e->d_name, "..")) n++;
    closedir(d);
    return n;
}

static void sample_key(uint8_t key[NODE_KEY_BYTES], uint64_t seed)
{
    tl_fill_random(key, NODE_KEY_BYTES, seed);
}

static void every_kind_survives_a_round_trip_through_its_file(void)
{
    char *dir = tl_tmpdir();
    for (int kind = NODE_KEY_NODE_SECRET; kind <= NODE_KEY_CLIENT; kind++) {
        uint8_t key[NODE_KEY_BYTES], back[NODE_KEY_BYTES];
        char err[NODE_ERRMSG];
        sample_key(key, 100 + (uint64_t)kind);
        char *p = path_in(dir, "k");
        CHECK_OK(node_key_write(p, (node_key_kind)kind, key, true, err));
        CHECK_OK(node_key_read(p, (node_key_kind)kind, true, back, err));
        CHECK_MEM(key, back, NODE_KEY_BYTES);
        free(p);
    }
    tl_rmtree(dir);
    free(dir);
}

static void the_text_is_the_kind_a_colon_and_lowercase_hex(void)
{
    uint8_t key[NODE_KEY_BYTES];
    for (int i = 0; i < NODE_KEY_BYTES; i++) key[i] = (uint8_t)(0xa0 + i);
    char text[NODE_KEY_TEXT];
    CHECK_STR(
        node_key_encode(NODE_KEY_FLEET, key, text),
        "cloudlet-fleet-key:a0a1a2a3a4a5a6a7a8a9aaabacadaeafb0b1b2b3b4b5b6b7b8b9babbbcbdbebf");
    CHECK(!strncmp(node_key_encode(NODE_KEY_NODE_SECRET, key, text),
                   "cloudlet-node-secret-key:", 25));
    CHECK(!strncmp(node_key_encode(NODE_KEY_NODE_PUBLIC, key, text), "cloudlet-node-key:", 18));
    CHECK(!strncmp(node_key_encode(NODE_KEY_CLIENT, key, text), "cloudlet-client-key:", 20));

    char *dir = tl_tmpdir(), *p = path_in(dir, "fleet.key"), err[NODE_ERRMSG];
    CHECK_OK(node_key_write(p, NODE_KEY_FLEET, key, false, err));
    FILE *f = fopen(p, "r");
    char line[256] = "";
    CHECK(fgets(line, sizeof line, f));
    fclose(f);
    char want[NODE_KEY_TEXT + 1];
    snprintf(want, sizeof want, "%s\n", node_key_encode(NODE_KEY_FLEET, key, text));
    CHECK_STR(line, want);
    tl_rmtree(dir);
    free(dir);
    free(p);
}

static void whitespace_around_the_line_and_uppercase_hex_are_accepted(void)
{
    uint8_t key[NODE_KEY_BYTES], back[NODE_KEY_BYTES];
    char text[NODE_KEY_TEXT], buf[256], err[NODE_ERRMSG];
    sample_key(key, 7);
    node_key_encode(NODE_KEY_FLEET, key, text);
    snprintf(buf, sizeof buf, "  \t%s\r\n\n", text); /* pasted from elsewhere */
    CHECK_OK(node_key_decode(buf, strlen(buf), NODE_KEY_FLEET, back, err));
    CHECK_MEM(key, back, NODE_KEY_BYTES);
    for (char *c = strchr(text, ':'); *c; c++)
        if (*c >= 'a' && *c <= 'f') *c = (char)(*c - 'a' + 'A');
    CHECK_OK(node_key_decode(text, strlen(text), NODE_KEY_FLEET, back, err));
    CHECK_MEM(key, back, NODE_KEY_BYTES);
}

static void secret_key_files_are_0600_and_public_ones_0644_whatever_the_umask(void)
{
    char *dir = tl_tmpdir(), err[NODE_ERRMSG];
    uint8_t key[NODE_KEY_BYTES];
    sample_key(key, 3);
    mode_t old = umask(0);
    char *s = path_in(dir, "s"), *f = path_in(dir, "f"), *pub = path_in(dir, "p");
    CHECK_OK(node_key_write(s, NODE_KEY_NODE_SECRET, key, false, err));
    CHECK_OK(node_key_write(f, NODE_KEY_FLEET, key, false, err));
    CHECK_OK(node_key_write(pub, NODE_KEY_NODE_PUBLIC, key, false, err));
    umask(077);
    CHECK_OK(node_key_write(pub, NODE_KEY_NODE_PUBLIC, key, true, err));
    umask(old);
    CHECK_EQ(mode_of(s), 0600);
    CHECK_EQ(mode_of(f), 0600);
    CHECK_EQ(mode_of(pub), 0644);
    tl_rmtree(dir);
    free(dir), free(s), free(f), free(pub);
}

static void a_secret_key_others_can_read_is_refused_naming_the_file_and_the_chmod(void)
{
    char *dir = tl_tmpdir(), err[NODE_ERRMSG], want[512];
    uint8_t key[NODE_KEY_BYTES];
    sample_key(key, 4);
    char *p = path_in(dir, "fleet.key");
    CHECK_OK(node_key_write(p, NODE_KEY_FLEET, key, false, err));
    static const mode_t bad[] = {0644, 0640, 0604, 0620, 0602};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        CHECK_EQ(chmod(p, bad[i]), 0);
        err[0] = '\0';
        CHECK_EQ(node_key_read(p, NODE_KEY_FLEET, true, key, err), -EACCES);
        snprintf(want, sizeof want, "run `chmod 600 %s`", p);
        if (!strstr(err, want) || strncmp(err, p, strlen(p)) != 0) TL_FAIL("message: %s", err);
    }
    /* A copy handed over between nodes is read without the check. */
    CHECK_OK(node_key_read(p, NODE_KEY_FLEET, false, key, err));
    /* 0400 is private too. */
    CHECK_EQ(chmod(p, 0400), 0);
    CHECK_OK(node_key_read(p, NODE_KEY_FLEET, true, key, err));
    /* A public key may be read by anyone. */
    char *pub = path_in(dir, "node.pub");
    CHECK_OK(node_key_write(pub, NODE_KEY_NODE_PUBLIC, key, false, err));
    CHECK_OK(node_key_read(pub, NODE_KEY_NODE_PUBLIC, true, key, err));
    tl_rmtree(dir);
    free(dir), free(p), free(pub);
}

static void a_key_of_another_kind_is_refused_naming_both_kinds(void)
{
    uint8_t key[NODE_KEY_BYTES];
    char text[NODE_KEY_TEXT], err[NODE_ERRMSG];
    sample_key(key, 5);
    node_key_encode(NODE_KEY_CLIENT, key, text);
    CHECK_EQ(node_key_decode(text, strlen(text), NODE_KEY_FLEET, key, err), CS_EFORMAT);
    if (!strstr(err, "client key") || !strstr(err, "not a fleet key")) TL_FAIL("message: %s", err);
    node_key_encode(NODE_KEY_NODE_PUBLIC, key, text);
    CHECK_EQ(node_key_decode(text, strlen(text), NODE_KEY_NODE_SECRET, key, err), CS_EFORMAT);
    if (!strstr(err, "node public key") || !strstr(err, "not a node secret key"))
        TL_FAIL("message: %s", err);
}

static void a_key_of_the_wrong_length_is_refused(void)
{
    char err[NODE_ERRMSG], text[256];
    uint8_t key[NODE_KEY_BYTES];
    snprintf(text, sizeof text, "cloudlet-fleet-key:%063d", 0);
    CHECK_EQ(node_key_decode(text, strlen(text), NODE_KEY_FLEET, key, err), CS_EFORMAT);
    if (!strstr(err, "63 hex digits, expected 64")) TL_FAIL("message: %s", err);
    snprintf(text, sizeof text, "cloudlet-fleet-key:%065d", 0);
    CHECK_EQ(node_key_decode(text, strlen(text), NODE_KEY_FLEET, key, err), CS_EFORMAT);
    if (!strstr(err, "65 hex digits, expected 64")) TL_FAIL("message: %s", err);
    CHECK_EQ(node_key_decode("cloudlet-fleet-key:", 19, NODE_KEY_FLEET, key, err), CS_EFORMAT);
}

static void malformed_lines_are_refused_with_a_reason(void)
{
    static const struct {
        const char *text, *why;
    } cases[] = {
        {"", "empty"},
        {" \n\n", "empty"},
        {"5e0e6a2b7f3b2a0c5e0e6a2b7f3b2a0c5e0e6a2b7f3b2a0c5e0e6a2b7f3b2a0c",
         "not a cloudlet key line"},
        {"cloudlet-fleet-key:5e0e6a2b7f3b2a0c5e0e6a2b7f3b2a0c5e0e6a2b7f3b2a0c5e0e6a2b7f3b2a0g",
         "digit 64 is not a hex digit"},
        {"cloudlet-fleet-key:5e0e6a2b7f3b2a0c5e0e6a2b7f3b2a0c5e0e6a2b7f3b2a0c5e0e6a2b7f3b2a0c\n"
         "cloudlet-fleet-key:5e0e6a2b7f3b2a0c5e0e6a2b7f3b2a0c5e0e6a2b7f3b2a0c5e0e6a2b7f3b2a0c\n",
         "more than one word"},
        {"wireguard-key:5e0e6a2b7f3b2a0c5e0e6a2b7f3b2a0c5e0e6a2b7f3b2a0c5e0e6a2b7f3b2a0c",
         "unknown key kind 'wireguard-key'"},
        {"cloudlet-fleet-key:5e0e6a2b7f3b2a0c5e0e6a2b7f3b2a0c5e0e6a2b7f3b2a0c5e0e6a2b7f3b2a\0c",
         "digit 63 is not a hex digit"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char err[NODE_ERRMSG] = "";
        uint8_t key[NODE_KEY_BYTES];
        size_t len = strlen(cases[i].text);
        if (i == 6) len += 2; /* the NUL inside the digits */
        CHECK_EQ(node_key_decode(cases[i].text, len, NODE_KEY_FLEET, key, err), CS_EFORMAT);
        if (!strstr(err, cases[i].why)) TL_FAIL("case %zu: %s", i, err);
    }
}

static void files_that_are_not_a_key_line_are_refused_naming_the_file(void)
{
    char *dir = tl_tmpdir(), err[NODE_ERRMSG];
    uint8_t key[NODE_KEY_BYTES];
    char *p = path_in(dir, "fleet.key");
    char *big = malloc(10000);
    memset(big, 'a', 9999);
    big[9999] = '\0';
    write_text(p, big, 0600);
    free(big);
    CHECK_EQ(node_key_read(p, NODE_KEY_FLEET, true, key, err), CS_EFORMAT);
    if (strncmp(err, p, strlen(p)) || !strstr(err, "not a key file")) TL_FAIL("message: %s", err);
    write_text(p, "hello\n", 0600);
    CHECK_EQ(node_key_read(p, NODE_KEY_FLEET, true, key, err), CS_EFORMAT);
    if (strncmp(err, p, strlen(p))) TL_FAIL("message: %s", err);
    CHECK_EQ(node_key_read(dir, NODE_KEY_FLEET, false, key, err), CS_EFORMAT); /* a directory */
    char *none = path_in(dir, "none");
    CHECK_EQ(node_key_read(none, NODE_KEY_FLEET, true, key, err), CS_ENOTFOUND);
    tl_rmtree(dir);
    free(dir), free(p), free(none);
}

static void writing_leaves_no_temporary_file_and_never_replaces_unless_asked(void)
{
    char *dir = tl_tmpdir(), err[NODE_ERRMSG];
    uint8_t a[NODE_KEY_BYTES], b[NODE_KEY_BYTES], back[NODE_KEY_BYTES];
    sample_key(a, 1);
    sample_key(b, 2);
    char *p = path_in(dir, "fleet.key");
    CHECK_OK(node_key_write(p, NODE_KEY_FLEET, a, false, err));
    CHECK_EQ(count_entries(dir), 1);
    CHECK_EQ(node_key_write(p, NODE_KEY_FLEET, b, false, err), -EEXIST);
    CHECK_EQ(count_entries(dir), 1);
    CHECK_OK(node_key_read(p, NODE_KEY_FLEET, true, back, err));
    CHECK_MEM(back, a, NODE_KEY_BYTES);
    CHECK_OK(node_key_write(p, NODE_KEY_FLEET, b, true, err));
    CHECK_EQ(count_entries(dir), 1);
    CHECK_OK(node_key_read(p, NODE_KEY_FLEET, true, back, err));
    CHECK_MEM(back, b, NODE_KEY_BYTES);
    /* A write that cannot happen leaves nothing behind. */
    char *q = path_in(dir, "missing-dir/fleet.key");
    CHECK(node_key_write(q, NODE_KEY_FLEET, a, false, err) < 0);
    CHECK_EQ(count_entries(dir), 1);
    tl_rmtree(dir);
    free(dir), free(p), free(q);
}

static void the_client_key_is_kdf_subkey_3_of_the_fleet_key_with_context_cloudlet(void)
{
    CHECK(sodium_init() >= 0);
    uint8_t fleet[NODE_KEY_BYTES], client[NODE_KEY_BYTES], want[NODE_KEY_BYTES];
    sample_key(fleet, 9);
    node_client_key(fleet, client);
    CHECK_OK(crypto_kdf_derive_from_key(want, sizeof want, 3, "cloudlet", fleet));
    CHECK_MEM(client, want, NODE_KEY_BYTES);
    CHECK(memcmp(client, fleet, NODE_KEY_BYTES) != 0);
    for (uint64_t id = 1; id <= 4; id++) { /* psk, beacon, cookie keys differ from it */
        if (id == 3) continue;
        uint8_t other[NODE_KEY_BYTES];
        CHECK_OK(crypto_kdf_derive_from_key(other, sizeof other, id, "cloudlet", fleet));
        CHECK(memcmp(client, other, NODE_KEY_BYTES) != 0);
    }
    uint8_t again[NODE_KEY_BYTES];
    node_client_key(fleet, again);
    CHECK_MEM(client, again, NODE_KEY_BYTES);
    /* A known answer computed apart (Python's hashlib: BLAKE2b-256 keyed with the fleet key,
     * salt = the id as 8 bytes little-endian then 8 zero bytes, personal = "cloudlet" then 8
     * zero bytes), so a change of derivation cannot pass unnoticed. */
    for (int i = 0; i < NODE_KEY_BYTES; i++) fleet[i] = (uint8_t)i;
    char text[NODE_KEY_TEXT];
    node_client_key(fleet, client);
    CHECK_STR(node_key_encode(NODE_KEY_CLIENT, client, text),
              "cloudlet-client-key:"
              "d88d4675f298c07ae7f13211f1247b5a4b0267f7d874dec2c128602d472f93f0");
}

static void keypair_init_makes_an_x25519_pair_once_and_never_replaces_it(void)
{
    char *home = tl_tmpdir(), err[NODE_ERRMSG];
    uint8_t pk[NODE_KEY_BYTES], pk2[NODE_KEY_BYTES], sk[NODE_KEY_BYTES], derived[NODE_KEY_BYTES];
    bool created = false;
    CHECK_OK(node_keypair_init(home, pk, &created, err));
    CHECK(created);
    char *skp = path_in(home, NODE_KEY_FILE), *pkp = path_in(home, NODE_PUB_FILE);
    CHECK_EQ(mode_of(skp), 0600);
    CHECK_EQ(mode_of(pkp), 0644);
    CHECK_OK(node_key_read(skp, NODE_KEY_NODE_SECRET, true, sk, err));
    CHECK_OK(crypto_scalarmult_base(derived, sk));
    CHECK_MEM(derived, pk, NODE_KEY_BYTES);
    CHECK_OK(node_key_read(pkp, NODE_KEY_NODE_PUBLIC, true, pk2, err));
    CHECK_MEM(pk2, pk, NODE_KEY_BYTES);

    CHECK_OK(node_keypair_init(home, pk2, &created, err));
    CHECK(!created);
    CHECK_MEM(pk2, pk, NODE_KEY_BYTES);
    /* node.pub is a copy: a lost one comes back from node.key */
    CHECK_EQ(unlink(pkp), 0);
    CHECK_OK(node_keypair_init(home, pk2, &created, err));
    CHECK(!created);
    CHECK_OK(node_key_read(pkp, NODE_KEY_NODE_PUBLIC, true, pk2, err));
    CHECK_MEM(pk2, pk, NODE_KEY_BYTES);
    /* and a node.key others can read stops it */
    CHECK_EQ(chmod(skp, 0644), 0);
    CHECK_EQ(node_keypair_init(home, pk2, &created, err), -EACCES);
    tl_rmtree(home);
    free(home), free(skp), free(pkp);
}

static void a_home_joins_one_fleet_and_refuses_another(void)
{
    char *home = tl_tmpdir(), err[NODE_ERRMSG];
    uint8_t a[NODE_KEY_BYTES], b[NODE_KEY_BYTES], back[NODE_KEY_BYTES];
    sample_key(a, 11);
    sample_key(b, 12);
    bool already = true;
    CHECK_EQ(node_fleet_key_load(home, back, err), CS_ENOTFOUND);
    if (!strstr(err, "cloudlet init --new-fleet") || !strstr(err, "--fleet-key FILE"))
        TL_FAIL("message: %s", err);
    CHECK_OK(node_fleet_key_set(home, a, &already, err));
    CHECK(!already);
    CHECK_OK(node_fleet_key_set(home, a, &already, err));
    CHECK(already);
    CHECK_EQ(node_fleet_key_set(home, b, &already, err), -EEXIST);
    CHECK_EQ(node_fleet_key_new(home, err), -EEXIST);
    CHECK_OK(node_fleet_key_load(home, back, err));
    CHECK_MEM(back, a, NODE_KEY_BYTES);
    tl_rmtree(home);
    free(home);
}

static void new_fleet_keys_are_random(void)
{
    char *h1 = tl_tmpdir(), *h2 = tl_tmpdir(), err[NODE_ERRMSG];
    uint8_t a[NODE_KEY_BYTES], b[NODE_KEY_BYTES];
    CHECK_OK(node_fleet_key_new(h1, err));
    CHECK_OK(node_fleet_key_new(h2, err));
    CHECK_OK(node_fleet_key_load(h1, a, err));
    CHECK_OK(node_fleet_key_load(h2, b, err));
    CHECK(memcmp(a, b, NODE_KEY_BYTES) != 0);
    tl_rmtree(h1), tl_rmtree(h2);
    free(h1), free(h2);
}

static void the_daemon_keys_load_alone_or_in_a_fleet_and_refuse_open_files(void)
{
    char *home = tl_tmpdir(), err[NODE_ERRMSG];
    node_keys k;
    CHECK_EQ(node_keys_load(home, &k, err), CS_ENOTFOUND); /* no node key yet */
    if (!strstr(err, "cloudlet init")) TL_FAIL("message: %s", err);
    uint8_t pk[NODE_KEY_BYTES];
    bool created;
    CHECK_OK(node_keypair_init(home, pk, &created, err));
    CHECK_OK(node_keys_load(home, &k, err));
    CHECK(!k.has_fleet);
    CHECK_MEM(k.node_pk, pk, NODE_KEY_BYTES);
    CHECK_OK(node_fleet_key_new(home, err));
    CHECK_OK(node_keys_load(home, &k, err));
    CHECK(k.has_fleet);
    char *fp = path_in(home, NODE_FLEET_FILE);
    CHECK_EQ(chmod(fp, 0640), 0);
    CHECK_EQ(node_keys_load(home, &k, err), -EACCES);
    if (!strstr(err, fp)) TL_FAIL("message: %s", err);
    static const uint8_t zero[sizeof k] = {0};
    CHECK_MEM(&k, zero, sizeof k); /* wiped on error */
    tl_rmtree(home);
    free(home), free(fp);
}

TL_MAIN(TL_CASE(every_kind_survives_a_round_trip_through_its_file),
        TL_CASE(the_text_is_the_kind_a_colon_and_lowercase_hex),
        TL_CASE(whitespace_around_the_line_and_uppercase_hex_are_accepted),
        TL_CASE(secret_key_files_are_0600_and_public_ones_0644_whatever_the_umask),
        TL_CASE(a_secret_key_others_can_read_is_refused_naming_the_file_and_the_chmod),
        TL_CASE(a_key_of_another_kind_is_refused_naming_both_kinds),
        TL_CASE(a_key_of_the_wrong_length_is_refused),
        TL_CASE(malformed_lines_are_refused_with_a_reason),
        TL_CASE(files_that_are_not_a_key_line_are_refused_naming_the_file),
        TL_CASE(writing_leaves_no_temporary_file_and_never_replaces_unless_asked),
        TL_CASE(the_client_key_is_kdf_subkey_3_of_the_fleet_key_with_context_cloudlet),
        TL_CASE(keypair_init_makes_an_x25519_pair_once_and_never_replaces_it),
        TL_CASE(a_home_joins_one_fleet_and_refuses_another),
        TL_CASE(new_fleet_keys_are_random),
        TL_CASE(the_daemon_keys_load_alone_or_in_a_fleet_and_refuse_open_files))

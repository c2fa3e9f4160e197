/*
 * Fuzz target: discovery beacons from untrusted bytes.
 *
 * The input is opened as a datagram with a fixed beacon key (the seed corpus holds beacons
 * sealed with it). Whatever opens must seal and
 * open again to the same fields. The same input also drives the replay filter as a script of
 * beacons (7 bytes each: sender, instance, sequence, time step), checking its promises: a beacon
 * just accepted is a replay when heard again, and its own key is never accepted.
 */
#include "net.h"

#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void fixed_key(uint8_t key[NET_KEY_BYTES])
{
    for (int i = 0; i < NET_KEY_BYTES; i++) key[i] = (uint8_t)(0xb0 + i);
}

static void filter_script(const uint8_t *data, size_t size)
{
    uint8_t own[NET_KEY_BYTES] = {0};
    net_beacon_filter *f = net_beacon_filter_new(own, 3, 1000);
    if (!f) return;
    uint64_t now = 1000000;
    for (; size >= 7; data += 7, size -= 7) {
        net_beacon b = {0};
        b.node_pk[0] = data[0] % 5; /* 0 is this node; four others share a table of three */
        b.instance = data[1] % 3;
        b.seq = (uint64_t)data[2] | (uint64_t)data[3] << 8;
        now += data[4];
        b.time_ms = now - 1200 + (uint64_t)data[5] * 10u; /* some beyond the skew either way */
        (void)data[6];
        net_beacon_verdict v = net_beacon_filter_check(f, &b, now);
        if (b.node_pk[0] == 0 && v != NET_BEACON_OWN) abort();
        if (v == NET_BEACON_NEW || v == NET_BEACON_NEXT || v == NET_BEACON_RESTART) {
            if (net_beacon_filter_check(f, &b, now) != NET_BEACON_REPLAY) abort();
        }
    }
    net_beacon_filter_free(f);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    uint8_t key[NET_KEY_BYTES];
    fixed_key(key);
    net_beacon b;
    if (net_beacon_open(key, data, size, &b) == 0) {
        uint8_t again[NET_BEACON_BYTES];
        net_beacon b2;
        net_beacon_seal(key, &b, data + 5, again);
        if (net_beacon_open(key, again, sizeof again, &b2) != 0 || memcmp(&b, &b2, sizeof b) != 0)
            abort();
    }
    filter_script(data, size);
    return 0;
}

/* net_keys.c — the fleet key's subkeys and static key pairs. */
#include "net.h"

#include <string.h>

/* crypto_kdf contexts are exactly 8 bytes; "cloudlet" is fixed by the protocol. */
static const char kdf_context[crypto_kdf_CONTEXTBYTES] = {'c', 'l', 'o', 'u', 'd', 'l', 'e', 't'};

void net_fleet_derive(const uint8_t fleet[NET_KEY_BYTES], uint64_t subkey,
                      uint8_t out[NET_KEY_BYTES])
{
    /* Cannot fail for a 32-byte output (within crypto_kdf_BYTES_MIN..MAX). */
    (void)crypto_kdf_derive_from_key(out, NET_KEY_BYTES, subkey, kdf_context, fleet);
}

void net_fleet_keys(net_keys *k, const uint8_t fleet[NET_KEY_BYTES])
{
    memset(k, 0, sizeof *k);
    k->has_fleet = true;
    net_fleet_derive(fleet, NET_SUBKEY_PEER_PSK, k->peer_psk);
    net_fleet_derive(fleet, NET_SUBKEY_COOKIE, k->cookie);
    net_fleet_derive(fleet, NET_SUBKEY_CLIENT, k->client);
}

void net_client_keys(net_keys *k, const uint8_t client[NET_KEY_BYTES])
{
    memset(k, 0, sizeof *k);
    k->has_fleet = false;
    memcpy(k->client, client, NET_KEY_BYTES);
}

void net_keys_wipe(net_keys *k)
{
    sodium_memzero(k, sizeof *k);
}

void net_keypair_generate(net_keypair *kp)
{
    crypto_box_keypair(kp->pk, kp->sk);
}

int net_keypair_from_secret(net_keypair *kp, const uint8_t sk[NET_KEY_BYTES])
{
    uint8_t pk[NET_KEY_BYTES];
    if (crypto_scalarmult_base(pk, sk) != 0) return NET_EFORMAT;
    memcpy(kp->sk, sk, NET_KEY_BYTES);
    memcpy(kp->pk, pk, NET_KEY_BYTES);
    return 0;
}

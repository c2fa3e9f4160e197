/* The daemon's configuration file. */
#include "node.h"
#include "testlib.h"

static int parse(const char *text, node_config *c, char *err)
{
    node_config_defaults(c);
    return node_config_parse(text, strlen(text), c, err);
}

static void no_file_means_defaults_that_work_on_a_lan(void)
{
    node_config c;
    char err[NODE_ERRMSG];
    CHECK_OK(parse("", &c, err));
    CHECK_STR(c.listen.host, "0.0.0.0");
    CHECK_EQ(c.listen.port, 7420);
    CHECK(c.discovery);
    CHECK_EQ(c.npeers, 0);
    CHECK_EQ(c.beacon_interval_s, 30);
    CHECK_EQ(c.log_level, NODE_LOG_INFO);
}

static void every_key_is_read(void)
{
    node_config c;
    char err[NODE_ERRMSG];
    CHECK_OK(parse("# a node\n"
                   "listen = 198.18.0.1:9000\n"
                   "multicast = 239.1.2.3:9001   # beacons\n"
                   "discovery = off\n"
                   "peer = 10.0.0.7:7420\n"
                   "peer = [fd00::1]:7420\n"
                   "\n"
                   "  max_peers=8\n"
                   "max_inflight_per_peer = 512\n"
                   "rate_total = 10M\n"
                   "rate_per_peer = 512K\n"
                   "beacon_interval = 5\n"
                   "peer_timeout = 20\n"
                   "log_level = debug\n"
                   "control_socket = /run/cloudlet.sock",
                   &c, err));
    CHECK_STR(c.listen.host, "198.18.0.1");
    CHECK_EQ(c.listen.port, 9000);
    CHECK_STR(c.multicast.host, "239.1.2.3");
    CHECK(!c.discovery);
    CHECK_EQ(c.npeers, 2);
    CHECK_STR(c.peers[1].host, "fd00::1");
    CHECK_EQ(c.max_peers, 8);
    CHECK_EQ(c.max_inflight_per_peer, 512);
    CHECK_EQ(c.rate_total, 10 << 20);
    CHECK_EQ(c.rate_per_peer, 512 << 10);
    CHECK_EQ(c.beacon_interval_s, 5);
    CHECK_EQ(c.peer_timeout_s, 20);
    CHECK_EQ(c.log_level, NODE_LOG_DEBUG);
    CHECK_STR(c.control_socket, "/run/cloudlet.sock");
}

static void errors_name_the_line_and_change_nothing(void)
{
    node_config c;
    char err[NODE_ERRMSG];
    node_config_defaults(&c);
    const char *bad[] = {"listen = 1.2.3.4\n", "peer = 1.2.3.4:0\n", "listen = 1.2.3.4:70000\n",
                         "peer = 1.2.3.4:5 cloudlet-node-key:00\n",
                         ("peer = 1.2.3.4:5 cloudlet-fleet-key:"
                          "0000000000000000000000000000000000000000000000000000000000000000\n"),
                         "max_peers = -1\n", "max_peers = 0\n", "discovery = maybe\n",
                         "log_level = loud\n", "control_socket = relative\n", "rate_total = 5T\n",
                         "listen\n", "= 5\n"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        char text[128];
        snprintf(text, sizeof text, "peer = 1.1.1.1:1\n%s", bad[i]);
        CHECK_EQ(node_config_parse(text, strlen(text), &c, err), CS_EFORMAT);
        CHECK(strstr(err, "line 2") != NULL);
        CHECK_EQ(c.npeers, 0); /* the good first line was not applied either */
    }
    CHECK_EQ(parse("listen = 1.2.3.4:5\nfrobnicate = 1\n", &c, err), CS_EFORMAT);
    CHECK(strstr(err, "unknown key 'frobnicate'") != NULL);
}

/* Port 0 lets the system pick the listen port (the daemon reports the one bound); a static peer
 * may carry its node key, so a node can connect to it without hearing its beacons. */
static void listen_port_zero_and_static_peer_keys_are_read(void)
{
    node_config c;
    char err[NODE_ERRMSG];
    CHECK_OK(parse("listen = 127.0.0.1:0\n"
                   "peer = 127.0.0.1:7420 cloudlet-node-key:"
                   "0101010101010101010101010101010101010101010101010101010101010101\n"
                   "peer = 127.0.0.2:7420\n",
                   &c, err));
    CHECK_EQ(c.listen.port, 0);
    CHECK_EQ(c.npeers, 2);
    CHECK(c.peers[0].has_key);
    CHECK_EQ(c.peers[0].key[31], 1);
    CHECK_EQ(c.peers[0].port, 7420);
    CHECK(!c.peers[1].has_key);
}

static void missing_file_is_notfound(void)
{
    node_config c;
    char err[NODE_ERRMSG];
    node_config_defaults(&c);
    CHECK_EQ(node_config_load("/nonexistent/cloudlet.conf", &c, err), CS_ENOTFOUND);
}

TL_MAIN(TL_CASE(no_file_means_defaults_that_work_on_a_lan), TL_CASE(every_key_is_read),
        TL_CASE(errors_name_the_line_and_change_nothing),
        TL_CASE(listen_port_zero_and_static_peer_keys_are_read), TL_CASE(missing_file_is_notfound))

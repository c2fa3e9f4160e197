/* test_vm_xml.c — rewriting domain XML for a launch, and finding the first disk. */
#define _GNU_SOURCE
#include "node.h"
#include "testlib.h"

#include <stdlib.h>
#include <string.h>

/* The shape libvirt writes (single quotes), with what trips naive string searches: a comment
 * naming a disk, a <name> nested deeper than the root's, a cdrom before the disk, and the
 * serial's path repeated by its <console> twin. */
static const char base_xml[] =
    "<domain type='kvm' id='3'>\n"
    "  <name>base</name>\n"
    "  <uuid>0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0</uuid>\n"
    "  <metadata><app><name>not-the-domain</name></app></metadata>\n"
    "  <memory unit='KiB'>262144</memory>\n"
    "  <!-- <disk device='disk'><source file='/in/a/comment'/></disk> -->\n"
    "  <devices>\n"
    "    <disk type='file' device='cdrom'><source file='/iso/boot.iso'/><target "
    "dev='hdc'/></disk>\n"
    "    <disk type='file' device='disk'>\n"
    "      <driver name='qemu' type='raw' discard='unmap'/>\n"
    "      <source file='/var/lib/vm/base.img' index='1'/>\n"
    "      <target dev='vda' bus='virtio'/>\n"
    "    </disk>\n"
    "    <disk type='file' device='disk'><source file='/var/lib/vm/second.img'/></disk>\n"
    "    <serial type='unix'>\n"
    "      <source mode='bind' path='/run/vm/base.sock'/>\n"
    "      <log file='/run/vm/base.log' append='off'/>\n"
    "      <target port='0'/>\n"
    "    </serial>\n"
    "    <console type='unix'><source mode='bind' path='/run/vm/base.sock'/></console>\n"
    "  </devices>\n"
    "</domain>\n";

static char *rewrite(const char *xml, const node_vm_xml_edit *e)
{
    char *out = NULL, err[NODE_ERRMSG] = "";
    int rc = node_vm_xml_rewrite(xml, e, &out, err);
    if (rc) TL_FAIL("rewrite failed: %d %s", rc, err);
    return out;
}

static void rename_sets_the_root_name_only(void)
{
    node_vm_xml_edit e = {.name = "web-1"};
    char *x = rewrite(base_xml, &e);
    CHECK(strstr(x, "  <name>web-1</name>\n"));
    CHECK(strstr(x, "<name>not-the-domain</name>"));
    CHECK(!strstr(x, "<name>base</name>"));
    free(x);
}

static void uuid_is_replaced_or_inserted_after_name(void)
{
    node_vm_xml_edit e = {.uuid = "11111111-2222-4333-8444-555555555555"};
    char *x = rewrite(base_xml, &e);
    CHECK(strstr(x, "<uuid>11111111-2222-4333-8444-555555555555</uuid>"));
    CHECK(!strstr(x, "0f1e2d3c"));
    free(x);
    x = rewrite("<domain type='qemu'><name>n</name><memory>1</memory></domain>", &e);
    CHECK_STR(x, "<domain type='qemu'><name>n</name><uuid>11111111-2222-4333-8444-555555555555"
                 "</uuid><memory>1</memory></domain>");
    free(x);
}

static void disk_source_of_the_first_disk_device_changes(void)
{
    node_vm_xml_edit e = {.disk = "/launch/x/disk.raw"};
    char *x = rewrite(base_xml, &e);
    CHECK(strstr(x, "<source file='/launch/x/disk.raw' index='1'/>"));
    CHECK(strstr(x, "/iso/boot.iso"));          /* the cdrom is no disk device */
    CHECK(strstr(x, "/var/lib/vm/second.img")); /* only the first disk */
    CHECK(strstr(x, "/in/a/comment"));          /* comments are not elements */
    free(x);
}

/* Early start: the first disk becomes a qcow2 overlay backed by the NBD export, whether it had
 * a driver and an empty <backingStore/> (as libvirt writes it), a driver only, or neither. */
static void disk_backed_by_nbd_becomes_a_qcow2_overlay(void)
{
    static const char backing[] =
        "<backingStore type='network'><format type='raw'/><source protocol='nbd' name='disk'>"
        "<host transport='unix' socket='/launch/x/disk.sock'/></source><backingStore/>"
        "</backingStore>";
    node_vm_xml_edit e = {.disk = "/launch/x/disk.qcow2", .disk_nbd = "/launch/x/disk.sock"};
    char *x = rewrite("<domain><name>n</name><devices><disk type='file' device='disk'><driver "
                      "name='qemu' type='raw' discard='unmap'/><source file='/a.img'/>"
                      "<backingStore/><target dev='vda'/></disk></devices></domain>",
                      &e);
    char *want = NULL;
    CHECK(asprintf(&want, "<disk type='file' device='disk'><driver name='qemu' type='qcow2' "
                          "discard='unmap'/><source file='/launch/x/disk.qcow2'/>%s<target "
                          "dev='vda'/></disk>",
                   backing) > 0);
    CHECK(strstr(x, want));
    free(x), free(want);
    x = rewrite(base_xml, &e); /* a driver, no backingStore: it goes before </disk> */
    CHECK(strstr(x, "<driver name='qemu' type='qcow2' discard='unmap'/>"));
    CHECK(asprintf(&want, "<target dev='vda' bus='virtio'/>\n    %s</disk>", backing) > 0);
    CHECK(strstr(x, want));
    CHECK(strstr(x, "<disk type='file' device='disk'><source file='/var/lib/vm/second.img'/>"));
    free(x), free(want);
    x = rewrite("<domain><name>n</name><devices><disk type='file' device='disk'><source "
                "file='/a.img'/></disk></devices></domain>",
                &e);
    CHECK(asprintf(&want, "<source file='/launch/x/disk.qcow2'/><driver name='qemu' "
                          "type='qcow2'/>%s</disk>",
                   backing) > 0);
    CHECK(strstr(x, want));
    free(x), free(want);
    /* A disk with a backing chain of its own is refused. */
    char *out = NULL, err[NODE_ERRMSG] = "";
    CHECK_EQ(node_vm_xml_rewrite("<domain><name>n</name><devices><disk type='file' "
                                 "device='disk'><source file='/a.img'/><backingStore "
                                 "type='file'><source file='/b.img'/></backingStore></disk>"
                                 "</devices></domain>",
                                 &e, &out, err),
             CS_EFORMAT);
    CHECK(strstr(err, "backing chain"));
    CHECK(!out);
}

static void accel_sets_the_domain_type(void)
{
    node_vm_xml_edit e = {.accel = NODE_ACCEL_TCG};
    char *x = rewrite(base_xml, &e);
    CHECK(!strncmp(x, "<domain type='qemu' id='3'>", 27));
    free(x);
    e.accel = NODE_ACCEL_KVM;
    x = rewrite("<domain><name>n</name></domain>", &e);
    CHECK_STR(x, "<domain type='kvm'><name>n</name></domain>");
    free(x);
}

static void serial_paths_move_with_their_console_twin(void)
{
    node_vm_xml_edit e = {.serial_sock = "/l/console.sock", .serial_log = "/l/console.log"};
    char *x = rewrite(base_xml, &e);
    CHECK(!strstr(x, "/run/vm/base.sock"));
    CHECK(!strstr(x, "/run/vm/base.log"));
    CHECK(strstr(x,
                 "<source mode='bind' path='/l/console.sock'/>\n      <log file='/l/console.log'"));
    CHECK(strstr(x, "<console type='unix'><source mode='bind' path='/l/console.sock'/>"));
    free(x);
}

static void values_are_escaped_and_double_quotes_are_read(void)
{
    node_vm_xml_edit e = {.name = "a<b&'c'", .disk = "/d/\"q\".raw"};
    char *x = rewrite("<domain type=\"qemu\"><name>n</name><devices><disk type=\"file\" "
                      "device=\"disk\"><source file=\"/old > path\"/></disk></devices></domain>",
                      &e);
    CHECK_STR(x, "<domain type=\"qemu\"><name>a&lt;b&amp;&apos;c&apos;</name><devices><disk "
                 "type=\"file\" device=\"disk\"><source file=\"/d/&quot;q&quot;.raw\"/></disk>"
                 "</devices></domain>");
    free(x);
}

static void block_disk_or_missing_disk_is_an_error(void)
{
    node_vm_xml_edit e = {.disk = "/d.raw"};
    char *out = NULL, err[NODE_ERRMSG] = "";
    CHECK_EQ(node_vm_xml_rewrite("<domain><name>n</name><devices><disk type='block' "
                                 "device='disk'><source dev='/dev/sdb'/></disk></devices></domain>",
                                 &e, &out, err),
             CS_EFORMAT);
    CHECK(strstr(err, "'block'"));
    CHECK(!out);
    CHECK_EQ(node_vm_xml_rewrite("<domain><name>n</name></domain>", &e, &out, err), CS_EFORMAT);
    CHECK(strstr(err, "no <disk"));
    CHECK_EQ(node_vm_xml_rewrite("<network><name>n</name></network>", &e, &out, err), CS_EFORMAT);
    CHECK(strstr(err, "not <domain>"));
    CHECK_EQ(node_vm_xml_rewrite("<domain><name>n</name", &e, &out, err), CS_EFORMAT);
}

static void first_disk_gives_file_and_format(void)
{
    char *file = NULL, *format = NULL, err[NODE_ERRMSG] = "";
    CHECK_OK(node_vm_xml_first_disk(base_xml, &file, &format, err));
    CHECK_STR(file, "/var/lib/vm/base.img");
    CHECK_STR(format, "raw");
    free(file), free(format);
    CHECK_OK(node_vm_xml_first_disk("<domain><devices><disk><source file='/a&amp;b'/></disk>"
                                    "</devices></domain>",
                                    &file, &format, err));
    CHECK_STR(file, "/a&b");
    CHECK(!format);
    free(file);
}

static void accel_can_be_forced_from_the_environment(void)
{
    setenv("CLOUDLET_ACCEL", "tcg", 1);
    CHECK_EQ(node_accel_detect("test:///default"), NODE_ACCEL_TCG);
    setenv("CLOUDLET_ACCEL", "kvm", 1);
    CHECK_EQ(node_accel_detect("test:///default"), NODE_ACCEL_KVM);
    CHECK_STR(node_accel_name(NODE_ACCEL_KVM), "kvm");
    CHECK_STR(node_accel_name(NODE_ACCEL_TCG), "tcg");
}

TL_MAIN(TL_CASE(rename_sets_the_root_name_only), TL_CASE(uuid_is_replaced_or_inserted_after_name),
        TL_CASE(disk_source_of_the_first_disk_device_changes),
        TL_CASE(disk_backed_by_nbd_becomes_a_qcow2_overlay), TL_CASE(accel_sets_the_domain_type),
        TL_CASE(serial_paths_move_with_their_console_twin),
        TL_CASE(values_are_escaped_and_double_quotes_are_read),
        TL_CASE(block_disk_or_missing_disk_is_an_error), TL_CASE(first_disk_gives_file_and_format),
        TL_CASE(accel_can_be_forced_from_the_environment))

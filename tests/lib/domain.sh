# domain.sh — the libvirt domain XML of the test guests (tests/vm/) and of the benchmark pair
# (tests/bench/vm-pair.sh): a direct-kernel boot (kernel, initrd, command line), one raw virtio
# disk with discard='unmap' (so the guest's TRIM punches holes), and a unix-socket serial console
# with a log file. ACPI stays on: without <acpi/> libvirt passes -no-acpi and the ACPI RAM blocks
# vanish. The CPU model is qemu64, which TCG runs and KVM accepts.
# shellcheck shell=bash

# guest_domain_xml NAME TYPE MIB KERNEL INITRD CMDLINE DISK SOCKET LOG
#   TYPE is the domain type (qemu for TCG, or kvm), MIB the RAM, DISK a raw image, SOCKET and
#   LOG the console's socket and log file.
guest_domain_xml() {
    cat <<XML
<domain type='$2'>
  <name>$1</name>
  <memory unit='MiB'>$3</memory>
  <vcpu>1</vcpu>
  <os>
    <type arch='x86_64' machine='pc'>hvm</type>
    <kernel>$4</kernel>
    <initrd>$5</initrd>
    <cmdline>$6</cmdline>
  </os>
  <features><acpi/></features>
  <cpu mode='custom' match='exact'><model fallback='allow'>qemu64</model></cpu>
  <on_poweroff>destroy</on_poweroff>
  <on_reboot>destroy</on_reboot>
  <on_crash>destroy</on_crash>
  <devices>
    <disk type='file' device='disk'>
      <driver name='qemu' type='raw' discard='unmap'/>
      <source file='$7'/>
      <target dev='vda' bus='virtio'/>
    </disk>
    <serial type='unix'>
      <source mode='bind' path='$8'/>
      <log file='$9'/>
      <target port='0'/>
    </serial>
    <memballoon model='none'/>
  </devices>
</domain>
XML
}

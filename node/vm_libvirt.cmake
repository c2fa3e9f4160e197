# libvirt control (vm_libvirt.c): a library of its own, so only the programs that talk to
# libvirt (the CLI's launch and capture, the VM tests) link libvirt.
add_library(node_libvirt STATIC vm_libvirt.c)
target_link_libraries(node_libvirt PUBLIC node PRIVATE PkgConfig::LIBVIRT Threads::Threads)

# The domain XML scanner reads XML that arrives in manifests from other nodes.
cl_fuzz(vm_xml_fuzz SOURCE vm_xml_fuzz.c LIBS node_libvirt node chunkstore)

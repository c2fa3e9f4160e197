#!/usr/bin/env bash
# The README's second command: installs what is needed, builds with warnings as errors, and
# runs the whole test suite under ctest, the VM tests too (real QEMU under libvirt, one guest
# at a time). CLOUDLET_SLOW_TESTS=1 adds the slow tier.
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
"$top/deploy/install-deps.sh" test
# The VM tests need libvirtd (they skip, saying why, when it cannot run here).
"$top/deploy/start-libvirt.sh" || echo "test: libvirt did not start; the VM tests will be skipped" >&2
build=${CLOUDLET_TEST_BUILD:-$top/build-test}
slow=OFF
[ "${CLOUDLET_SLOW_TESTS:-0}" = 1 ] && slow=ON
"$top/deploy/build.sh" "$build" -DCMAKE_BUILD_TYPE=RelWithDebInfo -DCLOUDLET_WERROR=ON \
    -DCLOUDLET_SLOW_TESTS=$slow
cd "$build"
ctest --output-on-failure -j"$(nproc)" --timeout 600

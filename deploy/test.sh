#!/usr/bin/env bash
# The README's second command: installs what is needed, builds with warnings as errors, and
# runs the whole test suite under ctest, the VM tests too (real QEMU under libvirt, one guest
# at a time). CLOUDLET_SLOW_TESTS=1 adds the slow tier: the store benchmark on 1 GiB, and a
# clang build that fuzzes every parser for CLOUDLET_FUZZ_SECONDS (default 120) each.
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
slow=OFF
[ "${CLOUDLET_SLOW_TESTS:-0}" = 1 ] && slow=ON
"$top/deploy/install-deps.sh" "$([ $slow = ON ] && echo slow || echo test)"
# The VM tests need libvirtd (they skip, saying why, when it cannot run here).
"$top/deploy/start-libvirt.sh" || echo "test: libvirt did not start; the VM tests will be skipped" >&2
build=${CLOUDLET_TEST_BUILD:-$top/build-test}
"$top/deploy/build.sh" "$build" -DCMAKE_BUILD_TYPE=RelWithDebInfo -DCLOUDLET_WERROR=ON \
    -DCLOUDLET_SLOW_TESTS=$slow
(cd "$build" && ctest --output-on-failure -j"$(nproc)" --timeout 600)
if [ $slow = ON ]; then
    "$top/deploy/build.sh" "$build-fuzz" -DCMAKE_C_COMPILER=clang -DCLOUDLET_FUZZ=ON \
        -DCLOUDLET_SLOW_TESTS=ON -DCLOUDLET_FUZZ_SECONDS="${CLOUDLET_FUZZ_SECONDS:-120}"
    (cd "$build-fuzz" && ctest --output-on-failure -j"$(nproc)" -R '^slow\.fuzz\.')
fi

# Backend parity test (tests/test_backend_ops.c, the runner, and the cases
# of tests/backend_ops): every backend op on the CPU reference and on CUDA,
# compared. Included from tests/CMakeLists.txt; builds with or without the
# CUDA backend and exits 77 (skipped) when the build has no CUDA backend or
# the machine has no CUDA device.
add_executable(test_backend_ops ${CMAKE_CURRENT_LIST_DIR}/test_backend_ops.c
  ${CMAKE_CURRENT_LIST_DIR}/backend_ops/cases.c ${CMAKE_CURRENT_LIST_DIR}/backend_ops/cases_core.c
  ${CMAKE_CURRENT_LIST_DIR}/backend_ops/cases_nn.c ${CMAKE_CURRENT_LIST_DIR}/backend_ops/cases_net.c
  ${CMAKE_CURRENT_LIST_DIR}/backend_ops/cases_device.c)
target_include_directories(test_backend_ops PRIVATE ${CMAKE_CURRENT_LIST_DIR})
target_link_libraries(test_backend_ops PRIVATE difflux)
target_compile_options(test_backend_ops PRIVATE ${DFX_WARNINGS})
# the U-Net fixtures for the whole-network comparison
target_compile_definitions(test_backend_ops PRIVATE DFX_TEST_DATA="${CMAKE_CURRENT_LIST_DIR}")

# A skip is a skip only where there is no GPU: when nvidia-smi lists one but
# the CUDA build skips (a driver too old for the toolkit, say: CUDA 13 needs
# R580+), the test fails, naming the GPU, the driver and the backend's
# reason, instead of ctest reporting 100% passed.
set(DFX_BACKEND_OPS_RUN [=[
"$1"; rc=$?
if [ "$rc" -eq 77 ] && command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L 2>/dev/null | grep -q '^GPU'; then
    echo "FAILED: nvidia-smi sees $(nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | head -1) (name, driver), but test_backend_ops skipped"
    t=$(mktemp -d)
    echo "the CUDA backend says: $("$2" sample --device cuda --model "$3" --n 1 --steps 1 --no-png --npy "$t/x.npy" --quiet 2>&1 | head -1)"
    rm -rf "$t"
    exit 1
fi
exit "$rc"
]=])
add_test(NAME backend_ops COMMAND bash -c "${DFX_BACKEND_OPS_RUN}" backend_ops
         $<TARGET_FILE:test_backend_ops> $<TARGET_FILE:difflux-cli>
         ${PROJECT_SOURCE_DIR}/models/mnist-gmm.safetensors)
set_tests_properties(backend_ops PROPERTIES SKIP_RETURN_CODE 77)
# The same cases with the CPU backend on both sides, so the runner runs
# everywhere: this CPU's best instruction-set path against the baseline.
add_test(NAME backend_ops_cpu COMMAND test_backend_ops --cpu)
set_tests_properties(backend_ops_cpu PROPERTIES TIMEOUT 900)

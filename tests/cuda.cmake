# Backend parity test (tests/test_backend_ops.c): every backend op on the
# CPU reference and on CUDA, compared. Included from tests/CMakeLists.txt;
# builds with or without the CUDA backend and exits 77 (skipped) when the
# build has no CUDA backend or the machine has no CUDA device.
add_executable(test_backend_ops ${CMAKE_CURRENT_LIST_DIR}/test_backend_ops.c)
target_link_libraries(test_backend_ops PRIVATE difflux)
target_compile_options(test_backend_ops PRIVATE ${DFX_WARNINGS})
add_test(NAME backend_ops COMMAND test_backend_ops)
set_tests_properties(backend_ops PROPERTIES SKIP_RETURN_CODE 77)
# the U-Net fixtures for the whole-network comparison
target_compile_definitions(test_backend_ops PRIVATE DFX_TEST_DATA="${CMAKE_CURRENT_LIST_DIR}")

# Builds an INTERFACE target `mta::torch` for the torch of ${Python_EXECUTABLE}.
#
# Why by hand and not find_package(Torch): the extension only needs headers + libtorch_cpu +
# libc10 (+ libc10_cuda), and torch's CMake config insists on a full CUDA toolkit (cuBLAS,
# cuDNN headers...) whenever torch itself is a CUDA build, even for a CPU-only extension.
execute_process(
  COMMAND "${Python_EXECUTABLE}" "${CMAKE_CURRENT_LIST_DIR}/query_torch.py"
  OUTPUT_VARIABLE _mta_torch_out
  ERROR_VARIABLE _mta_torch_err
  RESULT_VARIABLE _mta_torch_rc)
if(NOT _mta_torch_rc EQUAL 0)
  message(FATAL_ERROR "mta_ext: cannot import torch with ${Python_EXECUTABLE}:\n${_mta_torch_err}\n"
                      "Install torch first (or build with isolation so pyproject's pin applies).")
endif()
string(REPLACE "\n" ";" _mta_torch_lines "${_mta_torch_out}")
foreach(_line IN LISTS _mta_torch_lines)
  if(_line MATCHES "^([A-Z0-9_]+)=(.*)$")
    set(${CMAKE_MATCH_1} "${CMAKE_MATCH_2}")
  endif()
endforeach()
message(STATUS "mta_ext: torch ${TORCH_VERSION} at ${TORCH_ROOT} (CUDA: '${TORCH_CUDA_VERSION}', cxx11 abi ${TORCH_CXX11_ABI})")

add_library(mta_torch INTERFACE)
add_library(mta::torch ALIAS mta_torch)
target_include_directories(mta_torch SYSTEM INTERFACE
  "${TORCH_ROOT}/include" "${TORCH_ROOT}/include/torch/csrc/api/include")
target_compile_definitions(mta_torch INTERFACE _GLIBCXX_USE_CXX11_ABI=${TORCH_CXX11_ABI})
target_link_libraries(mta_torch INTERFACE "${TORCH_ROOT}/lib/libtorch_cpu.so" "${TORCH_ROOT}/lib/libc10.so")

// libFuzzer target: Keras .h5 layer and weight discovery (read_keras_h5 through libhdf5).
// Input layout: see graft::fuzz::read_keras_h5_bytes in entry_points.h.
#include "fuzz/fuzz_target.h"

// libhdf5 (not instrumented, not graft's) mallocs sizes read from a corrupt file's metadata, up to 2^51
// bytes; glibc answers NULL and HDF5 reports an error, which graft turns into a FormatError, but ASan
// aborts instead unless allocator_may_return_null is set.
extern "C" const char* __asan_default_options() {
  return "allocator_may_return_null=1";
}

GRAFT_FUZZ_TARGET(keras_h5, read_keras_h5_bytes)

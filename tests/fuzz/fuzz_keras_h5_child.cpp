// libFuzzer target: Keras .h5 files read as the product reads them, in a child process
// (read_keras_h5 with its default KerasH5Options but a 2 s deadline). libFuzzer sees the coverage of
// the parent's side only (the record stream, the model builder, the topology parser), so this target
// explores less than fuzz_keras_h5; what it shows is that no file, whatever libhdf5 does with it in
// the child, crashes or hangs graft itself. Input layout: see read_keras_h5_child_bytes in
// entry_points.h.
#include "fuzz/fuzz_target.h"

// As fuzz_keras_h5.cpp: the child's libhdf5 mallocs sizes read from corrupt metadata.
extern "C" const char* __asan_default_options() {
  return "allocator_may_return_null=1";
}

GRAFT_FUZZ_TARGET(keras_h5_child, read_keras_h5_child_bytes)

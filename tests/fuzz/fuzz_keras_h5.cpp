// libFuzzer target: Keras .h5 layer and weight discovery (read_keras_h5 through libhdf5).
// Input layout: see graft::fuzz::read_keras_h5_bytes in entry_points.h.
#include "fuzz/fuzz_target.h"

GRAFT_FUZZ_TARGET(keras_h5, read_keras_h5_bytes)

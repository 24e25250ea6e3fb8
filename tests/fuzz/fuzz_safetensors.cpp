// libFuzzer target: the safetensors reader (SafeTensorsReader, every tensor loaded).
// Input layout: see graft::fuzz::read_safetensors_bytes in entry_points.h.
#include "fuzz/fuzz_target.h"

GRAFT_FUZZ_TARGET(safetensors, read_safetensors_bytes)

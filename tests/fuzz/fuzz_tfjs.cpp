// libFuzzer target: a TF.js model.json (layers or graph model) with its weights manifest and one shard.
// Input layout: see graft::fuzz::read_tfjs_bytes in entry_points.h.
#include "fuzz/fuzz_target.h"

GRAFT_FUZZ_TARGET(tfjs, read_tfjs_bytes)

// libFuzzer target: a run directory's graft.json (read_run_spec).
// Input layout: see graft::fuzz::read_run_json_bytes in entry_points.h.
#include "fuzz/fuzz_target.h"

GRAFT_FUZZ_TARGET(run_json, read_run_json_bytes)

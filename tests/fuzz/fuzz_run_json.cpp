// libFuzzer target: a run directory's graft.json, every task (read_run_document and the task readers).
// Input layout: see graft::fuzz::read_run_json_bytes in entry_points.h.
#include "fuzz/fuzz_target.h"

GRAFT_FUZZ_TARGET(run_json, read_run_json_bytes)

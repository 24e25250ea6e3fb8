// libFuzzer target: chat templates (Jinja), parsed and rendered. Input layout: see
// graft::fuzz::render_chat_template_bytes in entry_points.h.
#include "fuzz/fuzz_target.h"

GRAFT_FUZZ_TARGET(chat_template, render_chat_template_bytes)

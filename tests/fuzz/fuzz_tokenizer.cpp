// libFuzzer target: tokenizer.json, vocab.txt, vocab.json + merges.txt, tokenizer_config.json, then
// encode/decode. Input layout: see graft::fuzz::load_tokenizer_bytes in entry_points.h.
#include "fuzz/fuzz_target.h"

GRAFT_FUZZ_TARGET(tokenizer, load_tokenizer_bytes)

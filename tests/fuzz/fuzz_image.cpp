// libFuzzer target: the image decoders' wrapper (JPEG via TurboJPEG, PNG via libpng).
// Input layout: see graft::fuzz::decode_image_bytes in entry_points.h.
#include "fuzz/fuzz_target.h"

GRAFT_FUZZ_TARGET(image, decode_image_bytes)

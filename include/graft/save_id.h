// The id that ties the files of one save together (a run directory's model.safetensors and graft.json, a
// checkpoint's model, optimiser and trainer.json): a file copied in from another save is refused at load.
#pragma once
#include <string>

namespace graft {

// 16 hex digits from the kernel's random numbers (src/core/files.cpp).
std::string new_save_id();

}  // namespace graft

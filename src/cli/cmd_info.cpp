// `graft info`: versions, threads, BLAS and devices.
#include <iostream>

#include "cli/commands.h"
#include "graft/runtime.h"

namespace graft::cli {

void add_info_command(CLI::App& app) {
  auto* command = app.add_subcommand("info", "library versions, threads, BLAS in use, devices");
  command->callback([] {
    // One small matrix product so that a lazily loaded BLAS is mapped before we look for it.
    (void)torch::mm(torch::ones({8, 8}), torch::ones({8, 8}));
    std::cout << runtime_info();
  });
}

}  // namespace graft::cli

// Runs the graft program built with the tests and captures what it prints.
#pragma once
#include <sys/wait.h>
#include <unistd.h>

#include <array>
#include <cstdio>
#include <filesystem>
#include <string>

namespace graft::testing {

struct Run {
  int status = -1;     // exit status; -1 when the program did not exit normally
  std::string output;  // stdout + stderr
};

// env: shell assignments put before the program, e.g. "GRAFT_CACHE=/tmp/empty".
inline Run graft(const std::string& args, const std::string& env = "") {
  Run run;
  const std::string command =
      env + (env.empty() ? "" : " ") + std::string(GRAFT_BINARY) + " " + args + " 2>&1";
  FILE* pipe = popen(command.c_str(), "r");
  if (!pipe) return run;
  std::array<char, 4096> buffer;
  size_t n;
  while ((n = fread(buffer.data(), 1, buffer.size(), pipe)) > 0) run.output.append(buffer.data(), n);
  const int status = pclose(pipe);
  run.status = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  return run;
}

// An empty folder of the system's temporary directory, unique to this process.
inline std::filesystem::path fresh_dir(const std::string& name) {
  auto dir = std::filesystem::temp_directory_path() / ("graft_e2e_" + name + "_" + std::to_string(getpid()));
  std::filesystem::remove_all(dir);
  std::filesystem::create_directories(dir);
  return dir;
}

}  // namespace graft::testing

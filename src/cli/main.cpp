// graft command-line entry point (subcommands are added in their own files).
#include <iostream>

int main() {
  std::cout << "graft " << GRAFT_VERSION << "\n";
  return 0;
}

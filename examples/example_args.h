// The command line of the example programs: positional arguments, `--name VALUE` options with defaults,
// and --help. Kept tiny and dependency-free so that each example stays one readable file.
#pragma once
#include <cstdlib>
#include <iostream>
#include <map>
#include <string>
#include <vector>

namespace example {

struct Argument {
  std::string name;   // "DATA" for a positional, "--epochs" for an option
  std::string value;  // an option's default ("" for a positional: required)
  std::string help;
};

class Args {
 public:
  // Exits 0 after printing the usage for -h/--help; exits 2 with the usage and the reason for an unknown
  // option, an option without its value, or a missing or extra positional argument.
  Args(int argc, char** argv, std::string usage, std::vector<Argument> positional,
       std::vector<Argument> options)
      : usage_(std::move(usage)), positional_(std::move(positional)), options_(std::move(options)) {
    std::vector<std::string> given;
    for (const Argument& option : options_) values_[option.name] = option.value;
    for (int i = 1; i < argc; ++i) {
      const std::string word = argv[i];
      if (word == "-h" || word == "--help") {
        print(std::cout);
        std::exit(0);
      }
      if (word.rfind("--", 0) == 0) {
        if (values_.count(word) == 0) fail("unknown option " + word);
        if (i + 1 >= argc) fail(word + " needs a value");
        values_[word] = argv[++i];
        continue;
      }
      given.push_back(word);
    }
    if (given.size() < positional_.size()) fail("missing " + positional_[given.size()].name);
    if (given.size() > positional_.size()) fail("unexpected argument " + given[positional_.size()]);
    for (size_t i = 0; i < given.size(); ++i) values_[positional_[i].name] = given[i];
  }

  const std::string& operator[](const std::string& name) const { return values_.at(name); }
  long long integer(const std::string& name) const { return number<long long>(name); }
  double real(const std::string& name) const { return number<double>(name); }

 private:
  template <class T>
  T number(const std::string& name) const {
    const std::string& text = values_.at(name);
    char* end = nullptr;
    const double value = std::strtod(text.c_str(), &end);
    if (text.empty() || *end != '\0') fail(name + " " + text + ": expected a number");
    return static_cast<T>(value);
  }
  void print(std::ostream& out) const {
    out << "usage: " << usage_ << "\n";
    for (const Argument& a : positional_) out << "  " << a.name << "  " << a.help << "\n";
    for (const Argument& a : options_)
      out << "  " << a.name << " (default " << (a.value.empty() ? "none" : a.value) << ")  " << a.help
          << "\n";
  }
  [[noreturn]] void fail(const std::string& why) const {
    std::cerr << why << "\n";
    print(std::cerr);
    std::exit(2);
  }

  std::string usage_;
  std::vector<Argument> positional_, options_;
  std::map<std::string, std::string> values_;
};

}  // namespace example

// graft's typed errors. Every message says what went wrong, where (file, tensor, line), what was
// expected and what was found, so a user can act on it without a debugger.
#pragma once
#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

namespace graft {

// Base of every error graft throws on purpose; catch this to report and exit cleanly.
class Error : public std::runtime_error {
 public:
  explicit Error(const std::string& message) : std::runtime_error(message) {}
};

// A file that is not what its format says: truncated, malformed header, bad offsets.
class FormatError : public Error {
 public:
  FormatError(const std::string& file, const std::string& what, const std::string& hint = "")
      : Error(file + ": " + what + (hint.empty() ? "" : " (" + hint + ")")), file_(file) {}
  const std::string& file() const { return file_; }

 private:
  std::string file_;
};

// A weight the model needs is absent from the source.
class WeightNotFound : public Error {
 public:
  WeightNotFound(const std::string& source, const std::string& name)
      : Error(source + ": no tensor named '" + name + "'"), name_(name) {}
  const std::string& name() const { return name_; }

 private:
  std::string name_;
};

std::string shape_str(const std::vector<int64_t>& shape);

// A tensor whose shape is not the one the model expects.
class ShapeMismatch : public Error {
 public:
  ShapeMismatch(const std::string& where, const std::string& name, const std::vector<int64_t>& expected,
                const std::vector<int64_t>& got)
      : Error(where + ": tensor '" + name + "' has shape " + shape_str(got) + ", expected " +
              shape_str(expected)),
        name_(name) {}
  const std::string& name() const { return name_; }

 private:
  std::string name_;
};

// A user-supplied specification string (head spec, freeze spec, model name) that does not parse.
class SpecError : public Error {
 public:
  using Error::Error;
};

}  // namespace graft

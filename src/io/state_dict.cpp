// Loading named tensors into a module by full dotted name, with a report of what did not fit.
// Semantics follow PyTorch's Module.load_state_dict (torch/nn/modules/module.py, v1.13): missing and
// unexpected keys, shape mismatches never resized; unlike it, nothing is copied when strict loading fails.
#include <functional>
#include <sstream>
#include <unordered_map>
#include <unordered_set>

#include "graft/errors.h"
#include "graft/weights.h"

namespace graft {
namespace {

// What the planner needs to know about a source tensor without reading its data.
struct SourceEntry {
  std::string name;
  std::vector<int64_t> shape;
  torch::ScalarType dtype;
};

struct LoadPlan {
  LoadReport report;
  std::vector<std::pair<torch::Tensor, size_t>> copies;  // (module tensor, index into the source)
};

enum class DtypeKind { kFloating, kIntegral, kBool, kComplex };

DtypeKind kind_of(torch::ScalarType type) {
  if (type == torch::kBool) return DtypeKind::kBool;
  if (c10::isComplexType(type)) return DtypeKind::kComplex;
  if (c10::isFloatingType(type)) return DtypeKind::kFloating;
  return DtypeKind::kIntegral;
}

// "fc" skips "fc" and "fc.weight" but not "fc2.weight".
bool is_skipped(const std::string& name, const std::vector<std::string>& prefixes) {
  for (const std::string& prefix : prefixes) {
    if (name == prefix) return true;
    if (name.size() > prefix.size() && name.compare(0, prefix.size(), prefix) == 0 &&
        name[prefix.size()] == '.')
      return true;
  }
  return false;
}

NamedTensors module_targets(const torch::nn::Module& module) {
  NamedTensors out;
  for (const auto& item : module.named_parameters(/*recurse=*/true))
    if (item.value().defined()) out.emplace_back(item.key(), item.value());
  for (const auto& item : module.named_buffers(/*recurse=*/true))
    if (item.value().defined()) out.emplace_back(item.key(), item.value());
  return out;
}

// Matches module tensors with source entries by name; nothing is copied here, so a strict failure leaves
// the module untouched and a lazy source reads only what it will copy.
LoadPlan plan_load(const torch::nn::Module& module, const std::vector<SourceEntry>& source,
                   const LoadOptions& options) {
  std::unordered_map<std::string, size_t> by_name;
  for (size_t i = 0; i < source.size(); ++i)
    if (!by_name.emplace(source[i].name, i).second)
      throw Error(options.source_name + ": tensor '" + source[i].name + "' appears twice in the source");

  LoadPlan plan;
  LoadReport& report = plan.report;
  std::unordered_set<std::string> matched;
  for (const auto& [name, target] : module_targets(module)) {
    const auto it = by_name.find(name);
    if (it != by_name.end()) matched.insert(name);
    if (is_skipped(name, options.skip_prefixes)) {
      report.skipped.push_back(name);
      continue;
    }
    if (it == by_name.end()) {
      report.missing.push_back(name);
      report.shapes[name] = target.sizes().vec();
      continue;
    }
    const SourceEntry& entry = source[it->second];
    if (target.sizes().vec() != entry.shape) {
      report.mismatched.push_back({name, target.sizes().vec(), entry.shape});
      continue;
    }
    // Half weights into a float model are routine; an integer tensor into a float one is a wrong file.
    if (kind_of(entry.dtype) != kind_of(target.scalar_type()))
      throw Error(options.source_name + ": tensor '" + name + "' is " + c10::toString(entry.dtype) +
                  " in the source but " + c10::toString(target.scalar_type()) +
                  " in the model; graft converts only between floating types or between integer types");
    plan.copies.emplace_back(target, it->second);
    report.loaded.push_back(name);
  }
  for (const SourceEntry& entry : source) {
    if (matched.count(entry.name) != 0) continue;
    if (is_skipped(entry.name, options.skip_prefixes)) {
      report.skipped.push_back(entry.name);
    } else {
      report.unexpected.push_back(entry.name);
      report.shapes[entry.name] = entry.shape;
    }
  }
  return plan;
}

// Runs a plan: throws when strict and the report is not clean, else copies source tensors in.
LoadReport execute(LoadPlan plan, const LoadOptions& options,
                   const std::function<torch::Tensor(size_t)>& load_source) {
  if (options.strict && !plan.report.ok()) {
    const LoadReport& report = plan.report;
    // Not one of the model's names: a file of another architecture (or naming), said first.
    const std::string what =
        report.loaded.empty() && report.mismatched.empty() && !report.missing.empty()
            ? ": none of the model's " + std::to_string(report.missing.size()) + " tensors is in the file (" +
                  std::to_string(report.unexpected.size()) +
                  " tensors of other names): the weights of another architecture? Nothing was loaded:\n"
            : ": the weights do not fit the model (nothing was loaded):\n";
    throw Error(options.source_name + what + report.to_string(options.listed) +
                "hint: " + (options.hint.empty() ? "set strict to false to load what fits" : options.hint));
  }
  torch::NoGradGuard no_grad;
  for (auto& [target, index] : plan.copies) target.copy_(load_source(index));  // casts dtype, keeps device
  return std::move(plan.report);
}

std::string shape_of(const LoadReport& report, const std::string& name) {
  const auto it = report.shapes.find(name);
  return it == report.shapes.end() ? "" : " " + shape_str(it->second);
}

// A common cause of "everything missing": the source names carry a prefix the model's lack, or vice versa
// ("module." from DataParallel, "model." from a wrapper).
std::string prefix_hint(const LoadReport& report) {
  if (report.missing.empty() || report.unexpected.empty()) return "";
  const std::string& unexpected = report.unexpected.front();
  for (const std::string& missing : report.missing) {
    const auto ends_with = [](const std::string& text, const std::string& tail) {
      return text.size() > tail.size() && text.compare(text.size() - tail.size(), tail.size(), tail) == 0 &&
             text[text.size() - tail.size() - 1] == '.';
    };
    if (ends_with(unexpected, missing))
      return "hint: the source names start with '" +
             unexpected.substr(0, unexpected.size() - missing.size()) + "' where the model's do not (e.g. '" +
             unexpected + "' vs '" + missing + "')\n";
    if (ends_with(missing, unexpected))
      return "hint: the model names start with '" + missing.substr(0, missing.size() - unexpected.size()) +
             "' where the source's do not (e.g. '" + missing + "' vs '" + unexpected + "')\n";
  }
  return "";
}

}  // namespace

std::string LoadReport::to_string(size_t listed) const {
  std::ostringstream out;
  out << "loaded " << loaded.size() << " tensors; " << missing.size() << " missing, " << unexpected.size()
      << " unexpected, " << mismatched.size() << " with a different shape, " << skipped.size()
      << " skipped\n";
  // The first `listed` lines of a kind, then how many more.
  const auto list = [&](const char* title, size_t count, const std::function<void(size_t)>& line) {
    if (count == 0) return;
    out << title << ":\n";
    for (size_t i = 0; i < count && i < listed; ++i) line(i);
    if (count > listed) out << "  ... and " << count - listed << " more\n";
  };
  list("missing (in the model, not in the source)", missing.size(),
       [&](size_t i) { out << "  " << missing[i] << shape_of(*this, missing[i]) << "\n"; });
  list("unexpected (in the source, not in the model)", unexpected.size(),
       [&](size_t i) { out << "  " << unexpected[i] << shape_of(*this, unexpected[i]) << "\n"; });
  list("shape mismatch (the model's shape, the source's shape)", mismatched.size(), [&](size_t i) {
    out << "  " << mismatched[i].name << ": model expects " << shape_str(mismatched[i].expected)
        << ", source has " << shape_str(mismatched[i].got) << "\n";
  });
  list("skipped on purpose", skipped.size(), [&](size_t i) { out << "  " << skipped[i] << "\n"; });
  out << prefix_hint(*this);
  return out.str();
}

NamedTensors state_dict(const torch::nn::Module& module) {
  NamedTensors out = module_targets(module);
  for (auto& item : out) item.second = item.second.detach();  // shares storage, drops autograd history
  return out;
}

LoadReport load_state_dict(torch::nn::Module& module, const NamedTensors& tensors,
                           const LoadOptions& options) {
  std::vector<SourceEntry> source;
  source.reserve(tensors.size());
  for (const auto& [name, tensor] : tensors) {
    if (!tensor.defined()) throw Error(options.source_name + ": tensor '" + name + "' is undefined");
    source.push_back({name, tensor.sizes().vec(), tensor.scalar_type()});
  }
  LoadPlan plan = plan_load(module, source, options);
  return execute(std::move(plan), options, [&](size_t index) { return tensors[index].second; });
}

LoadReport load_safetensors(torch::nn::Module& module, const std::string& path, LoadOptions options) {
  if (options.source_name.empty() || options.source_name == LoadOptions().source_name)
    options.source_name = path;
  const SafeTensorsReader reader(path);
  std::vector<SourceEntry> source;
  source.reserve(reader.tensors().size());
  for (const TensorInfo& info : reader.tensors())
    source.push_back({info.name, info.shape, safetensors_scalar_type(info.dtype)});
  LoadPlan plan = plan_load(module, source, options);
  // Only tensors that will be copied are read out of the mapping.
  return execute(std::move(plan), options,
                 [&](size_t index) { return reader.load(reader.tensors()[index].name); });
}

}  // namespace graft

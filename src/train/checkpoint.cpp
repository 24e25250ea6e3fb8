// Training checkpoints that a crash cannot break.
//
// A checkpoint is a directory D (e.g. run/checkpoints/last) holding
//   model.safetensors  parameters and buffers by dotted name (graft::write_safetensors)
//   optimizer.safetensors  the optimiser's per-parameter state by parameter name ("fc.weight.exp_avg";
//                      PyTorch's field names), so that no checkpoint holds a pickle (libtorch's
//                      torch::save archive is TorchScript + pickle, and loading one can run its code)
//   trainer.json       epoch, step, best metric, early-stopping counter, history, RNG state, optimiser
//                      config and groups, and the size of every other file. Written last.
//
// Writing (the scheme, and why every crash point is safe):
//   1. mkdtemp("D.tmp-XXXXXX"); write the files into it, each fsync'ed, trainer.json last; fsync the
//      folder. A crash here leaves D untouched; temporaries are never loaded, only cleaned up.
//   2. No D yet: rename(tmp, D), atomic.
//      D exists: renameat2(tmp, D, RENAME_EXCHANGE) swaps the two names in one atomic step (Linux >= 3.15
//      on ext4, xfs, btrfs, tmpfs...); the old checkpoint now sits at the temporary name and is removed.
//      Where the exchange is unsupported: rename(D, "D.old-XXXXXX"), then rename(tmp, D), then remove
//      the old one. A crash between the two renames leaves no D but a complete D.old-*, which
//      find_checkpoint() picks.
//      (GRAFT_NO_RENAME_EXCHANGE=1 forces this path. GRAFT_TEST_PAUSE_IN_CHECKPOINT_WRITE is a test-only
//      hook that stops the process inside these steps; see pause_for_test.)
//   3. fsync the parent folder so the renames are durable; remove stale D.tmp-* / D.old-* siblings.
// Reading (find_checkpoint): D if it is complete (trainer.json parses and every file it names has the
// recorded size), else the complete D.old-* with the highest epoch, else nothing.
#include <fcntl.h>
#include <signal.h>
#include <sys/stat.h>
#include <torch/optim/adam.h>
#include <torch/optim/adamw.h>
#include <torch/optim/optimizer.h>
#include <torch/optim/sgd.h>
#include <unistd.h>

#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <map>
#include <nlohmann/json.hpp>
#include <sstream>
#include <unordered_map>
#include <unordered_set>

#include "graft/files.h"
#include "graft/json_file.h"
#include "graft/save_id.h"
#include "graft/trainer.h"
#include "graft/weights.h"

namespace graft {
namespace {

namespace fs = std::filesystem;
using json = nlohmann::json;

constexpr const char* kModelFile = "model.safetensors";
constexpr const char* kOptimizerFile = "optimizer.safetensors";
constexpr const char* kLegacyOptimizerFile = "optimizer.pt";  // format version 1: libtorch's archive
constexpr const char* kStateFile = "trainer.json";
constexpr int kFormatVersion = 2;

std::string errno_text() {
  return file_error_text(errno);
}

// Test-only hook (tests/e2e/test_runs_that_die.cpp): with
// GRAFT_TEST_PAUSE_IN_CHECKPOINT_WRITE=NAME:EPOCH:POINT the process stops itself (SIGSTOP) at POINT of
// writing checkpoint NAME (last, best) of epoch EPOCH, so that a test can SIGKILL it exactly there. POINT:
//   partial  model.safetensors is in the temporary folder, trainer.json is not
//   whole    the temporary folder is complete and flushed, not yet renamed to NAME
//   aside    (fallback scheme, GRAFT_NO_RENAME_EXCHANGE=1) the previous NAME is at NAME.old-*, the new one
//            not yet renamed to NAME
// SIGCONT lets it carry on as if nothing happened. Unset, as in every real run, it costs one getenv.
void pause_for_test(const std::string& dir, int64_t epoch, const char* point) {
  static const char* const spec = std::getenv("GRAFT_TEST_PAUSE_IN_CHECKPOINT_WRITE");
  if (!spec) return;
  const std::string here = fs::path(dir).filename().string() + ":" + std::to_string(epoch) + ":" + point;
  if (spec != here) return;
  // The line tells the test this stop is the hook's and not another process's SIGSTOP.
  std::cerr << "graft: test hook: stopping in checkpoint write " << here << std::endl;
  ::raise(SIGSTOP);
}

std::string parent_of(const std::string& path) {
  const fs::path parent = fs::path(path).parent_path();
  return parent.empty() ? "." : parent.string();
}

void remove_quietly(const fs::path& path) {
  std::error_code ignored;
  fs::remove_all(path, ignored);
}

// Sibling folders "NAME.<infix>-XXXXXX" of `dir`.
std::vector<fs::path> siblings(const std::string& dir, const std::string& infix) {
  std::vector<fs::path> found;
  const fs::path target(dir);
  const fs::path parent = target.parent_path().empty() ? fs::path(".") : target.parent_path();
  const std::string prefix = target.filename().string() + "." + infix + "-";
  std::error_code error;
  for (fs::directory_iterator it(parent, error), end; !error && it != end; it.increment(error)) {
    const std::string name = it->path().filename().string();
    if (name.size() > prefix.size() && name.compare(0, prefix.size(), prefix) == 0)
      found.push_back(it->path());
  }
  return found;
}

std::string hex_encode(const std::vector<uint8_t>& bytes) {
  static const char* digits = "0123456789abcdef";
  std::string out;
  out.reserve(bytes.size() * 2);
  for (uint8_t b : bytes) out += digits[b >> 4], out += digits[b & 15];
  return out;
}

std::vector<uint8_t> hex_decode(const std::string& text, const std::string& file) {
  auto nibble = [&](char c) -> uint8_t {
    if (c >= '0' && c <= '9') return static_cast<uint8_t>(c - '0');
    if (c >= 'a' && c <= 'f') return static_cast<uint8_t>(c - 'a' + 10);
    throw FormatError(file, "rng_state is not lower-case hex");
  };
  if (text.size() % 2) throw FormatError(file, "rng_state has an odd number of hex digits");
  std::vector<uint8_t> out(text.size() / 2);
  for (size_t i = 0; i < out.size(); ++i)
    out[i] = static_cast<uint8_t>(nibble(text[2 * i]) << 4 | nibble(text[2 * i + 1]));
  return out;
}

json optional_json(const std::optional<double>& value) {
  return value ? json(*value) : json(nullptr);
}

std::optional<double> optional_from(const json& value) {
  if (value.is_null()) return std::nullopt;
  return value.get<double>();
}

json epoch_to_json(const EpochResult& r) {
  return json{{"epoch", r.epoch},
              {"global_step", r.global_step},
              {"train_loss", r.train_loss},
              {"train_accuracy", r.train_accuracy},
              {"val_loss", optional_json(r.val_loss)},
              {"val_accuracy", optional_json(r.val_accuracy)},
              {"val_top5", optional_json(r.val_top5)},
              {"val_macro_f1", optional_json(r.val_macro_f1)},
              {"lr", r.lr},
              {"seconds", r.seconds},
              {"improved", r.improved}};
}

EpochResult epoch_from_json(const json& j) {
  EpochResult r;
  r.epoch = j.at("epoch").get<int64_t>();
  r.global_step = j.at("global_step").get<int64_t>();
  r.train_loss = j.at("train_loss").get<double>();
  r.train_accuracy = j.at("train_accuracy").get<double>();
  r.val_loss = optional_from(j.at("val_loss"));
  r.val_accuracy = optional_from(j.at("val_accuracy"));
  r.val_top5 = optional_from(j.at("val_top5"));
  r.val_macro_f1 = optional_from(j.at("val_macro_f1"));
  r.lr = j.at("lr").get<double>();
  r.seconds = j.at("seconds").get<double>();
  r.improved = j.at("improved").get<bool>();
  return r;
}

json optimizer_to_json(const OptimizerConfig& c) {
  return json{{"name", c.name},
              {"lr", c.lr},
              {"momentum", c.momentum},
              {"nesterov", c.nesterov},
              {"weight_decay", optional_json(c.weight_decay)},
              {"betas", {c.betas[0], c.betas[1]}},
              {"eps", c.eps}};
}

OptimizerConfig optimizer_from_json(const json& j) {
  OptimizerConfig c;
  c.name = j.at("name").get<std::string>();
  c.lr = j.at("lr").get<double>();
  c.momentum = j.at("momentum").get<double>();
  c.nesterov = j.at("nesterov").get<bool>();
  c.weight_decay = optional_from(j.at("weight_decay"));
  c.betas = {j.at("betas").at(0).get<double>(), j.at("betas").at(1).get<double>()};
  c.eps = j.at("eps").get<double>();
  return c;
}

json state_to_json(const TrainerState& s) {
  json groups = json::array();
  for (const auto& g : s.groups)
    groups.push_back({{"name", g.name},
                      {"lr_mult", g.lr_mult},
                      {"params", g.params},
                      {"no_weight_decay", g.no_weight_decay}});
  json history = json::array();
  for (const auto& r : s.history) history.push_back(epoch_to_json(r));
  return json{{"format", "graft-checkpoint"},
              {"version", kFormatVersion},
              {"epoch", s.epoch},
              {"global_step", s.global_step},
              {"has_best", s.has_best},
              {"best_metric", s.best_metric},
              {"best_epoch", s.best_epoch},
              {"epochs_without_improvement", s.epochs_without_improvement},
              {"finished", s.finished},
              {"seed", s.seed},
              {"precision", s.precision},
              {"rng_device", s.rng_device},
              {"rng_state", hex_encode(s.rng_state)},
              {"device_rng_state", hex_encode(s.device_rng_state)},
              {"optimizer", optimizer_to_json(s.optimizer)},
              {"groups", groups},
              {"trainable", s.trainable},
              {"history", history}};
}

// Every count and index of a read state in its range, so that a damaged or foreign trainer.json is refused
// by field ("resumed after epoch -5" was printed before).
void check_state_ranges(const TrainerState& s, const std::string& file) {
  const auto check = [&](bool ok, const std::string& field, const std::string& value,
                         const std::string& expected) {
    if (!ok)
      throw FormatError(file, "field '" + field + "' is " + value,
                        "expected " + expected + "; the checkpoint is damaged or was not written by graft");
  };
  const std::string epochs = "0.." + std::to_string(s.epoch);
  check(s.epoch >= 0, "epoch", std::to_string(s.epoch), "the epochs completed, >= 0");
  check(s.global_step >= 0, "global_step", std::to_string(s.global_step), "the optimiser steps done, >= 0");
  check(s.best_epoch >= 0 && s.best_epoch <= s.epoch, "best_epoch", std::to_string(s.best_epoch),
        "an epoch in " + epochs);
  check(s.epochs_without_improvement >= 0 && s.epochs_without_improvement <= s.epoch,
        "epochs_without_improvement", std::to_string(s.epochs_without_improvement), "a count in " + epochs);
  check(!s.has_best || std::isfinite(s.best_metric), "best_metric", std::to_string(s.best_metric),
        "a finite number");
  for (size_t i = 0; i < s.history.size(); ++i)
    check(s.history[i].epoch >= 1 && s.history[i].epoch <= s.epoch,
          "history[" + std::to_string(i) + "].epoch", std::to_string(s.history[i].epoch),
          "an epoch in 1.." + std::to_string(s.epoch));
  for (size_t i = 0; i < s.groups.size(); ++i)
    check(std::isfinite(s.groups[i].lr_mult) && s.groups[i].lr_mult >= 0,
          "groups[" + std::to_string(i) + "].lr_mult", std::to_string(s.groups[i].lr_mult),
          "a finite multiplier >= 0");
}

TrainerState state_from_json(const json& j, const std::string& file) {
  if (j.value("format", "") != "graft-checkpoint")
    throw FormatError(file, "not a graft checkpoint state (no \"format\": \"graft-checkpoint\")");
  if (j.at("version").get<int>() > kFormatVersion)
    throw FormatError(file,
                      "checkpoint format version " + std::to_string(j.at("version").get<int>()) +
                          " is newer than this graft reads (" + std::to_string(kFormatVersion) + ")",
                      "update graft");
  TrainerState s;
  s.epoch = j.at("epoch").get<int64_t>();
  s.global_step = j.at("global_step").get<int64_t>();
  s.has_best = j.at("has_best").get<bool>();
  s.best_metric = j.at("best_metric").is_null() ? 0.0 : j.at("best_metric").get<double>();
  s.best_epoch = j.at("best_epoch").get<int64_t>();
  s.epochs_without_improvement = j.at("epochs_without_improvement").get<int64_t>();
  s.finished = j.at("finished").get<bool>();
  s.seed = j.at("seed").get<uint64_t>();
  s.precision = j.value("precision", std::string("fp32"));  // checkpoints before --precision: fp32
  if (s.precision != "fp32" && s.precision != "bf16" && s.precision != "fp16")
    throw FormatError(file, "field 'precision' is '" + s.precision + "'", "fp32, bf16 or fp16");
  s.rng_device = j.at("rng_device").get<std::string>();
  s.rng_state = hex_decode(j.at("rng_state").get<std::string>(), file);
  s.device_rng_state = hex_decode(j.value("device_rng_state", std::string()), file);
  s.optimizer = optimizer_from_json(j.at("optimizer"));
  for (const auto& g : j.at("groups"))
    s.groups.push_back({g.at("name").get<std::string>(), g.at("lr_mult").get<double>(),
                        g.at("params").get<std::vector<std::string>>(), g.value("no_weight_decay", false)});
  s.trainable = j.at("trainable").get<std::vector<std::string>>();
  for (const auto& r : j.at("history")) s.history.push_back(epoch_from_json(r));
  check_state_ranges(s, file);
  return s;
}

std::string read_text(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw Error("cannot open '" + path + "': " + errno_text());
  std::ostringstream buffer;
  buffer << in.rdbuf();
  return buffer.str();
}

// trainer.json parsed and every file it names present with its recorded size.
std::optional<json> complete_state(const std::string& dir) {
  const std::string state_path = (fs::path(dir) / kStateFile).string();
  std::error_code error;
  if (!fs::is_regular_file(state_path, error)) return std::nullopt;
  try {
    json state = parse_json(read_text(state_path), state_path);
    for (const auto& [name, size] : state.at("files").items()) {
      const auto actual = fs::file_size(fs::path(dir) / name, error);
      if (error || actual != size.get<uintmax_t>()) return std::nullopt;
    }
    return state;
  } catch (const std::exception&) {
    return std::nullopt;
  }
}

// --- Optimiser state as named tensors -------------------------------------------------------------
// libtorch keys an optimiser's state by the parameter's TensorImpl (optimizer_param_state, optim.cpp);
// the file keys it by the parameter's name in the model, so that it loads into a rebuilt model and
// optimiser. Fields as PyTorch names them: SGD momentum_buffer; Adam/AdamW step (an int64 scalar),
// exp_avg, exp_avg_sq and, with amsgrad, max_exp_avg_sq.

std::string optimizer_kind(const torch::optim::Optimizer& optimizer) {
  if (dynamic_cast<const torch::optim::SGD*>(&optimizer)) return "sgd";
  if (dynamic_cast<const torch::optim::AdamW*>(&optimizer)) return "adamw";
  if (dynamic_cast<const torch::optim::Adam*>(&optimizer)) return "adam";
  throw Error("cannot checkpoint this optimiser: graft saves the state of SGD, Adam and AdamW only");
}

// The model's parameter names by TensorImpl, for the tensors an optimiser holds.
class ParameterNames {
 public:
  explicit ParameterNames(const torch::nn::Module& model) {
    for (const auto& item : model.named_parameters(/*recurse=*/true))
      names_.emplace(item.value().unsafeGetTensorImpl(), item.key());
  }

  // `doing` starts the message when the optimiser trains a tensor that is not the model's.
  const std::string& of(const torch::Tensor& param, const std::string& doing) const {
    const auto found = names_.find(param.unsafeGetTensorImpl());
    if (found == names_.end())
      throw Error(doing + ": the optimiser trains a tensor of shape " + shape_str(param.sizes().vec()) +
                  " that is not a parameter of the model");
    return found->second;
  }

 private:
  std::unordered_map<const void*, std::string> names_;
};

template <typename AdamState>
void add_adam_state(NamedTensors& out, const std::string& name, const AdamState& state) {
  out.emplace_back(name + ".step", torch::tensor(state.step(), torch::kInt64));
  out.emplace_back(name + ".exp_avg", state.exp_avg());
  out.emplace_back(name + ".exp_avg_sq", state.exp_avg_sq());
  if (state.max_exp_avg_sq().defined()) out.emplace_back(name + ".max_exp_avg_sq", state.max_exp_avg_sq());
}

NamedTensors optimizer_state_tensors(const torch::optim::Optimizer& optimizer,
                                     const torch::nn::Module& model) {
  const ParameterNames names(model);
  NamedTensors out;
  for (const auto& group : optimizer.param_groups()) {
    for (const auto& param : group.params()) {
      const torch::optim::OptimizerParamState* state = optimizer_param_state(optimizer, param);
      if (!state) continue;  // not stepped yet
      const std::string& name = names.of(param, "cannot checkpoint the optimiser");
      if (const auto* sgd = dynamic_cast<const torch::optim::SGDParamState*>(state)) {
        if (sgd->momentum_buffer().defined())
          out.emplace_back(name + ".momentum_buffer", sgd->momentum_buffer());
      } else if (const auto* adam = dynamic_cast<const torch::optim::AdamParamState*>(state)) {
        add_adam_state(out, name, *adam);
      } else if (const auto* adamw = dynamic_cast<const torch::optim::AdamWParamState*>(state)) {
        add_adam_state(out, name, *adamw);
      } else {
        throw Error("cannot checkpoint the optimiser state of parameter '" + name +
                    "': graft saves the state of SGD, Adam and AdamW only");
      }
    }
  }
  return out;
}

// optimizer.safetensors opened for reading: each parameter's state, checked against the parameter, and
// whether every tensor of the file found its parameter.
class OptimizerStateFile {
 public:
  explicit OptimizerStateFile(const std::string& path) : reader_(path) {}

  const std::string& path() const { return reader_.path(); }
  std::string metadata(const std::string& key) const {
    const auto found = reader_.metadata().find(key);
    return found == reader_.metadata().end() ? "" : found->second;
  }
  const std::map<std::string, std::string>& metadata() const { return reader_.metadata(); }

  // "<name>.<field>" as a tensor shaped and typed like `param`, on its device; undefined when absent.
  torch::Tensor like(const std::string& name, const char* field, const torch::Tensor& param) {
    const std::string key = name + "." + field;
    if (!reader_.contains(key)) return {};
    used_.insert(key);
    const TensorInfo& info = reader_.info(key);
    if (info.shape != param.sizes().vec()) throw ShapeMismatch(path(), key, param.sizes().vec(), info.shape);
    if (info.dtype != safetensors_dtype(param.scalar_type()))
      throw FormatError(path(), "tensor '" + key + "' has dtype " + info.dtype + ", expected " +
                                    safetensors_dtype(param.scalar_type()) + " (the parameter's)");
    return reader_.load(key).to(param.device());
  }

  // "<name>.step", an int64 scalar >= 0; nullopt when absent.
  std::optional<int64_t> step(const std::string& name) {
    const std::string key = name + ".step";
    if (!reader_.contains(key)) return std::nullopt;
    used_.insert(key);
    const TensorInfo& info = reader_.info(key);
    if (info.dtype != "I64" || !info.shape.empty())
      throw FormatError(path(), "tensor '" + key + "' has dtype " + info.dtype + " and shape " +
                                    shape_str(info.shape) + ", expected an I64 scalar (shape [])");
    const int64_t step = reader_.load(key).item<int64_t>();
    if (step < 0)
      throw FormatError(path(), "tensor '" + key + "' is " + std::to_string(step) + ", expected >= 0");
    return step;
  }

  // Every tensor of the file was read: a leftover belongs to a parameter the optimiser does not train.
  void expect_all_used() const {
    for (const auto& info : reader_.tensors())
      if (!used_.count(info.name))
        throw FormatError(
            path(), "tensor '" + info.name + "' is the state of no parameter this optimiser trains",
            "the model or its trainable parameters differ from those the checkpoint was saved with");
  }

 private:
  SafeTensorsReader reader_;
  std::unordered_set<std::string> used_;
};

template <typename AdamState>
std::unique_ptr<AdamState> read_adam_state(OptimizerStateFile& file, const std::string& name,
                                           const torch::Tensor& param) {
  const std::optional<int64_t> step = file.step(name);
  torch::Tensor exp_avg = file.like(name, "exp_avg", param);
  torch::Tensor exp_avg_sq = file.like(name, "exp_avg_sq", param);
  torch::Tensor max_exp_avg_sq = file.like(name, "max_exp_avg_sq", param);
  if (!step && !exp_avg.defined() && !exp_avg_sq.defined() && !max_exp_avg_sq.defined()) return nullptr;
  if (!step || !exp_avg.defined() || !exp_avg_sq.defined())
    throw FormatError(file.path(), "the state of parameter '" + name +
                                       "' is incomplete: Adam needs step, exp_avg and exp_avg_sq together");
  auto state = std::make_unique<AdamState>();
  state->step(*step);
  state->exp_avg(exp_avg);
  state->exp_avg_sq(exp_avg_sq);
  if (max_exp_avg_sq.defined()) state->max_exp_avg_sq(max_exp_avg_sq);
  return state;
}

}  // namespace

void save_checkpoint(const std::string& dir, const torch::nn::Module& model,
                     const torch::optim::Optimizer* optimizer, const TrainerState& state) {
  std::error_code error;
  fs::create_directories(parent_of(dir), error);
  if (error) throw Error("cannot create the folder for checkpoint '" + dir + "': " + error.message());

  std::string temp = dir + ".tmp-XXXXXX";
  if (!::mkdtemp(temp.data()))
    throw Error("cannot create a temporary folder next to '" + dir + "': " + errno_text());
  ::chmod(temp.c_str(), 0755);
  try {
    json files = json::object();
    // One id in every file of this save: a file copied in from another checkpoint is refused at load.
    const std::string save_id = new_save_id();
    const std::string model_path = (fs::path(temp) / kModelFile).string();
    write_safetensors(
        model_path, state_dict(model),
        {{"format", "pt"}, {"graft_epoch", std::to_string(state.epoch)}, {"graft_save_id", save_id}});
    files[kModelFile] = fs::file_size(model_path);
    pause_for_test(dir, state.epoch, "partial");
    if (optimizer) {
      const std::string optimizer_path = (fs::path(temp) / kOptimizerFile).string();
      write_safetensors(optimizer_path, optimizer_state_tensors(*optimizer, model),
                        {{"format", "graft-optimizer"},
                         {"optimizer", optimizer_kind(*optimizer)},
                         {"graft_save_id", save_id}});
      files[kOptimizerFile] = fs::file_size(optimizer_path);
    }
    json state_json = state_to_json(state);
    state_json["files"] = files;
    state_json["save_id"] = save_id;
    write_file_atomic((fs::path(temp) / kStateFile).string(), state_json.dump(1));  // last: marks it whole
    fsync_path(temp, /*directory=*/true);
  } catch (const std::exception& e) {
    remove_quietly(temp);
    throw Error("cannot write checkpoint '" + dir +
                "' (the previous one there, if any, is unchanged): " + e.what());
  }
  pause_for_test(dir, state.epoch, "whole");

  if (!fs::exists(dir, error)) {
    if (::rename(temp.c_str(), dir.c_str()) != 0) {
      const std::string reason = errno_text();
      remove_quietly(temp);
      throw Error("cannot move checkpoint '" + temp + "' to '" + dir + "': " + reason);
    }
  } else {
    bool exchanged = false;
#ifdef RENAME_EXCHANGE
    // GRAFT_NO_RENAME_EXCHANGE=1 forces the fallback (tests; file systems that misreport support).
    const char* no_exchange = std::getenv("GRAFT_NO_RENAME_EXCHANGE");
    if (!(no_exchange && std::string(no_exchange) == "1"))
      exchanged = ::renameat2(AT_FDCWD, temp.c_str(), AT_FDCWD, dir.c_str(), RENAME_EXCHANGE) == 0;
#endif
    if (exchanged) {
      remove_quietly(temp);  // holds the previous checkpoint now
    } else {
      // mkdtemp reserves a unique name; rename() may replace an empty folder.
      std::string old = dir + ".old-XXXXXX";
      if (!::mkdtemp(old.data()) || ::rename(dir.c_str(), old.c_str()) != 0) {
        const std::string reason = errno_text();
        remove_quietly(temp);
        throw Error("cannot move the previous checkpoint '" + dir + "' aside: " + reason);
      }
      pause_for_test(dir, state.epoch, "aside");
      if (::rename(temp.c_str(), dir.c_str()) != 0) {
        const std::string reason = errno_text();
        throw Error("cannot move checkpoint '" + temp + "' to '" + dir + "': " + reason +
                    " (the previous checkpoint is intact at '" + old + "')");
      }
      remove_quietly(old);
    }
  }
  fsync_path(parent_of(dir), /*directory=*/true);
  // Leftovers of earlier crashes: D is whole now, so they are no longer needed.
  for (const auto& stale : siblings(dir, "tmp")) remove_quietly(stale);
  for (const auto& stale : siblings(dir, "old")) remove_quietly(stale);
}

std::optional<std::string> find_checkpoint(const std::string& dir) {
  if (complete_state(dir)) return dir;
  std::optional<std::string> best;
  int64_t best_epoch = -1;
  for (const auto& candidate : siblings(dir, "old")) {
    const auto state = complete_state(candidate.string());
    if (!state) continue;
    const int64_t epoch = state->value("epoch", int64_t{0});
    if (epoch > best_epoch) best_epoch = epoch, best = candidate.string();
  }
  return best;
}

TrainerState read_trainer_state(const std::string& checkpoint_dir) {
  const std::string path = (fs::path(checkpoint_dir) / kStateFile).string();
  const json j = parse_json(read_text(path), path);
  try {
    return state_from_json(j, path);
  } catch (const json::exception& e) {
    throw FormatError(path, std::string("missing or mistyped field: ") + e.what(),
                      "the checkpoint was written by another program or version");
  }
}

namespace {

// A checkpoint's files are of one save: trainer.json's save_id is in the file's metadata (checkpoints
// written before save ids carry none: nothing to check).
void check_same_save(const std::string& checkpoint_dir, const std::map<std::string, std::string>& metadata,
                     const std::string& file) {
  const std::string state_path = (fs::path(checkpoint_dir) / kStateFile).string();
  const json state = parse_json(read_text(state_path), state_path);
  if (!state.is_object() || !state.contains("save_id") || !state.at("save_id").is_string()) return;
  const std::string expected = state.at("save_id").get<std::string>();
  const auto found = metadata.find("graft_save_id");
  const std::string actual = found == metadata.end() ? "" : found->second;
  if (actual != expected)
    throw FormatError(file,
                      "is from " + (actual.empty() ? std::string("no graft checkpoint") : "save " + actual) +
                          " but " + state_path + " is of save " + expected,
                      "a checkpoint's files go together: this one was copied in from another checkpoint or "
                      "run; resume from a whole checkpoint folder, or start the run again");
}

}  // namespace

void load_checkpoint_model(const std::string& checkpoint_dir, torch::nn::Module& model) {
  const std::string path = (fs::path(checkpoint_dir) / kModelFile).string();
  check_same_save(checkpoint_dir, SafeTensorsReader(path).metadata(), path);
  LoadOptions options;
  options.strict = true;
  options.source_name = path;
  load_safetensors(model, path, options);
}

void load_checkpoint_optimizer(const std::string& checkpoint_dir, const torch::nn::Module& model,
                               torch::optim::Optimizer& optimizer) {
  const std::string path = (fs::path(checkpoint_dir) / kOptimizerFile).string();
  if (!fs::exists(path)) {
    if (fs::exists(fs::path(checkpoint_dir) / kLegacyOptimizerFile))
      throw Error("cannot resume from checkpoint '" + checkpoint_dir + "': its optimiser state is in " +
                  kLegacyOptimizerFile +
                  ", the libtorch archive an earlier graft wrote; graft no longer loads such files (they are "
                  "TorchScript and pickle, which can run code). Start the run again, or continue from its "
                  "weights with --init-from");
    throw Error("checkpoint '" + checkpoint_dir + "' has no " + kOptimizerFile);
  }
  OptimizerStateFile file(path);
  check_same_save(checkpoint_dir, file.metadata(), path);
  const std::string kind = optimizer_kind(optimizer);
  const std::string saved_kind = file.metadata("optimizer");
  if (saved_kind != kind)
    throw FormatError(path, "holds the state of optimizer '" + saved_kind + "', expected '" + kind + "'",
                      "resume with the optimizer the run was trained with");
  const ParameterNames names(model);
  const std::string restoring = "cannot restore the optimiser from '" + path + "'";
  // Read and checked whole before the optimiser's own state is touched.
  std::vector<std::pair<torch::Tensor, std::unique_ptr<torch::optim::OptimizerParamState>>> states;
  for (const auto& group : optimizer.param_groups()) {
    for (const auto& param : group.params()) {
      const std::string& name = names.of(param, restoring);
      std::unique_ptr<torch::optim::OptimizerParamState> state;
      if (kind == "sgd") {
        torch::Tensor buffer = file.like(name, "momentum_buffer", param);
        if (buffer.defined()) {
          auto sgd = std::make_unique<torch::optim::SGDParamState>();
          sgd->momentum_buffer(buffer);
          state = std::move(sgd);
        }
      } else if (kind == "adam") {
        state = read_adam_state<torch::optim::AdamParamState>(file, name, param);
      } else {
        state = read_adam_state<torch::optim::AdamWParamState>(file, name, param);
      }
      if (state) states.emplace_back(param, std::move(state));
    }
  }
  file.expect_all_used();
  optimizer.state().clear();
  for (auto& [param, state] : states) set_optimizer_param_state(optimizer, param, std::move(state));
}

}  // namespace graft

// Saving and loading run directories (model.safetensors + graft.json).
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <random>

#include "graft/errors.h"
#include "graft/lora.h"
#include "graft/registry.h"
#include "graft/run.h"
#include "graft/run_document.h"
#include "graft/save_id.h"
#include "graft/trainer.h"
#include "graft/transfer.h"
#include "graft/video_task.h"
#include "graft/weights.h"
#include "transfer/driver.h"

namespace graft {

namespace fs = std::filesystem;
using nlohmann::json;

void save_run(const std::string& dir, BackboneImpl& model, const RunSpec& spec, const json& training) {
  fs::create_directories(dir);
  json doc = new_run_document(spec.task, spec.classes, spec.freeze, spec.data, training);
  doc["model"] = spec.model;
  doc["arch"] = model.arch();
  doc["head"] = spec.head;
  doc["num_classes"] = spec.classes.size();
  doc["preprocessing"] = preprocessing_json(spec.preprocessing);
  write_run_files(dir, state_dict(model),
                  {{"format", "pt"}, {"producer", "graft " GRAFT_VERSION}, {"arch", model.arch()}},
                  std::move(doc));
}

namespace {

// path at or below folder, both as the file system resolves them (links and ".." included). A path that
// cannot be resolved is not known to lie there (an empty resolved folder would otherwise hold everything).
bool is_at_or_below(const fs::path& path, const fs::path& folder) {
  std::error_code path_error, folder_error;
  const fs::path p = fs::weakly_canonical(fs::absolute(path), path_error);
  const fs::path f = fs::weakly_canonical(fs::absolute(folder), folder_error);
  if (path_error || folder_error || f.empty()) return false;
  auto it = p.begin();
  for (auto part = f.begin(); part != f.end(); ++part, ++it)
    if (it == p.end() || *it != *part) return false;
  return true;
}

}  // namespace

void check_out_folder(const std::string& out, const std::vector<std::string>& inputs,
                      const std::vector<std::string>& sources, bool resume, bool overwrite) {
  if (resume && overwrite)
    throw Error("give --resume (continue the run in --out) or --overwrite (replace it), not both");
  for (const std::string& input : inputs)
    if (!input.empty() && is_at_or_below(out, input))
      throw Error("--out " + out + " lies inside the data " + input +
                  " (its checkpoints would become data); choose a folder outside it");
  for (const std::string& source : sources)
    if (!source.empty() && is_at_or_below(source, out))
      throw Error("--out " + out + " holds " + source +
                  ", which this run reads its weights from; choose another --out");
  std::error_code error;
  if (!fs::exists(out, error)) return;
  if (!fs::is_directory(out, error)) throw Error("--out " + out + " exists and is not a folder");
  if (fs::is_empty(out, error)) return;
  const bool run = fs::is_regular_file(fs::path(out) / "graft.json", error) ||
                   fs::is_directory(fs::path(out) / "checkpoints", error);
  if (!run)
    throw Error("--out " + out +
                " is a folder that is not empty and holds no graft run; graft writes a new folder "
                "(or continues its own run with --resume): choose another --out");
  if (resume) return;
  if (!overwrite)
    throw Error("--out " + out +
                " already holds a graft run; add --resume to continue it, --overwrite to replace it, "
                "or choose another --out");
  // Replaced: its checkpoints go first, so that nothing of the old run is restored as the new run's best.
  fs::remove_all(fs::path(out) / "checkpoints", error);
  if (error) throw Error(out + "/checkpoints: cannot remove the old run's checkpoints: " + error.message());
}

void write_run_files(const std::string& dir, const NamedTensors& weights,
                     std::map<std::string, std::string> metadata, json doc, const std::string& weights_name) {
  const std::string id = new_save_id();
  metadata["graft_save_id"] = id;
  doc["weights"] = weights_name;
  doc["weights_save_id"] = id;
  // Weights first: a graft.json only ever names a complete weights file.
  write_safetensors((fs::path(dir) / weights_name).string(), weights, metadata);
  write_file_atomic((fs::path(dir) / "graft.json").string(), doc.dump(2) + "\n");
  // A replaced run of the other kind (full weights, or a LoRA adapter) leaves no file that graft.json
  // no longer names.
  const bool adapter = weights_name == "adapter_model.safetensors";
  std::error_code ignored;
  if (adapter) fs::remove(fs::path(dir) / "model.safetensors", ignored);
  if (!adapter) fs::remove(fs::path(dir) / "adapter_model.safetensors", ignored);
  if (!adapter) fs::remove(fs::path(dir) / "adapter_config.json", ignored);
}

void check_run_weights(const std::string& json_file, const std::string& weights_save_id,
                       const std::string& weights_file) {
  if (weights_save_id.empty()) return;
  const SafeTensorsReader reader(weights_file);
  const auto found = reader.metadata().find("graft_save_id");
  const std::string actual = found == reader.metadata().end() ? "" : found->second;
  if (actual != weights_save_id) {
    throw FormatError(
        json_file,
        "names weights of save " + weights_save_id + " but " + weights_file + " is from " +
            (actual.empty() ? std::string("no graft save") : "save " + actual),
        "the two files are not of one save: weights copied in from elsewhere (another run's, or a "
        "file graft did not write), or a save interrupted between its two files; put this run's "
        "model.safetensors back, train again, or take the weights from checkpoints/ (graft train "
        "--resume)");
  }
}

bool is_run_dir(const std::string& path) {
  return fs::is_regular_file(fs::path(path) / "graft.json");
}

LoadedRun load_run(const std::string& dir) {
  const std::string file = (fs::path(dir) / "graft.json").string();
  if (!fs::is_regular_file(file))
    throw Error(dir + ": not a graft run directory (no graft.json); train one with `graft train`");
  LoadedRun run;
  run.dir = dir;
  const RunDocument doc = read_run_document(file);
  run.spec = read_run_spec(doc);
  const int64_t classes = static_cast<int64_t>(run.spec.classes.size());
  run.model = create_model(run.spec.model, classes);
  const bool lora = is_lora_run(doc);
  if (lora) {  // the base first, as training loaded it (without its classifier); the adapter after the head
    WeightsOptions skip_head;
    skip_head.skip_classifier = true;
    load_weights(*run.model, checked_lora_base(doc, [&] { return pretrained_weights_file(*run.model); }),
                 skip_head);
  }
  if (!run.spec.head.empty())
    run.model->set_head(HeadSpec::parse(run.spec.head),
                        {run.spec.preprocessing.size, run.spec.preprocessing.size});
  LoadOptions options;
  options.source_name = (fs::path(dir) / (lora ? "adapter_model.safetensors" : "model.safetensors")).string();
  check_run_weights(file, run.spec.weights_save_id, options.source_name);
  if (lora)
    load_lora_adapter(*run.model, dir);
  else
    load_safetensors(*run.model, options.source_name, options);
  if (run.model->num_classes() != classes) {
    throw FormatError(file, "the model outputs " + std::to_string(run.model->num_classes()) +
                                " classes but " + std::to_string(classes) + " class names are listed");
  }
  run.model->eval();
  return run;
}

void export_merged_run(const std::string& run_dir, const std::string& out) {
  const std::string file = (fs::path(run_dir) / "graft.json").string();
  if (!fs::is_regular_file(file))
    throw Error(run_dir + ": not a graft run directory (no graft.json); train one with `graft train`");
  const RunDocument doc = read_run_document(file);
  if (!is_lora_run(doc))
    throw Error("--merge: " + run_dir + " holds no LoRA adapter (its model.safetensors is already whole)");
  std::error_code error;
  if (fs::exists(out, error) && !(fs::is_directory(out, error) && fs::is_empty(out, error)))
    throw Error(out + ": already exists; export writes a new folder (remove it or choose another --out)");
  std::shared_ptr<torch::nn::Module> model;
  if (doc.task == "image-classify") {
    model = load_run(run_dir).model;
  } else if (doc.task == "video-classify") {
    model = load_video_run(run_dir).module;
  } else {
    throw Error(run_dir + ": a " + doc.task + " run exports as a Hugging Face folder (--format hf)");
  }
  const std::vector<std::string> merged = merge_and_unload_lora(*model);
  json plain = doc.doc;
  plain.erase("lora");
  plain["freeze"] = "none";
  plain["merged_from"] = {{"run", fs::absolute(run_dir).lexically_normal().string()},
                          {"adapted_layers", merged}};
  fs::create_directories(out);
  write_run_files(out, state_dict(*model), {{"format", "pt"}, {"producer", "graft " GRAFT_VERSION}},
                  std::move(plain));
}

}  // namespace graft

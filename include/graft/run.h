// The run directory: what training leaves behind and all that `graft predict` needs.
//   model.safetensors  weights with reference names (torchvision/Hugging Face), head under its name
//   graft.json         architecture, head spec, freeze spec, class names, preprocessing, training
//                      configuration, versions
//   metrics.csv, training_curves.svg, confusion_matrix.svg, checkpoints/  (written by the Trainer)
#pragma once
#include <array>
#include <map>
#include <nlohmann/json_fwd.hpp>
#include <string>
#include <vector>

#include "graft/data.h"
#include "graft/model.h"
#include "graft/weights.h"

namespace graft {

struct RunSpec {
  std::string task = "image-classify";
  std::string model;   // ARCH[.TAG] as given to the registry
  std::string head;    // head spec; empty: the reference classifier (reset to classes.size())
  std::string freeze;  // the freeze spec in force at the end of training (informational)
  std::vector<std::string> classes;
  Preprocessing preprocessing;
  std::string data;             // where the training data came from (informational)
  std::string weights_save_id;  // ties graft.json to its model.safetensors; "" in older runs
};

// graft.json's "preprocessing" object for every task (video runs add "frames"), and back. The reader checks
// what it reads: size in 1..4096, crop_pct in (0, 1], finite mean, finite std > 0; interpolation absent in
// older runs means "bilinear". Errors are FormatErrors naming the file and the field.
nlohmann::json preprocessing_json(const Preprocessing& preprocessing);
Preprocessing read_preprocessing(const nlohmann::json& pre, const std::string& file);

// What `graft train --out DIR` may write into, checked before anything is read: a new or empty folder; a
// graft run only with resume (continue it) or overwrite (its checkpoints are removed, its files replaced).
// Refused with a message naming the option: a file, a non-empty folder that is not a graft run (a user's
// weights folder, say), a folder equal to or inside one of `inputs` (--data, --val-data), and a folder that
// is, or holds, one of `sources` (--weights, --init-from, --adapter). Empty entries are ignored.
void check_out_folder(const std::string& out, const std::vector<std::string>& inputs,
                      const std::vector<std::string>& sources, bool resume, bool overwrite);

// Writes model.safetensors and graft.json into dir (created if needed), each atomically.
// `training` is the resolved training configuration, stored as is.
void save_run(const std::string& dir, BackboneImpl& model, const RunSpec& spec,
              const nlohmann::json& training);

// The two files of a run directory: the weights (model.safetensors), then graft.json, each written
// atomically and tied by a random save id kept in both (safetensors metadata graft_save_id, graft.json
// weights_save_id). A crash between the two writes then leaves a pair that check_run_weights refuses,
// not new weights silently read with the old graft.json's classes and preprocessing.
// A LoRA run's weights are its adapter: weights_name "adapter_model.safetensors" (PEFT's file).
void write_run_files(const std::string& dir, const NamedTensors& weights,
                     std::map<std::string, std::string> metadata, nlohmann::json doc,
                     const std::string& weights_name = "model.safetensors");
// Throws FormatError naming both files when graft.json's weights_save_id (absent in runs before it
// existed: nothing to check) is not the save id of the weights file.
void check_run_weights(const std::string& json_file, const std::string& weights_save_id,
                       const std::string& weights_file);

bool is_run_dir(const std::string& path);  // holds a graft.json

// `graft export RUN --merge --out OUT` for an image or video LoRA run: its model with the adapter merged
// in (float32) and unloaded, written as a plain run directory (model.safetensors + graft.json without
// "lora") that predict and eval read as any other. OUT must be new or empty.
void export_merged_run(const std::string& run_dir, const std::string& out);

struct LoadedRun {
  Backbone model;  // in eval mode, weights loaded strictly
  RunSpec spec;
  std::string dir;
};
// Throws graft::FormatError naming the file and the field for a malformed graft.json.
LoadedRun load_run(const std::string& dir);
// Only the graft.json part of load_run (src/transfer/run_spec.cpp): validated, no model built.
RunSpec read_run_spec(const std::string& graft_json);

}  // namespace graft

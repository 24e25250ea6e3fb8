// Text tasks end to end, the two classic tutorial recipes:
//   text-classify  BertForSequenceClassification fine-tuned on labelled sentences (AdamW, linear warm-up
//                  and decay), metrics as for images;
//   causal-lm      GPT2LMHeadModel fine-tuned on text packed into blocks (or one example per line, padding
//                  masked out of the loss), perplexity on validation text; then generation and chat.
// The run directory is a Hugging Face model folder (config.json, model.safetensors, tokenizer files) plus
// graft.json and the Trainer's metrics.csv, pictures and checkpoints, so `--weights RUN_DIR` and Python's
// from_pretrained(RUN_DIR) both load it.
#pragma once
#include <torch/nn/module.h>
#include <torch/types.h>

#include <iosfwd>
#include <memory>
#include <nlohmann/json_fwd.hpp>
#include <optional>
#include <string>
#include <vector>

#include "graft/gpt2.h"
#include "graft/task.h"
#include "graft/text_data.h"
#include "graft/tokenizer.h"
#include "graft/trainer.h"

namespace graft {

constexpr int64_t kDefaultTextLength = 128;  // Hugging Face run_glue's max_seq_length

struct TextTrainOptions {
  std::string task = "text-classify";  // text-classify | causal-lm
  std::string model;         // optional check: bert, gpt2, or a class name (BertForSequenceClassification)
  std::string weights;       // Hugging Face folder or model.safetensors (config.json beside it), or a run dir
  std::string init_from;     // an earlier text run: its weights (a run directory is a Hugging Face folder)
  std::string model_config;  // config.json of a fresh model (training from scratch) when there are no weights
  std::string tokenizer;     // tokenizer file or folder; empty: the weights' (or model_config's) folder
  std::string data;          // training data (comma-separated files)
  std::string val_data;      // validation data; empty: val_split of data
  std::string out;           // run directory
  TextColumns columns;       // text-classify columns and format; causal-lm jsonl reads columns.text
  double val_split = 0.1;
  bool validate = true;
  // text-classify: tokens per example (longer ones truncated); causal-lm: tokens per block. 0: the model's
  // positions (max_position_embeddings, n_positions), at most kDefaultTextLength.
  int64_t max_length = 0;
  int64_t block_size = 0;
  bool line_by_line = false;  // causal-lm: one example per line (+ eos), padded, instead of packed blocks
  std::string freeze;         // freeze spec over the model's modules, e.g. "until:bert.encoder.layer.10"
  std::string lora;           // LoRA spec (graft/lora.h LoraConfig::parse); empty: none
  std::string adapter;        // a LoRA adapter folder to train further; empty: none
  double warmup_ratio = 0.1;  // warm-up steps as a fraction of all steps (ignored when warmup_steps > 0)
  int64_t batch_size = 16;
  TrainConfig train;  // epochs 3, AdamW lr 5e-5 weight decay 0.01, linear schedule: the BERT recipe

  TextTrainOptions();
};

struct TextTrainResult {
  TrainHistory history;
  std::optional<Metrics> val_metrics;            // the saved model on the validation data
  int64_t train_examples = 0, val_examples = 0;  // examples, or blocks for packed causal-lm
};

// Runs the recipe and writes the run directory. Prints the resolved configuration first.
TextTrainResult train_text_model(const TextTrainOptions& options, std::ostream& log);

// A text run directory (or any Hugging Face folder with tokenizer files) ready for use.
struct TextRun {
  std::string dir;
  std::string task;                           // text-classify | causal-lm
  std::string model_type;                     // bert | gpt2
  std::string architecture;                   // BertForSequenceClassification | GPT2LMHeadModel
  std::shared_ptr<torch::nn::Module> module;  // in eval mode
  std::shared_ptr<Tokenizer> tokenizer;
  std::vector<std::string> classes;  // text-classify
  int64_t max_length = 128;
  int64_t block_size = 128;
  bool line_by_line = false;
  TextColumns columns;
  std::optional<ChatTemplate> chat_template;  // tokenizer_config.json's, when the tokenizer has one
  std::string chat_template_error;  // why the tokenizer's template could not be read ("" when it could)
};
bool is_text_run(const std::string& dir);  // graft.json says text-classify or causal-lm
// Loads a run directory, or a Hugging Face folder holding config.json, model.safetensors and a tokenizer;
// `tokenizer` (a file or folder), when given, instead of the folder's own.
TextRun load_text_run(const std::string& dir, const std::string& tokenizer = "");

// Metrics of the run on labelled data (text-classify) or text (causal-lm: token metrics, perplexity).
Metrics evaluate_text(TextRun& run, const std::string& data, int64_t batch_size, torch::Device device,
                      std::ostream& log);

// What the classifier reads for each example (BERT's pooled output) or block (GPT-2's last hidden states
// averaged over its tokens; label -1), with where it comes from.
FeatureSet text_features(TextRun& run, const std::string& data, int64_t batch_size, torch::Device device,
                         std::ostream& log);

std::vector<Prediction> predict_texts(TextRun& run, const std::vector<std::string>& texts, int64_t top_k,
                                      torch::Device device);

// The prompt continued by the run's language model; returns the new text only. on_text, when given,
// receives the text as it is produced (whole characters only) and may stop generation by returning false.
std::string generate_text(TextRun& run, const std::string& prompt, GenerateOptions options,
                          torch::Device device,
                          const std::function<bool(const std::string& piece)>& on_text = {});

// Copies the Hugging Face files of a text run (config.json, model.safetensors, tokenizer files) into
// out_dir, written whole or not at all. A LoRA run is exported only with merge: its base with the adapter
// merged in (float32), a plain Hugging Face folder.
void export_hf(const std::string& run_dir, const std::string& out_dir, bool merge = false);

}  // namespace graft

// Hugging Face transformers models in graft: the config.json readers, the output records the models
// return, and loading a Hugging Face model folder (config.json + model.safetensors) by its own names.
// Matches transformers v4.31: configuration_bert.py (read for RoBERTa and XLM-R too), configuration_gpt2.py,
// configuration_vit.py and modeling_utils.py (from_pretrained's prefix handling, tied embeddings, sharded
// checkpoints). The models themselves are in graft/bert.h, graft/roberta.h, graft/distilbert.h,
// graft/gpt2.h, graft/llama.h and graft/vit.h.
//
// A key missing from config.json takes the default of the Hugging Face config class, as
// `BertConfig.from_pretrained` does (save_pretrained omits keys equal to the defaults); a key of the wrong
// type or a value graft does not implement is an error naming the file, the key and the value.
#pragma once
#include <torch/nn/module.h>
#include <torch/types.h>

#include <functional>
#include <memory>
#include <nlohmann/json_fwd.hpp>
#include <optional>
#include <string>
#include <vector>

#include "graft/errors.h"
#include "graft/weights.h"

namespace graft {

// The keys every Hugging Face config shares (PretrainedConfig) that graft uses.
struct HfCommonConfig {
  std::string model_type;                  // "bert", "gpt2", "vit", "llama", "qwen2"
  std::vector<std::string> architectures;  // e.g. {"BertForSequenceClassification"}
  std::vector<std::string> id2label;       // label names by index; its size is num_labels
  std::string problem_type;  // "", "regression", "single_label_classification", "multi_label_classification"
  bool tie_word_embeddings = true;
  double initializer_range = 0.02;  // std of the normal init of fresh weights
  bool output_hidden_states = false;

  int64_t num_labels() const { return static_cast<int64_t>(id2label.size()); }
  // Sets num_labels, keeping existing names and naming new labels LABEL_i as Hugging Face does.
  void set_num_labels(int64_t n);
  // The keys above as config.json holds them (model_type, architectures, id2label and label2id,
  // problem_type, ...).
  nlohmann::json common_json() const;
};

// BertConfig (configuration_bert.py). Defaults are bert-base-uncased's. RoBERTa's and XLM-R's configs
// (model_type "roberta", "xlm-roberta"; configuration_roberta.py) are BERT's with pad_token_id 1 and their
// own vocabulary size, and read into this struct.
struct BertConfig : HfCommonConfig {
  int64_t vocab_size = 30522;
  int64_t hidden_size = 768;
  int64_t num_hidden_layers = 12;
  int64_t num_attention_heads = 12;
  int64_t intermediate_size = 3072;  // width of the feed-forward layer
  std::string hidden_act = "gelu";   // "gelu" (exact, erf), "gelu_new" (tanh approximation), "relu", ...
  double hidden_dropout_prob = 0.1;
  double attention_probs_dropout_prob = 0.1;
  int64_t max_position_embeddings = 512;
  int64_t type_vocab_size = 2;  // segments (token_type_ids)
  double layer_norm_eps = 1e-12;
  std::optional<int64_t> pad_token_id = 0;   // its word embedding gets no gradient (padding_idx); null: none
  std::optional<double> classifier_dropout;  // null: hidden_dropout_prob

  BertConfig() { set_num_labels(2); }
  // RoBERTa's position numbering: real tokens from pad_token_id + 1 (roberta, xlm-roberta).
  bool positions_after_padding() const;
  static BertConfig from_json(const nlohmann::json& json, const std::string& source = "config.json");
  // config.json of these values, read back by from_json (and by Hugging Face's BertConfig) to the same.
  nlohmann::json to_json() const;
  static BertConfig from_file(const std::string& path);
};

// GPT2Config (configuration_gpt2.py). Defaults are gpt2 (124M)'s.
struct GPT2Config : HfCommonConfig {
  int64_t vocab_size = 50257;
  int64_t n_positions = 1024;  // longest sequence (past + current tokens)
  int64_t n_embd = 768;
  int64_t n_layer = 12;
  int64_t n_head = 12;
  std::optional<int64_t> n_inner;  // feed-forward width; null: 4 * n_embd
  std::string activation_function = "gelu_new";
  double resid_pdrop = 0.1;
  double embd_pdrop = 0.1;
  double attn_pdrop = 0.1;
  double layer_norm_epsilon = 1e-5;
  bool scale_attn_weights = true;                // divide scores by sqrt(head_dim)
  bool scale_attn_by_inverse_layer_idx = false;  // and by (layer index + 1)
  bool reorder_and_upcast_attn = false;          // float32 scores under autocast; same values in float32
  int64_t bos_token_id = 50256;
  int64_t eos_token_id = 50256;

  GPT2Config() { set_num_labels(2); }
  int64_t inner_size() const { return n_inner.value_or(4 * n_embd); }
  static GPT2Config from_json(const nlohmann::json& json, const std::string& source = "config.json");
  nlohmann::json to_json() const;  // as BertConfig::to_json
  static GPT2Config from_file(const std::string& path);
};

// ViTConfig (configuration_vit.py). Defaults are google/vit-base-patch16-224's.
struct ViTConfig : HfCommonConfig {
  int64_t hidden_size = 768;
  int64_t num_hidden_layers = 12;
  int64_t num_attention_heads = 12;
  int64_t intermediate_size = 3072;
  std::string hidden_act = "gelu";
  double hidden_dropout_prob = 0.0;
  double attention_probs_dropout_prob = 0.0;
  double layer_norm_eps = 1e-12;
  int64_t image_size = 224;  // input height = width the position embeddings were made for
  int64_t patch_size = 16;
  int64_t num_channels = 3;
  bool qkv_bias = true;

  ViTConfig() { set_num_labels(2); }
  int64_t num_patches() const { return (image_size / patch_size) * (image_size / patch_size); }
  static ViTConfig from_json(const nlohmann::json& json, const std::string& source = "config.json");
  static ViTConfig from_file(const std::string& path);
};

// The activation named by hidden_act / activation_function (transformers activations.py ACT2FN): gelu,
// gelu_new, gelu_pytorch_tanh, gelu_fast, quick_gelu, relu, relu6, silu, swish, tanh, sigmoid, mish,
// linear. `where` names the file and key for the error an unknown name throws.
using Activation = std::function<torch::Tensor(const torch::Tensor&)>;
Activation hf_activation(const std::string& name, const std::string& where);

// What the models return (Hugging Face's ModelOutput records, only the fields graft computes).
struct EncoderOutput {
  torch::Tensor last_hidden_state;           // (B, T, hidden)
  torch::Tensor pooler_output;               // (B, hidden); undefined when the model has no pooler
  std::vector<torch::Tensor> hidden_states;  // embeddings, then each layer's output; when requested
};

struct ClassifierOutput {
  torch::Tensor logits;  // (B, num_labels)
  torch::Tensor loss;    // scalar; undefined without labels
  EncoderOutput base;    // the encoder's outputs the head ran on
};

// Loss of a sequence/image classification head for labels, as Hugging Face picks it from problem_type
// (or, when empty: num_labels == 1 regression, integer labels single-label, else multi-label):
// MSE, cross-entropy, or binary cross-entropy with logits.
torch::Tensor hf_classification_loss(const torch::Tensor& logits, const torch::Tensor& labels,
                                     const std::string& problem_type);

// A Hugging Face model loaded from disk.
struct HfModel {
  std::string model_type;    // "bert"
  std::string architecture;  // the class built: "BertForSequenceClassification"
  std::string config_path;   // the config.json it was built from
  std::string weights_path;  // the model.safetensors loaded, or the index of its shards
  std::shared_ptr<torch::nn::Module> module;
  LoadReport report;

  // The module as its concrete class, e.g. as<BertForSequenceClassificationImpl>(); throws graft::Error
  // naming both classes when it is another.
  template <class Impl>
  std::shared_ptr<Impl> as() const {
    auto typed = std::dynamic_pointer_cast<Impl>(module);
    if (!typed) throw Error(weights_path + ": the model is a " + architecture + ", not the class asked for");
    return typed;
  }
};

struct HfLoadOptions {
  bool strict = true;  // throw graft::Error with the LoadReport unless every tensor fits
  // The class to build; empty: config.json's architectures[0] (or the base model when none is named).
  // BertModel, BertForSequenceClassification, GPT2Model, GPT2LMHeadModel, ViTModel,
  // ViTForImageClassification, LlamaModel, LlamaForCausalLM, LlamaForSequenceClassification and Qwen2's
  // three of the same names (graft/llama.h). Building another class than the checkpoint's is Hugging Face's
  // transfer case: the base model's weights load, the checkpoint's own head is skipped (report.skipped) and a
  // new head is initialised.
  std::string architecture;
  // A new classification head with this many labels, initialised fresh (not loaded); -1: config.json's.
  int64_t num_labels = -1;
};

// Loads a Hugging Face model folder holding config.json and model.safetensors (or the shards of
// model.safetensors.index.json), or a .safetensors file or index with config.json beside it. Tensor names are
// Hugging Face's: a checkpoint of the base model loads into a model with a head (prefix "bert." added) and
// the other way round (prefix dropped), LayerNorm gamma/beta of old checkpoints are read as weight/bias, and
// a tied lm_head.weight may be present or not.
HfModel load_hf_model(const std::string& path, const HfLoadOptions& options = {});

// A model built from a config.json alone, with Hugging Face's initialisation (training from scratch);
// options.strict and the weights are not used.
HfModel build_hf_model(const std::string& config_path, const HfLoadOptions& options = {});

// Loads a Hugging Face safetensors file (or a sharded checkpoint's index) into an already built model with
// the same name handling.
// base_prefix: Hugging Face's base_model_prefix of the model class ("bert", "transformer", "vit");
// skip_prefixes: module names left as initialised (a new head), reported as skipped.
LoadReport load_hf_weights(torch::nn::Module& model, const std::string& file, const std::string& base_prefix,
                           const LoadOptions& options = {});

}  // namespace graft

// Vision Transformer (Dosovitskiy et al. 2020, arXiv:2010.11929), a port of Hugging Face transformers
// v4.31 src/transformers/models/vit/modeling_vit.py: ViTPatchEmbeddings, ViTEmbeddings (no mask token, no
// position interpolation), ViTSelfAttention, ViTSelfOutput, ViTIntermediate, ViTOutput, ViTLayer (pre-norm),
// ViTPooler, ViTModel and ViTForImageClassification (classifier on the [CLS] token after the final
// layernorm). Fresh weights follow ViTPreTrainedModel._init_weights (truncated normal).
// ViTConfig's config.json reader takes configuration_vit.py's defaults (shared keys: hf_config.h).
#include "graft/vit.h"

#include <cmath>
#include <string>

#include "graft/head.h"
#include "graft/json_file.h"
#include "layers/linear.h"
#include "models/common.h"
#include "models/hf_config.h"

namespace graft {
namespace {

namespace nn = torch::nn;

// _init_weights: Linear and Conv2d weights ~ trunc_normal(0, initializer_range) cut at +-2 (absolute, as
// nn.init.trunc_normal_'s defaults: 100 std away at 0.02, so a clamp stands in for the resampling), biases
// 0, LayerNorm 1 and 0.
void init_vit_weights(nn::Module& root, double std) {
  torch::NoGradGuard no_grad;
  // modules(include_self) needs the root in a shared_ptr, which it is not yet inside a constructor.
  std::vector<nn::Module*> all{&root};
  for (auto& child : root.modules(/*include_self=*/false)) all.push_back(child.get());
  for (nn::Module* module : all) {
    if (auto* linear = module->as<nn::Linear>()) {
      nn::init::normal_(linear->weight, 0, std).clamp_(-2, 2);
      if (linear->bias.defined()) linear->bias.zero_();
    } else if (auto* conv = module->as<nn::Conv2d>()) {
      nn::init::normal_(conv->weight, 0, std).clamp_(-2, 2);
      if (conv->bias.defined()) conv->bias.zero_();
    } else if (auto* norm = module->as<nn::LayerNorm>()) {
      norm->weight.fill_(1);
      norm->bias.zero_();
    }
  }
}

void check_config(const ViTConfig& config) {
  if (config.hidden_size <= 0 || config.num_attention_heads <= 0 ||
      config.hidden_size % config.num_attention_heads != 0) {
    throw Error("ViTConfig: hidden_size (" + std::to_string(config.hidden_size) +
                ") must be a positive multiple of num_attention_heads (" +
                std::to_string(config.num_attention_heads) + ")");
  }
  if (config.patch_size <= 0 || config.image_size < config.patch_size) {
    throw Error("ViTConfig: image_size (" + std::to_string(config.image_size) +
                ") must be at least patch_size (" + std::to_string(config.patch_size) + ") > 0");
  }
}

FloatLayerNorm make_layer_norm(const ViTConfig& config) {
  return FloatLayerNorm(nn::LayerNormOptions({config.hidden_size}).eps(config.layer_norm_eps));
}

}  // namespace

ViTConfig ViTConfig::from_json(const json& root, const std::string& source) {
  const ConfigReader reader(root, source);
  ViTConfig config;
  read_common(reader, config, "vit");
  read_encoder_keys(reader, config);
  reader.get_positive("image_size", config.image_size);
  reader.get_positive("patch_size", config.patch_size);
  reader.get_positive("num_channels", config.num_channels);
  reader.get("qkv_bias", config.qkv_bias);
  if (config.image_size % config.patch_size != 0) {
    throw FormatError(source, "key 'image_size' (" + std::to_string(config.image_size) +
                                  ") must be a multiple of 'patch_size' (" +
                                  std::to_string(config.patch_size) + ")");
  }
  return config;
}

ViTConfig ViTConfig::from_file(const std::string& path) {
  return from_json(read_json_file(path), path);
}

ViTPatchEmbeddingsImpl::ViTPatchEmbeddingsImpl(const ViTConfig& config)
    : image_size(config.image_size), num_channels(config.num_channels) {
  projection = register_module(
      "projection", nn::Conv2d(nn::Conv2dOptions(config.num_channels, config.hidden_size, config.patch_size)
                                   .stride(config.patch_size)));
}

torch::Tensor ViTPatchEmbeddingsImpl::forward(const torch::Tensor& pixel_values) {
  if (pixel_values.dim() != 4 || pixel_values.size(1) != num_channels || pixel_values.size(2) != image_size ||
      pixel_values.size(3) != image_size) {
    throw ShapeMismatch("ViTModel (config.json image_size " + std::to_string(image_size) + ", num_channels " +
                            std::to_string(num_channels) + "; resize the images)",
                        "pixel_values", {-1, num_channels, image_size, image_size},
                        pixel_values.sizes().vec());
  }
  return projection(pixel_values).flatten(2).transpose(1, 2);  // (B, hidden, h, w) -> (B, h*w, hidden)
}

ViTEmbeddingsImpl::ViTEmbeddingsImpl(const ViTConfig& config) {
  check_config(config);
  torch::NoGradGuard no_grad;
  cls_token = register_parameter("cls_token", torch::empty({1, 1, config.hidden_size}));
  patch_embeddings = register_module("patch_embeddings", ViTPatchEmbeddings(config));
  position_embeddings = register_parameter("position_embeddings",
                                           torch::empty({1, config.num_patches() + 1, config.hidden_size}));
  dropout = register_module("dropout", Dropout(config.hidden_dropout_prob));
  nn::init::normal_(cls_token, 0, config.initializer_range).clamp_(-2, 2);
  nn::init::normal_(position_embeddings, 0, config.initializer_range).clamp_(-2, 2);
}

torch::Tensor ViTEmbeddingsImpl::forward(const torch::Tensor& pixel_values) {
  torch::Tensor patches = patch_embeddings(pixel_values);  // (B, N, C)
  torch::Tensor cls = cls_token.expand({patches.size(0), -1, -1});
  torch::Tensor embeddings = torch::cat({cls, patches}, 1) + position_embeddings;  // (B, 1 + N, C)
  return dropout(embeddings);
}

ViTSelfAttentionImpl::ViTSelfAttentionImpl(const ViTConfig& config) {
  num_attention_heads = config.num_attention_heads;
  attention_head_size = config.hidden_size / config.num_attention_heads;
  auto linear = [&] {
    return nn::Linear(nn::LinearOptions(config.hidden_size, config.hidden_size).bias(config.qkv_bias));
  };
  query = register_module("query", linear());
  key = register_module("key", linear());
  value = register_module("value", linear());
  dropout = register_module("dropout", Dropout(config.attention_probs_dropout_prob));
}

torch::Tensor ViTSelfAttentionImpl::forward(const torch::Tensor& hidden_states) {
  const int64_t batch = hidden_states.size(0), length = hidden_states.size(1);
  // (B, T, C) -> (B, heads, T, head_size)
  auto split_heads = [&](const torch::Tensor& x) {
    return x.view({batch, length, num_attention_heads, attention_head_size}).permute({0, 2, 1, 3});
  };
  torch::Tensor q = split_heads(linear(query, hidden_states));
  torch::Tensor k = split_heads(linear(key, hidden_states));
  torch::Tensor v = split_heads(linear(value, hidden_states));
  torch::Tensor scores =
      torch::matmul(q, k.transpose(-1, -2)) / std::sqrt(static_cast<double>(attention_head_size));
  torch::Tensor probs = dropout(torch::softmax(scores, -1, torch::kFloat));            // (B, heads, T, T)
  torch::Tensor context = torch::matmul(probs, v).permute({0, 2, 1, 3}).contiguous();  // (B, T, heads, d)
  return context.view({batch, length, num_attention_heads * attention_head_size});
}

ViTSelfOutputImpl::ViTSelfOutputImpl(const ViTConfig& config) {
  dense = register_module("dense", nn::Linear(config.hidden_size, config.hidden_size));
  dropout = register_module("dropout", Dropout(config.hidden_dropout_prob));
}

torch::Tensor ViTSelfOutputImpl::forward(const torch::Tensor& hidden_states) {
  return dropout(linear(dense, hidden_states));
}

ViTAttentionImpl::ViTAttentionImpl(const ViTConfig& config) {
  attention = register_module("attention", ViTSelfAttention(config));
  output = register_module("output", ViTSelfOutput(config));
}

torch::Tensor ViTAttentionImpl::forward(const torch::Tensor& hidden_states) {
  return output(attention(hidden_states));
}

ViTIntermediateImpl::ViTIntermediateImpl(const ViTConfig& config) {
  dense = register_module("dense", nn::Linear(config.hidden_size, config.intermediate_size));
  act = hf_activation(config.hidden_act, "ViTConfig.hidden_act");
}

torch::Tensor ViTIntermediateImpl::forward(const torch::Tensor& hidden_states) {
  return act(linear(dense, hidden_states));
}

ViTOutputImpl::ViTOutputImpl(const ViTConfig& config) {
  dense = register_module("dense", nn::Linear(config.intermediate_size, config.hidden_size));
  dropout = register_module("dropout", Dropout(config.hidden_dropout_prob));
}

torch::Tensor ViTOutputImpl::forward(const torch::Tensor& hidden_states, const torch::Tensor& input_tensor) {
  return dropout(linear(dense, hidden_states)) + input_tensor;
}

ViTLayerImpl::ViTLayerImpl(const ViTConfig& config) {
  // Registration order is Hugging Face's (attention, intermediate, output, then the two norms), so the
  // state dict and the freezing order agree with Python's.
  attention = register_module("attention", ViTAttention(config));
  intermediate = register_module("intermediate", ViTIntermediate(config));
  output = register_module("output", ViTOutput(config));
  layernorm_before = register_module("layernorm_before", make_layer_norm(config));
  layernorm_after = register_module("layernorm_after", make_layer_norm(config));
}

torch::Tensor ViTLayerImpl::forward(const torch::Tensor& hidden_states) {
  torch::Tensor attended = attention(layernorm_before(hidden_states)) + hidden_states;
  return output(intermediate(layernorm_after(attended)), attended);
}

ViTEncoderImpl::ViTEncoderImpl(const ViTConfig& config) {
  layer = register_module("layer", nn::ModuleList());
  for (int64_t i = 0; i < config.num_hidden_layers; ++i) layer->push_back(ViTLayer(config));
}

ViTPoolerImpl::ViTPoolerImpl(const ViTConfig& config) {
  dense = register_module("dense", nn::Linear(config.hidden_size, config.hidden_size));
}

torch::Tensor ViTPoolerImpl::forward(const torch::Tensor& hidden_states) {
  return torch::tanh(linear(dense, hidden_states.select(1, 0)));
}

ViTModelImpl::ViTModelImpl(const ViTConfig& config, bool add_pooling_layer) : config_(config) {
  check_config(config);
  embeddings = register_module("embeddings", ViTEmbeddings(config));
  encoder = register_module("encoder", ViTEncoder(config));
  layernorm = register_module("layernorm", make_layer_norm(config));
  if (add_pooling_layer) pooler = register_module("pooler", ViTPooler(config));
  init_vit_weights(*this, config.initializer_range);
}

EncoderOutput ViTModelImpl::forward(const torch::Tensor& pixel_values, bool output_hidden_states) {
  EncoderOutput out;
  const bool keep = output_hidden_states || config_.output_hidden_states;
  torch::Tensor hidden = embeddings(pixel_values);  // (B, 1 + patches, C)
  for (const auto& module : *encoder->layer) {
    if (keep) out.hidden_states.push_back(hidden);
    hidden = module->as<ViTLayerImpl>()->forward(hidden);
  }
  if (keep) out.hidden_states.push_back(hidden);
  out.last_hidden_state = layernorm(hidden);
  if (pooler) out.pooler_output = pooler(out.last_hidden_state);
  return out;
}

ViTForImageClassificationImpl::ViTForImageClassificationImpl(const ViTConfig& config, std::string arch)
    : BackboneImpl(std::move(arch)), config_(config) {
  vit = register_module("vit", ViTModel(config, /*add_pooling_layer=*/false));
  if (config.num_labels() > 0) {
    classifier = register_module("classifier", nn::Linear(config.hidden_size, config.num_labels()));
    init_vit_weights(*classifier, config.initializer_range);
  } else {
    register_module("classifier", nn::Identity());
  }
  PretrainedCfg cfg;
  cfg.tag = "hf";
  cfg.input_size = {config.num_channels, config.image_size, config.image_size};
  // ViTImageProcessor's defaults: resize to image_size (bilinear), rescale to [0, 1], normalise with 0.5.
  cfg.mean = {0.5, 0.5, 0.5};
  cfg.std = {0.5, 0.5, 0.5};
  cfg.crop_pct = 1.0;
  cfg.num_classes = config.num_labels();
  cfg.labels = "config.json id2label";
  set_default_cfg(cfg);
}

std::vector<ForwardStep> ViTForImageClassificationImpl::feature_steps() {
  std::vector<ForwardStep> steps;
  steps.push_back({"vit.embeddings", "ViTEmbeddings",
                   [m = vit->embeddings.ptr()](const torch::Tensor& x) { return m->forward(x); }});
  for (size_t i = 0; i < vit->encoder->layer->size(); ++i) {
    steps.push_back(
        {"vit.encoder.layer." + std::to_string(i), "ViTLayer",
         [m = vit->encoder->layer->ptr<ViTLayerImpl>(i)](const torch::Tensor& x) { return m->forward(x); }});
  }
  steps.push_back({"vit.layernorm", "LayerNorm",
                   [m = vit->layernorm.ptr()](const torch::Tensor& x) { return m->forward(x); }});
  // (B, T, C) -> (B, C, 1, 1): the [CLS] embedding as a 1x1 feature map, what image heads pool.
  steps.push_back({"cls_token", "SelectToken",
                   [](const torch::Tensor& x) { return x.select(1, 0).unsqueeze(-1).unsqueeze(-1); }});
  return steps;
}

std::vector<ForwardStep> ViTForImageClassificationImpl::classifier_steps(bool pre_logits) {
  std::vector<ForwardStep> steps;
  steps.push_back({"flatten", "Flatten", [](const torch::Tensor& x) { return x.flatten(1); }});  // (B, C)
  if (pre_logits) return steps;
  if (classifier) {
    steps.push_back(
        {"classifier", "Linear", [m = classifier.ptr()](const torch::Tensor& x) { return m->forward(x); }});
  } else {
    steps.push_back({"classifier", "Identity", [](const torch::Tensor& x) { return x; }});
  }
  return steps;
}

ClassifierOutput ViTForImageClassificationImpl::forward(const torch::Tensor& pixel_values,
                                                        const torch::Tensor& labels,
                                                        bool output_hidden_states) {
  ClassifierOutput out;
  out.base = vit(pixel_values, output_hidden_states);
  torch::Tensor cls = out.base.last_hidden_state.select(1, 0).unsqueeze(-1).unsqueeze(-1);  // (B, C, 1, 1)
  out.logits = forward_head(cls);
  if (labels.defined()) out.loss = hf_classification_loss(out.logits, labels, config_.problem_type);
  return out;
}

void ViTForImageClassificationImpl::replace_classifier(int64_t num_classes) {
  classifier = replace_last_layer<nn::Linear>(*this, "classifier", num_classes, vit->layernorm->weight, [&] {
    nn::Linear layer(config_.hidden_size, num_classes);
    init_vit_weights(*layer, config_.initializer_range);
    return layer;
  });
  config_.id2label.clear();
  config_.set_num_labels(num_classes);
}

int64_t ViTForImageClassificationImpl::classifier_outputs() const {
  return classifier ? classifier->options.out_features() : config_.hidden_size;
}

}  // namespace graft

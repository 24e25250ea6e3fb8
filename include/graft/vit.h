// Vision Transformer (Dosovitskiy et al. 2020, arXiv:2010.11929) as Hugging Face transformers v4.31
// models/vit/modeling_vit.py builds it, with Hugging Face's module names (vit.embeddings.cls_token,
// vit.encoder.layer.N.layernorm_before, attention.attention.query, ...). ViTForImageClassification is
// also a graft image backbone, so heads, freezing, the summary and image training work on it.
#pragma once
#include <torch/nn/module.h>
#include <torch/nn/modules/container/modulelist.h>
#include <torch/nn/modules/conv.h>
#include <torch/nn/modules/linear.h>
#include <torch/nn/modules/normalization.h>

#include <vector>

#include "graft/dropout.h"
#include "graft/layer_norm.h"
#include "graft/model.h"
#include "graft/transformers.h"

namespace graft {

// Non-overlapping patch_size x patch_size patches, each projected to hidden_size by one convolution.
class ViTPatchEmbeddingsImpl : public torch::nn::Module {
 public:
  explicit ViTPatchEmbeddingsImpl(const ViTConfig& config);
  // (B, C, H, W) -> (B, H/p * W/p, hidden); throws unless C and H x W are the configured ones.
  torch::Tensor forward(const torch::Tensor& pixel_values);

  torch::nn::Conv2d projection{nullptr};
  int64_t image_size = 0, num_channels = 0;
};
TORCH_MODULE(ViTPatchEmbeddings);

// [CLS] token + patch embeddings + learned position embeddings, dropout.
class ViTEmbeddingsImpl : public torch::nn::Module {
 public:
  explicit ViTEmbeddingsImpl(const ViTConfig& config);
  torch::Tensor forward(const torch::Tensor& pixel_values);  // (B, C, H, W) -> (B, 1 + patches, hidden)

  torch::Tensor cls_token;  // (1, 1, hidden)
  ViTPatchEmbeddings patch_embeddings{nullptr};
  torch::Tensor position_embeddings;  // (1, 1 + patches, hidden)
  Dropout dropout{nullptr};
};
TORCH_MODULE(ViTEmbeddings);

class ViTSelfAttentionImpl : public torch::nn::Module {
 public:
  explicit ViTSelfAttentionImpl(const ViTConfig& config);
  torch::Tensor forward(const torch::Tensor& hidden_states);  // (B, T, hidden) -> (B, T, hidden)

  torch::nn::Linear query{nullptr}, key{nullptr}, value{nullptr};
  Dropout dropout{nullptr};
  int64_t num_attention_heads = 0, attention_head_size = 0;
};
TORCH_MODULE(ViTSelfAttention);

// dense + dropout; the residual is added by ViTLayer (pre-norm), unlike BERT.
class ViTSelfOutputImpl : public torch::nn::Module {
 public:
  explicit ViTSelfOutputImpl(const ViTConfig& config);
  torch::Tensor forward(const torch::Tensor& hidden_states);

  torch::nn::Linear dense{nullptr};
  Dropout dropout{nullptr};
};
TORCH_MODULE(ViTSelfOutput);

class ViTAttentionImpl : public torch::nn::Module {
 public:
  explicit ViTAttentionImpl(const ViTConfig& config);
  torch::Tensor forward(const torch::Tensor& hidden_states);

  ViTSelfAttention attention{nullptr};
  ViTSelfOutput output{nullptr};
};
TORCH_MODULE(ViTAttention);

class ViTIntermediateImpl : public torch::nn::Module {
 public:
  explicit ViTIntermediateImpl(const ViTConfig& config);
  torch::Tensor forward(const torch::Tensor& hidden_states);  // (B, T, hidden) -> (B, T, intermediate)

  torch::nn::Linear dense{nullptr};
  Activation act;
};
TORCH_MODULE(ViTIntermediate);

// dense back to hidden, dropout, + the residual.
class ViTOutputImpl : public torch::nn::Module {
 public:
  explicit ViTOutputImpl(const ViTConfig& config);
  torch::Tensor forward(const torch::Tensor& hidden_states, const torch::Tensor& input_tensor);

  torch::nn::Linear dense{nullptr};
  Dropout dropout{nullptr};
};
TORCH_MODULE(ViTOutput);

// Pre-norm block: x + attention(layernorm_before(x)), then that + mlp(layernorm_after(that)).
class ViTLayerImpl : public torch::nn::Module {
 public:
  explicit ViTLayerImpl(const ViTConfig& config);
  torch::Tensor forward(const torch::Tensor& hidden_states);

  ViTAttention attention{nullptr};
  ViTIntermediate intermediate{nullptr};
  ViTOutput output{nullptr};
  FloatLayerNorm layernorm_before{nullptr}, layernorm_after{nullptr};
};
TORCH_MODULE(ViTLayer);

class ViTEncoderImpl : public torch::nn::Module {
 public:
  explicit ViTEncoderImpl(const ViTConfig& config);

  torch::nn::ModuleList layer{nullptr};
};
TORCH_MODULE(ViTEncoder);

class ViTPoolerImpl : public torch::nn::Module {
 public:
  explicit ViTPoolerImpl(const ViTConfig& config);
  torch::Tensor forward(
      const torch::Tensor& hidden_states);  // (B, T, hidden) -> (B, hidden): tanh(dense(CLS))

  torch::nn::Linear dense{nullptr};
};
TORCH_MODULE(ViTPooler);

class ViTModelImpl : public torch::nn::Module {
 public:
  explicit ViTModelImpl(const ViTConfig& config, bool add_pooling_layer = true);
  // (B, C, H, W) normalised pixels. last_hidden_state is after the final layernorm; hidden_states (when
  // asked for) are the embeddings and each layer's output, before it, as in Hugging Face.
  EncoderOutput forward(const torch::Tensor& pixel_values, bool output_hidden_states = false);

  const ViTConfig& config() const { return config_; }

  ViTEmbeddings embeddings{nullptr};
  ViTEncoder encoder{nullptr};
  FloatLayerNorm layernorm{nullptr};
  ViTPooler pooler{nullptr};  // null without add_pooling_layer

 private:
  ViTConfig config_;
};
TORCH_MODULE(ViTModel);

// ViTModel without pooler, then a Linear classifier on the [CLS] token after the final layernorm.
//
// As a graft backbone: forward_features returns the [CLS] embedding after the final layernorm as a
// (B, hidden, 1, 1) map, so every head spec applies ("avg,dense:10" is a Linear on that embedding) and a
// feature cache stores the embedding; classifier_name() is "classifier". The steps are vit.embeddings,
// vit.encoder.layer.N, vit.layernorm, then the [CLS] pick: freezing with until:vit.encoder.layer.6 or
// last:N counts those.
class ViTForImageClassificationImpl : public BackboneImpl {
 public:
  explicit ViTForImageClassificationImpl(const ViTConfig& config, std::string arch = "vit");

  using BackboneImpl::forward;
  // Hugging Face's forward: logits through the head (the reference Linear or a custom head), the loss
  // when labels are given, and the encoder's outputs.
  ClassifierOutput forward(const torch::Tensor& pixel_values, const torch::Tensor& labels,
                           bool output_hidden_states = false);

  int64_t num_features() const override { return config_.hidden_size; }
  std::vector<ForwardStep> feature_steps() override;
  std::vector<ForwardStep> classifier_steps(bool pre_logits) override;
  std::string classifier_name() const override { return "classifier"; }

  const ViTConfig& config() const { return config_; }

  ViTModel vit{nullptr};
  torch::nn::Linear classifier{nullptr};  // null after reset_classifier(0): "classifier" is an Identity

 protected:
  void replace_classifier(int64_t num_classes) override;
  int64_t classifier_outputs() const override;

 private:
  ViTConfig config_;
};
TORCH_MODULE(ViTForImageClassification);

}  // namespace graft

// Model surgery: freeze specs (which pretrained layers stay fixed), over the head specs of graft/head.h.
// Small string languages shared by the library and the CLI.
#pragma once
#include <torch/nn/module.h>

#include <array>
#include <string>
#include <vector>

#include "graft/head.h"
#include "graft/model.h"
#include "graft/strings.h"  // glob_match

namespace graft {

// Freeze spec: comma-separated terms, the union of what each freezes.
//   all         every backbone parameter (the custom head, if any, stays trainable)
//   none        nothing
//   last:N      everything but the last N layers (Keras' layers[:-N]; see backbone_layers)
//   until:NAME  every layer before the first layer whose name is NAME or starts with NAME.
//   GLOB        parameters whose full name matches (shell glob: * ? [..]), e.g. "layer1.*"
struct FreezeReport {
  int64_t frozen_parameters = 0;     // tensors
  int64_t trainable_parameters = 0;  // tensors
  int64_t fixed_parameters = 0;      // tensors that never train (BackboneImpl::is_fixed_parameter)
  std::vector<std::string> frozen_layers;
};

// The backbone's layers as freezing counts them: modules that own parameters directly (Conv, BN,
// Linear...), in definition order, excluding the custom head. Keras counts parameter-free layers
// (ReLU, Add) too; counting only weighted layers makes last:N mean "N layers that learn".
std::vector<std::string> backbone_layers(BackboneImpl& model);

// Sets requires_grad on every parameter: frozen ones false, the rest true. Throws SpecError on a
// malformed spec or a NAME/GLOB that matches nothing. Re-applies the BatchNorm policy.
FreezeReport apply_freeze(BackboneImpl& model, const std::string& spec);

// The same on any module (a text model such as BertForSequenceClassification): layers are the modules
// that own parameters directly, in registration order; `head` names the module no spec freezes
// ("classifier"; "" for none). E.g. "until:bert.encoder.layer.10" freezes the embeddings and layers 0-9,
// "bert.embeddings.*" the embeddings alone.
FreezeReport apply_freeze(torch::nn::Module& model, const std::string& spec, const std::string& head);
std::vector<std::string> module_layers(const torch::nn::Module& model, const std::string& head);

}  // namespace graft

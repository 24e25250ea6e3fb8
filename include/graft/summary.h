// A Keras-like model summary: one row per forward step (layer name, type, output shape, parameters,
// trainable), then total / trainable / non-trainable parameter counts as model.summary() prints them.
#pragma once
#include <array>
#include <string>
#include <vector>

#include "graft/model.h"

namespace graft {

struct SummaryRow {
  std::string name;
  std::string type;
  std::vector<int64_t> output_shape;  // without the batch dimension
  int64_t params = 0;
  int64_t trainable_params = 0;
  int64_t fixed_params = 0;  // constants that never train (BackboneImpl::is_fixed_parameter), in params
};

struct ModelSummary {
  std::string title;
  std::vector<SummaryRow> rows;
  int64_t total_params = 0;  // over the whole model, not just the rows
  int64_t trainable_params = 0;
  std::vector<std::string> notes;  // e.g. the BatchNorm policy
  std::string to_string() const;
};

// Runs one (1, 3, H, W) zero image (a video backbone: a (1, 3, T, H, W) clip, example_input) through the
// model's steps in eval mode without autograd to record output shapes; input_hw {0, 0} uses the model's
// default_cfg input size.
ModelSummary summarize(BackboneImpl& model, std::array<int64_t, 2> input_hw = {0, 0});

std::string format_count(int64_t n);  // 23528522 -> "23,528,522"

}  // namespace graft

// Head specs and the head module they build: the new top of a pretrained backbone, written as
// "avg,dropout:0.2,dense:512:relu,dense:10" (Keras: GlobalAveragePooling2D, Dropout, Dense, Dense).
#include "graft/head.h"

#include "graft/errors.h"

namespace graft {
namespace {

std::vector<std::string> split(const std::string& text, char sep) {
  std::vector<std::string> parts;
  std::string current;
  for (char c : text) {
    if (c == sep) {
      parts.push_back(current);
      current.clear();
    } else if (c != ' ') {
      current += c;
    }
  }
  parts.push_back(current);
  return parts;
}

int64_t parse_positive_int(const std::string& text, const std::string& term) {
  size_t used = 0;
  long long value = 0;
  try {
    value = std::stoll(text, &used);
  } catch (const std::exception&) {
    used = 0;
  }
  if (used != text.size() || value <= 0 || value > (1ll << 31)) {
    throw SpecError("head spec term '" + term + "': expected a positive integer, got '" + text + "'");
  }
  return value;
}

const std::vector<std::string> kActivations = {"relu", "gelu", "silu", "tanh", "sigmoid", "softmax"};

torch::Tensor activate(const std::string& name, const torch::Tensor& x) {
  if (name == "relu") return torch::relu(x);
  if (name == "gelu") return torch::gelu(x);
  if (name == "silu") return torch::silu(x);
  if (name == "tanh") return torch::tanh(x);
  if (name == "sigmoid") return torch::sigmoid(x);
  if (name == "softmax") return torch::softmax(x, 1);
  return x;
}

// Global pooling reduces every dim after the channels: {2, 3} of an image map (N, C, H, W), {2, 3, 4}
// of a video map (N, C, T, H, W).
std::vector<int64_t> global_pool_dims(const torch::Tensor& features, const HeadSpec& spec) {
  if (features.dim() < 3) {
    throw Error("head '" + spec.to_string() + "': global " + pooling_name(spec.pooling) +
                " pooling needs a (N, C, ...) feature map with at least one spatial dim, got shape " +
                shape_str(features.sizes().vec()));
  }
  std::vector<int64_t> dims;
  for (int64_t d = 2; d < features.dim(); ++d) dims.push_back(d);
  return dims;
}

}  // namespace

std::string pooling_name(Pooling pooling) {
  switch (pooling) {
    case Pooling::kAvg:
      return "avg";
    case Pooling::kMax:
      return "max";
    case Pooling::kFlatten:
      return "flatten";
    case Pooling::kNone:
      return "none";
  }
  return "?";
}

HeadSpec HeadSpec::parse(const std::string& text) {
  HeadSpec spec;
  auto terms = split(text, ',');
  size_t first = 0;
  if (!terms.empty()) {
    const std::string& t = terms[0];
    if (t == "avg" || t == "max" || t == "flatten" || t == "none") {
      spec.pooling = t == "avg"       ? Pooling::kAvg
                     : t == "max"     ? Pooling::kMax
                     : t == "flatten" ? Pooling::kFlatten
                                      : Pooling::kNone;
      first = 1;
    }
  }
  for (size_t i = first; i < terms.size(); ++i) {
    const std::string& term = terms[i];
    auto fields = split(term, ':');
    HeadLayerSpec layer;
    if (term.empty()) {
      throw SpecError("head spec '" + text + "': empty term at position " + std::to_string(i + 1));
    } else if (fields[0] == "dense" && (fields.size() == 2 || fields.size() == 3)) {
      layer.kind = HeadLayerSpec::Kind::kDense;
      layer.units = parse_positive_int(fields[1], term);
      if (fields.size() == 3) {
        if (std::find(kActivations.begin(), kActivations.end(), fields[2]) == kActivations.end()) {
          throw SpecError("head spec term '" + term + "': unknown activation '" + fields[2] +
                          "', expected one of relu, gelu, silu, tanh, sigmoid, softmax");
        }
        layer.activation = fields[2];
      }
    } else if (fields[0] == "dropout" && fields.size() == 2) {
      layer.kind = HeadLayerSpec::Kind::kDropout;
      size_t used = 0;
      try {
        layer.rate = std::stod(fields[1], &used);
      } catch (const std::exception&) {
        used = 0;
      }
      if (used != fields[1].size() || !(layer.rate >= 0.0 && layer.rate < 1.0)) {
        throw SpecError("head spec term '" + term + "': dropout rate must be in [0, 1), got '" + fields[1] +
                        "'");
      }
    } else if (fields[0] == "bn" && fields.size() == 1) {
      layer.kind = HeadLayerSpec::Kind::kBatchNorm;
    } else if (fields[0] == "avg" || fields[0] == "max" || fields[0] == "flatten" || fields[0] == "none") {
      throw SpecError("head spec '" + text + "': pooling '" + fields[0] + "' must come first");
    } else {
      throw SpecError("head spec term '" + term +
                      "' not understood; expected avg|max|flatten|none first, then dropout:P, "
                      "dense:N[:ACT] or bn, e.g. 'avg,dropout:0.2,dense:512:relu,dense:10'");
    }
    spec.layers.push_back(layer);
  }
  return spec;
}

std::string HeadSpec::to_string() const {
  std::string out = pooling_name(pooling);
  for (const auto& layer : layers) {
    switch (layer.kind) {
      case HeadLayerSpec::Kind::kDense:
        out += ",dense:" + std::to_string(layer.units) +
               (layer.activation.empty() ? "" : ":" + layer.activation);
        break;
      case HeadLayerSpec::Kind::kDropout: {
        std::ostringstream rate;
        rate << layer.rate;
        out += ",dropout:" + rate.str();
        break;
      }
      case HeadLayerSpec::Kind::kBatchNorm:
        out += ",bn";
        break;
    }
  }
  return out;
}

HeadImpl::HeadImpl(const HeadSpec& spec, int64_t in_channels, std::array<int64_t, 2> feature_hw)
    : spec_(spec) {
  int64_t width = in_channels;
  if (spec.pooling == Pooling::kFlatten) width = in_channels * feature_hw[0] * feature_hw[1];
  if (spec.pooling == Pooling::kNone && !spec.layers.empty()) {
    throw SpecError("head spec '" + spec.to_string() +
                    "': pooling 'none' keeps the feature map and cannot feed dense layers; use avg, max or "
                    "flatten");
  }
  for (size_t i = 0; i < spec.layers.size(); ++i) {
    const auto& layer = spec.layers[i];
    const std::string name = std::to_string(i);
    switch (layer.kind) {
      case HeadLayerSpec::Kind::kDense: {
        auto linear = register_module(name, torch::nn::Linear(width, layer.units));
        const std::string act = layer.activation;
        layers_.emplace_back(
            name, [linear, act](const torch::Tensor& x) { return activate(act, linear->forward(x)); });
        layer_types_.push_back(act.empty() ? "Linear" : "Linear+" + act);
        width = layer.units;
        break;
      }
      case HeadLayerSpec::Kind::kDropout: {
        auto dropout = register_module(name, torch::nn::Dropout(layer.rate));
        layers_.emplace_back(name, [dropout](const torch::Tensor& x) { return dropout->forward(x); });
        layer_types_.push_back("Dropout");
        break;
      }
      case HeadLayerSpec::Kind::kBatchNorm: {
        auto bn = register_module(name, torch::nn::BatchNorm1d(width));
        layers_.emplace_back(name, [bn](const torch::Tensor& x) { return bn->forward(x); });
        layer_types_.push_back("BatchNorm1d");
        break;
      }
    }
  }
  out_features_ = width;
}

std::vector<ForwardStep> HeadImpl::steps(bool pre_logits) {
  std::vector<ForwardStep> steps;
  if (spec_.pooling != Pooling::kNone) {
    const std::string name = spec_.pooling == Pooling::kFlatten ? "flatten" : "pool";
    const std::string type = spec_.pooling == Pooling::kAvg   ? "GlobalAvgPool"
                             : spec_.pooling == Pooling::kMax ? "GlobalMaxPool"
                                                              : "Flatten";
    steps.push_back({name, type, [this](const torch::Tensor& x) { return pool(x); }});
  }
  // pre_logits stops before the last dense layer (dropping whatever follows it).
  size_t end = layers_.size();
  if (pre_logits) {
    while (end > 0 && spec_.layers[end - 1].kind != HeadLayerSpec::Kind::kDense) --end;
    if (end > 0) --end;
  }
  for (size_t i = 0; i < end; ++i) steps.push_back({layers_[i].first, layer_types_[i], layers_[i].second});
  return steps;
}

torch::Tensor HeadImpl::forward(const torch::Tensor& features) {
  return run_steps(steps(false), features);
}

torch::Tensor HeadImpl::pool(const torch::Tensor& features) const {
  switch (spec_.pooling) {
    case Pooling::kAvg:
      return features.mean(global_pool_dims(features, spec_));
    case Pooling::kMax:
      return features.amax(global_pool_dims(features, spec_));
    case Pooling::kFlatten:
      return features.flatten(1);
    case Pooling::kNone:
      break;
  }
  return features;
}

torch::Tensor HeadImpl::forward_pooled(const torch::Tensor& pooled) {
  torch::Tensor x = pooled;
  for (const auto& layer : layers_) x = layer.second(x);
  return x;
}

}  // namespace graft

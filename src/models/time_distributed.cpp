// TimeDistributed(backbone) + LSTM/GRU/average + classifier. See graft/video_model.h.
#include <sstream>

#include "graft/errors.h"
#include "graft/head.h"
#include "graft/video_model.h"

namespace graft {

TemporalSpec TemporalSpec::parse(const std::string& text) {
  TemporalSpec spec;
  std::vector<std::string> parts;
  std::stringstream stream(text);
  std::string part;
  while (std::getline(stream, part, ':')) parts.push_back(part);
  if (parts.empty())
    throw SpecError("temporal spec is empty (expected lstm:256, gru:128, lstm:256:bi or avg)");
  spec.kind = parts[0];
  if (spec.kind != "lstm" && spec.kind != "gru" && spec.kind != "avg")
    throw SpecError("temporal spec '" + text + "': '" + spec.kind + "' is not lstm, gru or avg");
  for (size_t i = 1; i < parts.size(); ++i) {
    const std::string& p = parts[i];
    try {
      if (p == "bi") {
        spec.bidirectional = true;
      } else if (p.rfind("layers=", 0) == 0) {
        spec.layers = std::stoll(p.substr(7));
      } else if (p.rfind("dropout=", 0) == 0) {
        spec.dropout = std::stod(p.substr(8));
      } else if (i == 1) {
        spec.hidden = std::stoll(p);
      } else {
        throw SpecError("");
      }
    } catch (const std::exception&) {
      throw SpecError("temporal spec '" + text + "': cannot read '" + p +
                      "' (expected a hidden size, bi, layers=N or dropout=P)");
    }
  }
  if (spec.hidden <= 0 || spec.layers <= 0 || !(spec.dropout >= 0 && spec.dropout < 1))
    throw SpecError("temporal spec '" + text + "': hidden and layers must be > 0, dropout in [0, 1)");
  if (spec.kind == "avg" && parts.size() > 1 && !(parts.size() == 2 && parts[1].rfind("dropout=", 0) == 0))
    throw SpecError("temporal spec '" + text + "': avg takes no size");
  return spec;
}

std::string TemporalSpec::to_string() const {
  std::string out = kind;
  if (kind != "avg") {
    out += ":" + std::to_string(hidden);
    if (bidirectional) out += ":bi";
    if (layers != 1) out += ":layers=" + std::to_string(layers);
  }
  if (dropout > 0) {
    std::ostringstream d;
    d << dropout;
    out += ":dropout=" + d.str();
  }
  return out;
}

int64_t TemporalSpec::output_size(int64_t features) const {
  return kind == "avg" ? features : hidden * (bidirectional ? 2 : 1);
}

TimeDistributedClassifierImpl::TimeDistributedClassifierImpl(Backbone backbone_in, TemporalSpec temporal,
                                                             int64_t num_classes)
    : backbone(std::move(backbone_in)), spec_(std::move(temporal)) {
  if (!backbone) throw Error("TimeDistributed: no backbone");
  if (is_video_backbone(*backbone))
    throw Error(backbone->arch() + " already takes whole clips; use it without a temporal model");
  backbone->reset_classifier(0);  // pooled features per frame
  register_module("backbone", backbone);
  const int64_t features = backbone->num_features();
  if (spec_.kind == "lstm") {
    lstm = register_module("temporal", torch::nn::LSTM(torch::nn::LSTMOptions(features, spec_.hidden)
                                                           .num_layers(spec_.layers)
                                                           .bidirectional(spec_.bidirectional)
                                                           .batch_first(true)));
  } else if (spec_.kind == "gru") {
    gru = register_module("temporal", torch::nn::GRU(torch::nn::GRUOptions(features, spec_.hidden)
                                                         .num_layers(spec_.layers)
                                                         .bidirectional(spec_.bidirectional)
                                                         .batch_first(true)));
  }
  dropout = register_module("dropout", torch::nn::Dropout(spec_.dropout));
  fc = register_module("fc", torch::nn::Linear(spec_.output_size(features), num_classes));
}

torch::Tensor TimeDistributedClassifierImpl::frame_features(const torch::Tensor& clips) {
  if (clips.dim() != 5) {
    throw ShapeMismatch("TimeDistributed", "clips", {-1, -1, 3, -1, -1}, clips.sizes().vec());
  }
  const int64_t n = clips.size(0), t = clips.size(1);
  const torch::Tensor frames = clips.reshape({n * t, clips.size(2), clips.size(3), clips.size(4)});
  return backbone->forward(frames).reshape({n, t, -1});
}

torch::Tensor TimeDistributedClassifierImpl::summarize(const torch::Tensor& features) {
  if (features.dim() != 3)
    throw ShapeMismatch("TimeDistributed", "frame features", {-1, -1, -1}, features.sizes().vec());
  torch::Tensor summary;
  if (spec_.kind == "avg") {
    summary = features.mean(1);  // order-blind: a frame-averaging baseline
  } else {
    // The sequence's last output; a bidirectional model also reads the first output of its backward half.
    const torch::Tensor out =
        lstm ? std::get<0>(lstm->forward(features)) : std::get<0>(gru->forward(features));
    if (spec_.bidirectional) {
      const int64_t h = spec_.hidden;
      summary = torch::cat({out.select(1, -1).narrow(-1, 0, h), out.select(1, 0).narrow(-1, h, h)}, -1);
    } else {
      summary = out.select(1, -1);
    }
  }
  return summary;
}

torch::Tensor TimeDistributedClassifierImpl::forward_sequence(const torch::Tensor& features) {
  return fc->forward(dropout->forward(summarize(features)));
}

void TimeDistributedClassifierImpl::reset_classifier(int64_t num_classes) {
  const int64_t in = fc->options.in_features();
  fc = replace_module("fc", torch::nn::Linear(in, num_classes));
}

}  // namespace graft

// TF.js graph models (model.json with "format": "graph-model", as tfjs-converter writes a TensorFlow
// SavedModel or TF-Hub module): a GraphDef in JSON (nodes with op, inputs and attributes) plus the usual
// weight manifest, whose entries are the graph's Const nodes. graft runs them with a small interpreter
// over the ops that converted image classifiers use, the set tfjs-converter's graph optimiser emits for a
// MobileNet (tfjs-converter 1.7 / 4.x op mappers, TensorFlow's op definitions):
//   Placeholder, Const, Identity, Mul, Sub, AddV2 / Add, BiasAdd, Relu, Relu6, Softmax, Squeeze, Reshape,
//   Mean, AvgPool, MaxPool, Conv2D / _FusedConv2D and DepthwiseConv2dNative / FusedDepthwiseConv2dNative
//   (fused BiasAdd + Relu / Relu6; NHWC, SAME or VALID), MatMul / _FusedMatMul.
// An op outside that set is refused when the model is read, naming the node. Tensors flow as TF's NHWC;
// convolutions run in libtorch on a channels-last view, without copies.
#pragma once
#include <torch/types.h>

#include <map>
#include <memory>
#include <string>
#include <vector>

namespace graft {

class TfjsGraphModel {
 public:
  // Reads model.json (or model.min.js, or a folder holding either) and its shards. Throws FormatError
  // naming the file and node on a malformed graph, an unknown op, a missing input or weight.
  explicit TfjsGraphModel(const std::string& path);
  ~TfjsGraphModel();
  TfjsGraphModel(TfjsGraphModel&&) noexcept;

  // The graph's input placeholders and its outputs (from the signature, else the nodes nothing reads).
  const std::vector<std::string>& inputs() const;
  const std::vector<std::string>& outputs() const;
  bool has_node(const std::string& name) const;

  // Runs the graph on `input` (N, H, W, C) float for the first placeholder and returns the values of
  // `fetch` (node names; default: outputs()), computing only what they need.
  std::map<std::string, torch::Tensor> run(const torch::Tensor& input,
                                           const std::vector<std::string>& fetch = {}) const;

 private:
  struct Graph;
  std::unique_ptr<Graph> graph_;
};

}  // namespace graft

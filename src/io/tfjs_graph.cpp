// The TF.js graph-model interpreter (see graft/tfjs_graph.h). Op semantics follow TensorFlow's op
// definitions (tensorflow/core/ops/nn_ops.cc, math_ops.cc) and tfjs-converter's executors
// (src/operations/executors/convolution_executor.ts: _FusedConv2D's fused_ops BiasAdd + activation).
#include "graft/tfjs_graph.h"

#include <torch/nn/functional/conv.h>
#include <torch/nn/functional/pooling.h>

#include <algorithm>
#include <filesystem>
#include <set>

#include "graft/errors.h"
#include "graft/json_file.h"
#include "io/js_bundle.h"
#include "io/tfjs.h"
#include "layers/conv2d_same.h"

namespace graft {
namespace {

using nlohmann::json;
namespace F = torch::nn::functional;

const std::set<std::string> kSupportedOps{"Placeholder",
                                          "Const",
                                          "Identity",
                                          "Mul",
                                          "Sub",
                                          "AddV2",
                                          "Add",
                                          "BiasAdd",
                                          "Relu",
                                          "Relu6",
                                          "Softmax",
                                          "Squeeze",
                                          "Reshape",
                                          "Mean",
                                          "AvgPool",
                                          "MaxPool",
                                          "Conv2D",
                                          "_FusedConv2D",
                                          "DepthwiseConv2dNative",
                                          "FusedDepthwiseConv2dNative",
                                          "MatMul",
                                          "_FusedMatMul"};

}  // namespace

struct TfjsGraphModel::Graph {
  struct Node {
    std::string name, op;
    std::vector<size_t> inputs;  // node indices
    json attr;
    torch::Tensor weight;  // Const: the value; convolutions: the filter in PyTorch layout, prepared once
  };
  std::string file;
  std::vector<Node> nodes;  // in topological order
  std::map<std::string, size_t> index;
  std::vector<std::string> inputs, outputs;

  // One entry of modelTopology.node, checked; the names of its inputs go to input_names.
  Node read_node(const json& entry, const std::map<std::string, torch::Tensor>& weights,
                 std::vector<std::string>& input_names) const;
  // Every node, in an order where inputs come first (a cycle is refused), prepared; the Placeholders.
  void add_nodes(const json& list, const std::map<std::string, torch::Tensor>& weights);
  void find_outputs(const json& root);

  [[noreturn]] void fail(const Node& node, const std::string& what) const {
    throw FormatError(file, "node '" + node.name + "' (" + node.op + "): " + what);
  }

  const json* attr(const Node& node, const char* key) const {
    return node.attr.contains(key) ? &node.attr[key] : nullptr;
  }
  std::string attr_string(const Node& node, const char* key, const std::string& fallback = "") const {
    const json* a = attr(node, key);
    if (!a || !a->contains("s") || !(*a)["s"].is_string()) return fallback;
    const std::string b64 = (*a)["s"].get<std::string>();
    const auto bytes = js::base64_decode(b64, 0, b64.size(), file);
    return std::string(bytes.begin(), bytes.end());
  }
  std::vector<std::string> attr_strings(const Node& node, const char* key) const {
    std::vector<std::string> out;
    const json* a = attr(node, key);
    if (!a || !a->contains("list") || !(*a)["list"].contains("s")) return out;
    for (const json& item : (*a)["list"]["s"]) {
      const std::string b64 = item.get<std::string>();
      const auto bytes = js::base64_decode(b64, 0, b64.size(), file);
      out.emplace_back(bytes.begin(), bytes.end());
    }
    return out;
  }
  std::vector<int64_t> attr_ints(const Node& node, const char* key) const {
    std::vector<int64_t> out;
    const json* a = attr(node, key);
    if (!a || !a->contains("list") || !(*a)["list"].contains("i")) return out;
    for (const json& item : (*a)["list"]["i"]) {
      out.push_back(item.is_string() ? std::stoll(item.get<std::string>()) : item.get<int64_t>());
    }
    return out;
  }
  bool attr_bool(const Node& node, const char* key) const {
    const json* a = attr(node, key);
    return a && a->contains("b") && (*a)["b"].is_boolean() && (*a)["b"].get<bool>();
  }

  // NHWC attributes [1, h, w, 1] -> {h, w}.
  std::array<int64_t, 2> spatial(const Node& node, const char* key) const {
    const auto v = attr_ints(node, key);
    if (v.empty()) return {1, 1};
    if (v.size() != 4 || v[0] != 1 || v[3] != 1) {
      fail(node, std::string(key) + " must be [1, h, w, 1] (NHWC), got " + shape_str(v));
    }
    return {v[1], v[2]};
  }

  void check_nhwc(const Node& node) const {
    const std::string format = attr_string(node, "data_format", "NHWC");
    if (format != "NHWC") fail(node, "data_format " + format + "; graft runs NHWC graphs");
  }

  void prepare(Node& node) {
    if (node.op == "Conv2D" || node.op == "_FusedConv2D" || node.op == "DepthwiseConv2dNative" ||
        node.op == "FusedDepthwiseConv2dNative") {
      check_nhwc(node);
      if (node.inputs.size() < 2 || nodes[node.inputs[1]].op != "Const") {
        fail(node, "the filter must be a Const input");
      }
      const torch::Tensor filter = nodes[node.inputs[1]].weight;
      if (filter.dim() != 4)
        fail(node, "the filter has shape " + shape_str(filter.sizes().vec()) + ", expected 4-D");
      if (node.op.find("Depthwise") != std::string::npos) {
        // (H, W, C, M) -> (C * M, 1, H, W): output channel c * M + m, PyTorch's grouped order.
        node.weight = filter.permute({2, 3, 0, 1})
                          .reshape({filter.size(2) * filter.size(3), 1, filter.size(0), filter.size(1)})
                          .contiguous();
      } else {
        node.weight = filter.permute({3, 2, 0, 1}).contiguous();  // HWIO -> OIHW
      }
      const std::string padding = attr_string(node, "padding", "VALID");
      if (padding != "SAME" && padding != "VALID")
        fail(node, "padding " + padding + "; expected SAME or VALID");
      for (const std::string& op : attr_strings(node, "fused_ops")) {
        if (op != "BiasAdd" && op != "Relu" && op != "Relu6")
          fail(node, "fused op " + op + " is not supported");
      }
    } else if (node.op == "_FusedMatMul") {
      for (const std::string& op : attr_strings(node, "fused_ops")) {
        if (op != "BiasAdd" && op != "Relu" && op != "Relu6")
          fail(node, "fused op " + op + " is not supported");
      }
    } else if (node.op == "AvgPool" || node.op == "MaxPool") {
      check_nhwc(node);
    }
  }

  torch::Tensor fused(const Node& node, torch::Tensor y, const std::vector<torch::Tensor>& args) const {
    size_t next = 2;  // fused arguments follow the two operands
    for (const std::string& op : attr_strings(node, "fused_ops")) {
      if (op == "BiasAdd") {
        if (next >= args.size()) fail(node, "BiasAdd is fused but the bias input is missing");
        y = y + args[next++];
      } else if (op == "Relu") {
        y = torch::relu(y);
      } else if (op == "Relu6") {
        y = torch::clamp(y, 0.0, 6.0);
      }
    }
    return y;
  }

  torch::Tensor eval(const Node& node, const std::vector<torch::Tensor>& args) const {
    const std::string& op = node.op;
    if (op == "Identity") return args.at(0);
    if (op == "Mul") return args.at(0) * args.at(1);
    if (op == "Sub") return args.at(0) - args.at(1);
    if (op == "AddV2" || op == "Add" || op == "BiasAdd") return args.at(0) + args.at(1);
    if (op == "Relu") return torch::relu(args.at(0));
    if (op == "Relu6") return torch::clamp(args.at(0), 0.0, 6.0);
    if (op == "Softmax") return torch::softmax(args.at(0), -1);
    if (op == "Squeeze") {
      torch::Tensor x = args.at(0);
      auto dims = attr_ints(node, "squeeze_dims");
      if (dims.empty()) return x.squeeze();
      for (auto& d : dims) d = d < 0 ? d + x.dim() : d;
      std::sort(dims.rbegin(), dims.rend());
      for (int64_t d : dims) {
        if (d < 0 || d >= x.dim() || x.size(d) != 1)
          fail(node, "cannot squeeze dimension " + std::to_string(d) + " of " + shape_str(x.sizes().vec()));
        x = x.squeeze(d);
      }
      return x;
    }
    if (op == "Reshape") {
      const torch::Tensor shape = args.at(1).to(torch::kLong);
      return args.at(0).reshape(
          std::vector<int64_t>(shape.data_ptr<int64_t>(), shape.data_ptr<int64_t>() + shape.numel()));
    }
    if (op == "Mean") {
      const torch::Tensor axes = args.at(1).to(torch::kLong).flatten();
      std::vector<int64_t> dims(axes.data_ptr<int64_t>(), axes.data_ptr<int64_t>() + axes.numel());
      return args.at(0).mean(dims, attr_bool(node, "keep_dims"));
    }
    if (op == "AvgPool" || op == "MaxPool") {
      const auto kernel = spatial(node, "ksize"), stride = spatial(node, "strides");
      const torch::Tensor x = args.at(0).permute({0, 3, 1, 2});  // NCHW view of the NHWC tensor
      torch::Tensor y;
      if (attr_string(node, "padding", "VALID") == "SAME") {
        y = op == "AvgPool" ? avg_pool2d_same(x, kernel, stride) : max_pool2d_same(x, kernel, stride);
      } else {
        y = op == "AvgPool" ? torch::avg_pool2d(x, {kernel[0], kernel[1]}, {stride[0], stride[1]})
                            : torch::max_pool2d(x, {kernel[0], kernel[1]}, {stride[0], stride[1]});
      }
      return y.permute({0, 2, 3, 1});
    }
    if (op == "Conv2D" || op == "_FusedConv2D" || op == "DepthwiseConv2dNative" ||
        op == "FusedDepthwiseConv2dNative") {
      const auto stride = spatial(node, "strides"), dilation = spatial(node, "dilations");
      torch::Tensor x = args.at(0).permute({0, 3, 1, 2});  // channels-last strides: no copy
      const auto kernel = std::array<int64_t, 2>{node.weight.size(2), node.weight.size(3)};
      if (attr_string(node, "padding", "VALID") == "SAME") x = pad_same(x, kernel, stride, dilation);
      const bool depthwise = op.find("Depthwise") != std::string::npos;
      const int64_t groups = depthwise ? x.size(1) : 1;
      torch::Tensor y =
          torch::conv2d(x, node.weight, /*bias=*/torch::Tensor(), torch::IntArrayRef{stride[0], stride[1]},
                        torch::IntArrayRef{0, 0}, torch::IntArrayRef{dilation[0], dilation[1]}, groups);
      y = y.permute({0, 2, 3, 1});  // back to NHWC
      return op[0] == '_' || op.rfind("Fused", 0) == 0 ? fused(node, y, args) : y;
    }
    if (op == "MatMul" || op == "_FusedMatMul") {
      torch::Tensor a = args.at(0), b = args.at(1);
      if (attr_bool(node, "transpose_a")) a = a.t();
      if (attr_bool(node, "transpose_b")) b = b.t();
      const torch::Tensor y = torch::matmul(a, b);
      return op == "_FusedMatMul" ? fused(node, y, args) : y;
    }
    fail(node, "no executor");  // unreachable: ops are checked when the graph is read
  }
};

namespace {

// The model file of a path: the file itself, or a folder's model.json (model.min.js for a bundle's).
std::string graph_file(const std::string& path) {
  namespace fs = std::filesystem;
  if (!fs::is_directory(path)) return path;
  for (const char* name : {"model.json", "model.min.js"})
    if (fs::is_regular_file(fs::path(path) / name)) return (fs::path(path) / name).string();
  throw FormatError(path, "a folder without model.json or model.min.js");
}

}  // namespace

TfjsGraphModel::Graph::Node TfjsGraphModel::Graph::read_node(
    const json& entry, const std::map<std::string, torch::Tensor>& weights,
    std::vector<std::string>& input_names) const {
  Node node;
  if (!entry.is_object() || !entry.contains("name") || !entry["name"].is_string() || !entry.contains("op") ||
      !entry["op"].is_string()) {
    throw FormatError(file, "a graph node without a name or op: " + json_excerpt(entry, 200));
  }
  node.name = entry["name"].get<std::string>();
  node.op = entry["op"].get<std::string>();
  node.attr = entry.value("attr", json::object());
  if (!kSupportedOps.count(node.op)) fail(node, "op not supported by graft's graph interpreter");
  const json input_list = entry.value("input", json::array());
  if (!input_list.is_array()) fail(node, "\"input\" is not a list of node names");
  for (const json& input : input_list) {
    if (!input.is_string()) fail(node, "an input is not a node name: " + json_excerpt(input, 80));
    std::string name = input.get<std::string>();
    if (!name.empty() && name[0] == '^') continue;  // a control dependency carries no data
    const size_t colon = name.rfind(':');
    if (colon != std::string::npos) {
      if (name.substr(colon + 1) != "0")
        fail(node, "reads output " + name + "; only first outputs are supported");
      name = name.substr(0, colon);
    }
    input_names.push_back(name);
  }
  if (node.op == "Const") {
    auto it = weights.find(node.name);
    if (it == weights.end()) fail(node, "its value is not in the weights manifest");
    node.weight = it->second;
  }
  return node;
}

void TfjsGraphModel::Graph::add_nodes(const json& list, const std::map<std::string, torch::Tensor>& weights) {
  // Read the nodes, then order them so every input comes first (Kahn's algorithm), refusing cycles.
  std::vector<Node> read;
  std::map<std::string, size_t> by_name;
  std::vector<std::vector<std::string>> input_names;
  for (const json& entry : list) {
    input_names.emplace_back();
    Node node = read_node(entry, weights, input_names.back());
    if (!by_name.emplace(node.name, read.size()).second) fail(node, "the name appears twice");
    read.push_back(std::move(node));
  }
  std::vector<std::vector<size_t>> readers(read.size());
  std::vector<size_t> pending(read.size(), 0);
  for (size_t i = 0; i < read.size(); ++i) {
    for (const std::string& name : input_names[i]) {
      auto it = by_name.find(name);
      if (it == by_name.end()) fail(read[i], "input '" + name + "' is not a node of the graph");
      readers[it->second].push_back(i);
      ++pending[i];
    }
  }
  std::vector<size_t> ready, order, position(read.size());
  for (size_t i = 0; i < read.size(); ++i) {
    if (pending[i] == 0) ready.push_back(i);
  }
  while (!ready.empty()) {
    const size_t i = ready.back();
    ready.pop_back();
    position[i] = order.size();
    order.push_back(i);
    for (size_t reader : readers[i]) {
      if (--pending[reader] == 0) ready.push_back(reader);
    }
  }
  if (order.size() != read.size()) throw FormatError(file, "the graph has a cycle");
  for (size_t i : order) {
    Node node = std::move(read[i]);
    for (const std::string& name : input_names[i]) node.inputs.push_back(position[by_name[name]]);
    index[node.name] = nodes.size();
    nodes.push_back(std::move(node));
  }
  for (auto& node : nodes) {
    prepare(node);
    if (node.op == "Placeholder") inputs.push_back(node.name);
  }
  if (inputs.empty()) throw FormatError(file, "the graph has no Placeholder input");
}

void TfjsGraphModel::Graph::find_outputs(const json& root) {
  // The signature's, else the nodes that nothing reads (and are not constants).
  const json* listed = nullptr;
  if (root.contains("userDefinedMetadata") && root["userDefinedMetadata"].contains("signature")) {
    const json& signature = root["userDefinedMetadata"]["signature"];
    if (signature.contains("outputs") && signature["outputs"].is_object()) listed = &signature["outputs"];
  }
  if (listed) {
    for (const auto& item : listed->items()) {
      const std::string name = item.key().substr(0, item.key().rfind(':'));
      if (!index.count(name)) throw FormatError(file, "signature output '" + item.key() + "' is not a node");
      outputs.push_back(name);
    }
    return;
  }
  for (size_t i = 0; i < nodes.size(); ++i) {
    bool read_by_any = false;
    for (const auto& other : nodes)
      read_by_any |= std::count(other.inputs.begin(), other.inputs.end(), i) > 0;
    if (!read_by_any && nodes[i].op != "Const") outputs.push_back(nodes[i].name);
  }
}

TfjsGraphModel::TfjsGraphModel(const std::string& path) : graph_(std::make_unique<Graph>()) {
  Graph& g = *graph_;
  g.file = graph_file(path);
  const json root = tfjs::read_model_json(g.file);
  if (!root.contains("modelTopology") || !root["modelTopology"].is_object() ||
      !root["modelTopology"].contains("node") || !root["modelTopology"]["node"].is_array()) {
    throw FormatError(g.file, "no modelTopology.node list: not a TF.js graph model",
                      "a layers model (Keras topology) loads with --weights into its architecture");
  }
  std::map<std::string, torch::Tensor> weights;
  for (auto& [name, value] : tfjs::read_manifest_weights(root, g.file)) weights[name] = std::move(value);
  g.add_nodes(root["modelTopology"]["node"], weights);
  g.find_outputs(root);
}

TfjsGraphModel::~TfjsGraphModel() = default;
TfjsGraphModel::TfjsGraphModel(TfjsGraphModel&&) noexcept = default;

const std::vector<std::string>& TfjsGraphModel::inputs() const {
  return graph_->inputs;
}
const std::vector<std::string>& TfjsGraphModel::outputs() const {
  return graph_->outputs;
}
bool TfjsGraphModel::has_node(const std::string& name) const {
  return graph_->index.count(name) > 0;
}

std::map<std::string, torch::Tensor> TfjsGraphModel::run(const torch::Tensor& input,
                                                         const std::vector<std::string>& fetch) const {
  const Graph& g = *graph_;
  const std::vector<std::string>& wanted = fetch.empty() ? g.outputs : fetch;
  if (input.dim() != 4) {
    throw Error(g.file + ": the input must be (N, H, W, C) as the graph's Placeholder, got shape " +
                shape_str(input.sizes().vec()));
  }
  // Mark what the fetched nodes need, walking back from them.
  std::vector<bool> needed(g.nodes.size(), false);
  std::vector<size_t> stack;
  for (const std::string& name : wanted) {
    auto it = g.index.find(name);
    if (it == g.index.end()) throw Error(g.file + ": no node named '" + name + "' to fetch");
    stack.push_back(it->second);
  }
  while (!stack.empty()) {
    const size_t i = stack.back();
    stack.pop_back();
    if (needed[i]) continue;
    needed[i] = true;
    for (size_t input_index : g.nodes[i].inputs) stack.push_back(input_index);
  }
  torch::NoGradGuard no_grad;
  const torch::Tensor x = input.to(torch::kFloat);
  std::vector<torch::Tensor> values(g.nodes.size());
  for (size_t i = 0; i < g.nodes.size(); ++i) {
    if (!needed[i]) continue;
    const auto& node = g.nodes[i];
    if (node.op == "Placeholder") {
      values[i] = x;
    } else if (node.op == "Const") {
      values[i] = node.weight;
    } else {
      std::vector<torch::Tensor> args;
      for (size_t input_index : node.inputs) args.push_back(values[input_index]);
      try {
        values[i] = g.eval(node, args);
      } catch (const c10::Error& e) {
        g.fail(
            node, std::string("failed on inputs of shapes ") +
                      [&] {
                        std::string shapes;
                        for (const auto& a : args)
                          shapes += (shapes.empty() ? "" : ", ") + shape_str(a.sizes().vec());
                        return shapes;
                      }() +
                      ": " + e.what_without_backtrace());
      }
    }
  }
  std::map<std::string, torch::Tensor> out;
  for (const std::string& name : wanted) out[name] = values[g.index.at(name)].contiguous();
  return out;
}

}  // namespace graft

// graft's side of bench/text: GPT-2 tokenizer throughput and small-transformer training steps, measured
// the way bench/reference_text.py (PyTorch eager) and bench/reference_tokenize.cjs (js-tiktoken) measure
// theirs, so that bench/text can put the figures side by side. Prints one JSON object per run.
//
//   graft_text_bench tokenize --tokenizer DIR FILE [--repeat N] [--chunk BYTES] [--dump-ids PATH]
//       FILE split into chunks of about BYTES (each ends at the first '\n' at or after BYTES, the same
//       split as the references), each chunk encoded with Tokenizer::encode on one thread. The first pass
//       (empty merge cache) is reported apart; mb_per_s is the median of the N passes after it.
//       batch_mb_per_s: the same chunks through encode_batch (graft's worker threads), median of N.
//   graft_text_bench train-bert|train-gpt2|train-vit [--steps N] [--warmup W] [--window S] [--batch B]
//                         [--seq T] [--threads K] [--seed X] [--profile TRACE.json] [--size tiny|base]
//                         [--lora R]
//       BERT-tiny-sized BertForSequenceClassification or GPT-2-tiny-sized GPT2LMHeadModel in train mode
//       (Hugging Face's default dropouts), AdamW lr 1e-4, one batch of random ids made once from the
//       seed. A step is zero_grad + forward with labels (the model's own loss) + backward + AdamW step.
//       W steps of warm-up, then N steps timed in windows of S; steps_per_s is the median window's.
//       --profile writes libtorch's operator profile of the timed steps as a Chrome trace.
//       train-vit: a ViTForImageClassification on random 224 px pixels. --size base: BERT-base and ViT-B
//       shapes. --lora R: PEFT's LoRA (r = alpha = R) on query and value, the classifier trained whole,
//       AdamW over what trains (bench/lora). The JSON adds trainable parameters, peak_rss_mb, and the
//       resident memory before the first step (rss_before_mb) and at the end of a forward, the largest
//       seen (rss_after_forward_mb), to tell weights and optimiser state from activations.
//   graft_text_bench info
//       graft::runtime_info(): versions, threads, BLAS, for the results' machine line.
#include <sys/resource.h>
#include <torch/csrc/autograd/profiler_legacy.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <fstream>
#include <iostream>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "graft/bert.h"
#include "graft/errors.h"
#include "graft/gpt2.h"
#include "graft/lora.h"
#include "graft/precision.h"
#include "graft/runtime.h"
#include "graft/tokenizer.h"
#include "graft/transformers.h"
#include "graft/vit.h"
#include "timing.h"

namespace {

using graft::bench::Clock;
using graft::bench::median;
using graft::bench::seconds_since;

// Command-line flags of the form --name VALUE after the mode; positional arguments kept in order.
struct Args {
  std::vector<std::string> positional;
  std::vector<std::pair<std::string, std::string>> flags;

  static Args parse(int argc, char** argv, int first) {
    Args args;
    for (int i = first; i < argc; ++i) {
      const std::string word = argv[i];
      if (word.rfind("--", 0) == 0) {
        if (i + 1 >= argc) throw graft::Error(word + " needs a value");
        args.flags.emplace_back(word, argv[++i]);
      } else {
        args.positional.push_back(word);
      }
    }
    return args;
  }
  std::string text(const std::string& name, const std::string& fallback) const {
    for (const auto& [key, value] : flags)
      if (key == name) return value;
    return fallback;
  }
  int64_t integer(const std::string& name, int64_t fallback) const {
    const std::string value = text(name, "");
    if (value.empty()) return fallback;
    try {
      size_t used = 0;
      const int64_t parsed = std::stoll(value, &used);
      if (used == value.size() && parsed >= 0) return parsed;
    } catch (const std::exception&) {
    }
    throw graft::Error(name + ": expected a non-negative integer, got '" + value + "'");
  }
  void allow(const std::vector<std::string>& known) const {
    for (const auto& [key, value] : flags) {
      if (std::find(known.begin(), known.end(), key) == known.end())
        throw graft::Error("unknown option " + key);
    }
  }
};

std::string read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw graft::Error(path + ": cannot open the text file");
  std::ostringstream bytes;
  bytes << in.rdbuf();
  return bytes.str();
}

// Chunks of at least `size` bytes, each ending just after a '\n' (the last one at the end of the text).
// bench/reference_tokenize.cjs and bench/reference_text.py split the same way.
std::vector<std::string> split_chunks(const std::string& text, size_t size) {
  std::vector<std::string> chunks;
  for (size_t pos = 0; pos < text.size();) {
    size_t end = text.size();
    if (pos + size < text.size()) {
      const size_t newline = text.find('\n', pos + size);
      if (newline != std::string::npos) end = newline + 1;
    }
    chunks.push_back(text.substr(pos, end - pos));
    pos = end;
  }
  return chunks;
}

int tokenize(const Args& args) {
  args.allow({"--tokenizer", "--repeat", "--chunk", "--dump-ids"});
  if (args.positional.size() != 1) throw graft::Error("tokenize: expected one text FILE");
  const std::string tokenizer_path = args.text("--tokenizer", "");
  if (tokenizer_path.empty()) throw graft::Error("tokenize: --tokenizer DIR is required");
  const int64_t repeat = std::max<int64_t>(1, args.integer("--repeat", 5));
  const std::string text = read_file(args.positional[0]);
  const std::vector<std::string> chunks = split_chunks(text, args.integer("--chunk", 4096));

  const auto load_start = Clock::now();
  const std::unique_ptr<graft::Tokenizer> tokenizer = graft::load_tokenizer(tokenizer_path);
  const double load_s = seconds_since(load_start);
  graft::EncodeOptions options;
  options.add_special_tokens = false;

  size_t tokens = 0;
  std::vector<int64_t> first_ids;
  const auto one_pass = [&](bool keep) {
    tokens = 0;
    const auto start = Clock::now();
    for (const std::string& chunk : chunks) {
      const graft::Encoding encoding = tokenizer->encode(chunk, options);
      tokens += encoding.size();
      if (keep) first_ids.insert(first_ids.end(), encoding.ids.begin(), encoding.ids.end());
    }
    return seconds_since(start);
  };
  const double first_s = one_pass(/*keep=*/true);  // the merge cache starts empty
  std::vector<double> passes;
  for (int64_t i = 0; i < repeat; ++i) passes.push_back(one_pass(false));
  std::vector<double> batch_passes;
  for (int64_t i = 0; i < repeat; ++i) {
    const auto start = Clock::now();
    const std::vector<graft::Encoding> encodings = tokenizer->encode_batch(chunks, options);
    batch_passes.push_back(seconds_since(start));
    size_t batch_tokens = 0;
    for (const auto& e : encodings) batch_tokens += e.size();
    if (batch_tokens != tokens) {
      throw graft::Error("encode_batch gave " + std::to_string(batch_tokens) + " tokens, encode " +
                         std::to_string(tokens));
    }
  }

  const std::string dump = args.text("--dump-ids", "");
  if (!dump.empty()) {
    std::ofstream out(dump);
    for (int64_t id : first_ids) out << id << '\n';
    if (!out) throw graft::Error(dump + ": cannot write the token ids");
  }
  const double mb = static_cast<double>(text.size()) / 1e6;
  nlohmann::json json = {{"bytes", text.size()},
                         {"chunks", chunks.size()},
                         {"tokens", tokens},
                         {"load_s", load_s},
                         {"first_pass_s", first_s},
                         {"first_mb_per_s", mb / first_s},
                         {"median_s", median(passes)},
                         {"mb_per_s", mb / median(passes)},
                         {"batch_mb_per_s", mb / median(batch_passes)},
                         {"batch_threads", std::max(1u, std::thread::hardware_concurrency())},
                         {"repeat", repeat}};
  std::cout << json.dump() << std::endl;
  return 0;
}

struct TrainSettings {
  int64_t steps = 40, warmup = 5, window = 10, batch = 16, seq = 128, seed = 0;
  std::string profile;             // Chrome trace of the timed steps; empty: none
  std::string size = "tiny";       // tiny | base (BERT-base / ViT-B sized)
  int64_t lora = 0;                // LoRA rank on query and value (alpha = rank); 0: full fine-tuning
  std::string precision = "fp32";  // fp32 | bf16: forward and loss under autocast, as graft's Trainer
};

// --lora R: PEFT's LoRA (r = alpha = R, dropout 0.1) on query and value, the classifier trained whole;
// the optimiser gets what trains. Returns the trainable parameters.
std::vector<torch::Tensor> trainable_after_lora(torch::nn::Module& model, int64_t rank) {
  if (rank > 0) {
    graft::LoraConfig config = graft::LoraConfig::parse(
        "r=" + std::to_string(rank) + ",alpha=" + std::to_string(rank) + ",dropout=0.1,targets=query,value");
    config.modules_to_save = {"classifier"};
    graft::apply_lora(model, config);
  }
  std::vector<torch::Tensor> out;
  for (const auto& p : model.parameters())
    if (p.requires_grad()) out.push_back(p);
  return out;
}

// The process's resident memory now, from /proc/self/statm (0 where it cannot be read).
double current_rss_mb() {
  std::ifstream statm("/proc/self/statm");
  double pages = 0, resident = 0;
  if (!(statm >> pages >> resident)) return 0;
  return resident * static_cast<double>(sysconf(_SC_PAGESIZE)) / (1024.0 * 1024.0);
}

double peak_rss_mb() {
  rusage usage{};
  getrusage(RUSAGE_SELF, &usage);
  return static_cast<double>(usage.ru_maxrss) / 1024.0;
}

// Times training steps as the header says and prints the JSON line. `forward` returns the loss; a step is
// optimizer.zero_grad(), forward, backward, optimizer.step(), each phase timed too (phase_ms: medians).
template <typename Forward>
int time_training(const std::string& name, torch::nn::Module& model, torch::optim::Optimizer& optimizer,
                  const TrainSettings& s, Forward forward) {
  int64_t parameters = 0, trainable = 0;
  for (const auto& p : model.parameters()) {
    parameters += p.numel();
    if (p.requires_grad()) trainable += p.numel();
  }
  std::vector<double> phase_ms[4];  // zero_grad, forward, backward, optimizer step
  // Where memory goes: resident before the first step (libraries, weights) and at the end of a forward
  // (plus the activations autograd keeps, AdamW's state after the first step).
  const double rss_before_mb = current_rss_mb();
  double rss_after_forward_mb = 0;
  const auto step = [&](bool record) {
    const auto t0 = Clock::now();
    optimizer.zero_grad();
    const auto t1 = Clock::now();
    torch::Tensor loss;
    {
      graft::Autocast autocast(
          s.precision == "bf16" ? graft::Precision::kBFloat16 : graft::Precision::kFloat32, torch::kCPU);
      loss = forward();
    }
    const auto t2 = Clock::now();
    rss_after_forward_mb = std::max(rss_after_forward_mb, current_rss_mb());
    loss.backward();
    const auto t3 = Clock::now();
    optimizer.step();
    const auto t4 = Clock::now();
    if (record) {
      const Clock::time_point marks[] = {t0, t1, t2, t3, t4};
      for (int i = 0; i < 4; ++i)
        phase_ms[i].push_back(std::chrono::duration<double, std::milli>(marks[i + 1] - marks[i]).count());
    }
    return loss.item<double>();
  };
  double first_loss = 0, last_loss = 0;
  for (int64_t i = 0; i < s.warmup; ++i) {
    const double loss = step(false);
    if (i == 0) first_loss = loss;
  }
  std::vector<double> windows;
  // --profile: libtorch's operator profiler over the timed steps, as a Chrome trace (slows them a little).
  std::unique_ptr<torch::autograd::profiler::RecordProfile> profile;
  if (!s.profile.empty()) profile = std::make_unique<torch::autograd::profiler::RecordProfile>(s.profile);
  for (int64_t done = 0; done < s.steps;) {
    const int64_t count = std::min(s.window, s.steps - done);
    const auto start = Clock::now();
    for (int64_t i = 0; i < count; ++i) last_loss = step(true);
    windows.push_back(static_cast<double>(count) / seconds_since(start));
    done += count;
  }
  profile.reset();  // writes the trace
  nlohmann::json json = {{"model", name},
                         {"parameters", parameters},
                         {"trainable", trainable},
                         {"lora", s.lora},
                         {"precision", s.precision},
                         {"peak_rss_mb", peak_rss_mb()},
                         {"rss_before_mb", rss_before_mb},
                         {"rss_after_forward_mb", rss_after_forward_mb},
                         {"batch", s.batch},
                         {"seq", s.seq},
                         {"threads", at::get_num_threads()},
                         {"steps", s.steps},
                         {"warmup", s.warmup},
                         {"window_steps_per_s", windows},
                         {"steps_per_s", median(windows)},
                         {"phase_ms",
                          {{"zero_grad", median(phase_ms[0])},
                           {"forward", median(phase_ms[1])},
                           {"backward", median(phase_ms[2])},
                           {"optimizer", median(phase_ms[3])}}},
                         {"first_loss", first_loss},
                         {"last_loss", last_loss}};
  std::cout << json.dump() << std::endl;
  return 0;
}

int train(const std::string& mode, const Args& args) {
  args.allow({"--steps", "--warmup", "--window", "--batch", "--seq", "--threads", "--seed", "--profile",
              "--size", "--lora", "--precision"});
  TrainSettings s;
  s.size = args.text("--size", s.size);
  if (s.size != "tiny" && s.size != "base") throw graft::Error("--size must be tiny or base, got " + s.size);
  s.lora = args.integer("--lora", 0);
  s.precision = args.text("--precision", s.precision);
  if (s.precision != "fp32" && s.precision != "bf16")
    throw graft::Error("--precision must be fp32 or bf16, got " + s.precision);
  s.steps = std::max<int64_t>(1, args.integer("--steps", s.steps));
  s.warmup = args.integer("--warmup", s.warmup);
  s.window = std::max<int64_t>(1, args.integer("--window", s.window));
  s.batch = std::max<int64_t>(1, args.integer("--batch", s.batch));
  s.seq = std::max<int64_t>(2, args.integer("--seq", s.seq));
  s.seed = args.integer("--seed", s.seed);
  s.profile = args.text("--profile", "");
  graft::set_threads(static_cast<int>(args.integer("--threads", 0)));
  graft::retain_freed_memory();  // as the graft program does
  torch::manual_seed(static_cast<uint64_t>(s.seed));

  const bool base = s.size == "base";
  if (mode == "train-bert") {
    // google/bert_uncased_L-2_H-128_A-2 (BERT-tiny), or bert-base-uncased's shape (--size base); dropouts
    // stay at BertConfig's 0.1 defaults.
    graft::BertConfig config;
    config.vocab_size = 30522;
    config.hidden_size = base ? 768 : 128;
    config.num_hidden_layers = base ? 12 : 2;
    config.num_attention_heads = base ? 12 : 2;
    config.intermediate_size = base ? 3072 : 512;
    config.set_num_labels(2);
    graft::BertForSequenceClassification model(config);
    model->train();
    graft::TextInputs inputs(torch::randint(config.vocab_size, {s.batch, s.seq}, torch::kLong));
    inputs.labels = torch::randint(2, {s.batch}, torch::kLong);
    torch::optim::AdamW optimizer(trainable_after_lora(*model, s.lora), torch::optim::AdamWOptions(1e-4));
    return time_training(base ? "bert-base" : "bert", *model, optimizer, s,
                         [&] { return model->forward(inputs).loss; });
  }
  if (mode == "train-vit") {
    // google/vit-base-patch16-224's shape (--size base), or 4 layers of width 192 at 224 px (tiny); a
    // batch of random pixels and labels.
    graft::ViTConfig config;
    if (!base) {
      config.hidden_size = 192;
      config.num_hidden_layers = 4;
      config.num_attention_heads = 3;
      config.intermediate_size = 768;
    }
    config.set_num_labels(10);
    graft::ViTForImageClassification model(config);
    model->train();
    const torch::Tensor pixels = torch::randn({s.batch, 3, config.image_size, config.image_size});
    const torch::Tensor labels = torch::randint(10, {s.batch}, torch::kLong);
    torch::optim::AdamW optimizer(trainable_after_lora(*model, s.lora), torch::optim::AdamWOptions(1e-4));
    return time_training(base ? "vit-base" : "vit", *model, optimizer, s,
                         [&] { return model->forward(pixels, labels).loss; });
  }
  // GPT-2 with n_embd 128, 2 layers, 2 heads, 256 positions; dropouts at GPT2Config's 0.1 defaults.
  graft::GPT2Config config;
  config.vocab_size = 50257;
  config.n_embd = 128;
  config.n_layer = 2;
  config.n_head = 2;
  config.n_positions = 256;
  if (s.seq > config.n_positions) throw graft::Error("--seq is over n_positions (256)");
  graft::GPT2LMHeadModel model(config);
  model->train();
  graft::CausalLMInputs inputs(torch::randint(config.vocab_size, {s.batch, s.seq}, torch::kLong));
  inputs.labels = inputs.input_ids;
  torch::optim::AdamW optimizer(model->parameters(), torch::optim::AdamWOptions(1e-4));
  return time_training("gpt2", *model, optimizer, s, [&] { return model->forward(inputs).loss; });
}

}  // namespace

int main(int argc, char** argv) try {
  const std::string mode = argc > 1 ? argv[1] : "";
  if (mode == "info") {  // what bench/text records about the machine
    std::cout << graft::runtime_info() << std::endl;
    return 0;
  }
  if (mode == "tokenize") return tokenize(Args::parse(argc, argv, 2));
  if (mode == "train-bert" || mode == "train-gpt2" || mode == "train-vit")
    return train(mode, Args::parse(argc, argv, 2));
  std::cerr
      << "usage: graft_text_bench tokenize --tokenizer DIR FILE [--repeat N] [--chunk BYTES] "
         "[--dump-ids PATH]\n"
         "       graft_text_bench train-bert|train-gpt2|train-vit [--steps N] [--warmup W] [--window S] "
         "[--batch B] [--seq T] [--threads K] [--seed X] [--profile TRACE.json] [--size tiny|base] "
         "[--lora R]\n"
         "       graft_text_bench info\n";
  return 2;
} catch (const std::exception& e) {
  std::cerr << "graft_text_bench: " << e.what() << '\n';
  return 1;
}

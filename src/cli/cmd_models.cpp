// `graft models [filter]`: architectures and their pretrained tags.
#include <iomanip>
#include <iostream>

#include "cli/commands.h"
#include "graft/registry.h"

namespace graft::cli {

namespace {

// "224px" for images, "16x112px" (frames x pixels) for video.
std::string input_label(const PretrainedCfg& cfg) {
  const std::string px = std::to_string(input_hw(cfg)[0]) + "px";
  return is_video_cfg(cfg) ? std::to_string(cfg.input_size[1]) + "x" + px : px;
}

// The Hugging Face families graft reads from a model folder (config.json + model.safetensors, or a Hub
// repository ORG/NAME): they come with their own configuration, so they have no tags here.
struct HfFamily {
  const char* name;
  const char* classes;
  const char* use;
};
const HfFamily kHfFamilies[] = {
    {"bert", "BertModel, BertForSequenceClassification",
     "train --task text-classify --weights FOLDER; predict, eval, features, forward"},
    {"roberta", "RobertaModel, RobertaForSequenceClassification",
     "train --task text-classify --weights FOLDER; predict, eval, features, forward"},
    {"xlm-roberta", "XLMRobertaModel, XLMRobertaForSequenceClassification",
     "forward FOLDER; training needs its SentencePiece Unigram tokenizer, which graft does not read yet"},
    {"distilbert", "DistilBertModel, DistilBertForSequenceClassification",
     "train --task text-classify --weights FOLDER; predict, eval, features, forward"},
    {"gpt2", "GPT2Model, GPT2LMHeadModel",
     "train --task causal-lm --weights FOLDER; generate, eval, forward"},
    {"llama", "LlamaModel, LlamaForCausalLM, LlamaForSequenceClassification (Llama 2/3, TinyLlama, SmolLM2)",
     "train --task causal-lm or text-classify --weights FOLDER; generate, chat, eval, forward"},
    {"qwen2", "Qwen2Model, Qwen2ForCausalLM, Qwen2ForSequenceClassification (Qwen2, Qwen2.5)",
     "train --task causal-lm or text-classify --weights FOLDER; generate, chat, eval, forward"},
    {"vit", "ViTModel, ViTForImageClassification",
     "forward FOLDER (image features and logits); not a `train --model` backbone yet"},
};

}  // namespace

void add_models_command(CLI::App& app) {
  auto* command = app.add_subcommand(
      "models", "list architectures and pretrained tags, and the Hugging Face model families graft reads");
  auto filter = std::make_shared<std::string>();
  command->add_option("filter", *filter, "substring of the architecture, tag or Hugging Face class name");
  command->callback([filter] {
    int shown = 0;
    for (const auto& entry : model_entries()) {
      for (const auto& tag : entry.tags) {
        const std::string name = entry.arch + "." + tag.tag;
        if (!filter->empty() && name.find(*filter) == std::string::npos) continue;
        std::cout << std::left << std::setw(26) << name << std::setw(10) << input_label(tag)
                  << tag.description << "\n";
        std::cout << std::setw(36) << ""
                  << "weights: " << tag.source << "\n";
        ++shown;
      }
    }
    bool heading = false;
    for (const HfFamily& family : kHfFamilies) {
      const std::string text = std::string(family.name) + " " + family.classes;
      if (!filter->empty() && text.find(*filter) == std::string::npos) continue;
      if (!heading)
        std::cout << (shown ? "\n" : "") << "Hugging Face model folders (config.json + model.safetensors):\n";
      heading = true;
      std::cout << std::left << std::setw(26) << family.name << family.classes << "\n"
                << std::setw(36) << ""
                << "use: " << family.use << "\n";
      ++shown;
    }
    if (shown == 0) std::cout << "no model matches '" << *filter << "'\n";
  });
}

}  // namespace graft::cli

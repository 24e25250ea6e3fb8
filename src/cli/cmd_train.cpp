// `graft train`: transfer learning on images, clips or text into a run directory. Its options come from
// one table (graft/train_options.h): the flags, their help and defaults, --config files and the checks.
#include <iostream>
#include <map>

#include "cli/commands.h"
#include "graft/errors.h"
#include "graft/hub.h"
#include "graft/json_file.h"
#include "graft/runtime.h"
#include "graft/task.h"
#include "graft/train_options.h"

namespace graft::cli {

namespace {

using nlohmann::json;

constexpr uint64_t kMaxConfigBytes = uint64_t{16} << 20;  // a training config is a few KiB

std::string help_of(const OptionSpec& spec) {
  std::string help = spec.help;
  if (!spec.choices.empty()) {
    help += ": ";
    for (size_t i = 0; i < spec.choices.size(); ++i) help += (i ? " | " : "") + spec.choices[i];
  }
  const unsigned every = kEveryTask;
  if (spec.tasks != every) help += " [" + task_names(spec.tasks) + "]";
  return help;
}

// What the whole run needs, whatever the task: where to read and where to write.
void check_required(const json& values, const std::string& task) {
  const auto given = [&](const char* key) {
    return values.contains(key) && values.at(key).is_string() && !values.at(key).get<std::string>().empty();
  };
  for (const char* key : {"data", "out"})
    if (!given(key))
      throw Error(std::string("--") + key + " is required (on the command line or in --config)");
  if (find_task(task).needs_model && !given("model") && !given("init_from"))
    throw Error("--model is required (or --init-from an earlier run), on the command line or in --config");
}

}  // namespace

void add_train_command(CLI::App& app) {
  auto* command = app.add_subcommand(
      "train",
      "transfer learning: train a new head (and, if asked, the pretrained top) on images, clips or text");
  auto config_file = std::make_shared<std::string>();
  auto overwrite = std::make_shared<bool>(false);
  auto texts = std::make_shared<std::map<std::string, std::string>>();  // option key -> flag text
  command
      ->add_option("--config", *config_file,
                   "JSON file of options (keys as printed at start, for every task); flags override it")
      ->check(CLI::ExistingFile);
  for (const OptionSpec& spec : train_option_table()) {
    if (spec.type == OptionType::kSwitch) {
      command->add_flag(option_flag(spec))->description(help_of(spec));
    } else {
      command->add_option(option_flag(spec), (*texts)[spec.key], help_of(spec))
          ->default_str(option_default_text(spec));
    }
  }
  command->add_flag("--overwrite", *overwrite,
                    "replace the graft run in --out (its checkpoints are removed first)");

  command->callback([command, config_file, overwrite, texts] {
    // The file's values, then the flags given, each checked where it came from before anything is read.
    json file_values = json::object(), flag_values = json::object();
    if (!config_file->empty()) file_values = read_json_file(*config_file, kMaxConfigBytes);
    for (const OptionSpec& spec : train_option_table())
      if (command->get_option(option_flag(spec))->count() > 0)
        flag_values[spec.key] =
            parse_option_text(spec, spec.type == OptionType::kSwitch ? "" : texts->at(spec.key));
    std::string task = "image-classify";
    for (const json* values : {&file_values, &flag_values})
      if (values->is_object() && values->contains("task") && values->at("task").is_string())
        task = values->at("task").get<std::string>();
    if (!config_file->empty()) {
      json file_only = file_values;
      if (file_only.is_object()) file_only.erase("task");  // a file's task may be overridden by --task
      check_train_values(file_only, task, *config_file);
    }
    check_train_values(flag_values, task, "");
    json values = file_values;
    values.update(flag_values);
    check_required(values, task);
    if (!values.contains("device")) values["device"] = "auto";
    // What auto chooses here, bf16 emulated on this CPU, fp16 refused: said before anything is read.
    if (values.contains("precision"))
      resolve_precision(values.at("precision").get<std::string>(),
                        parse_device(values.at("device").get<std::string>()), std::cout);
    if (values.contains("weights") && values.at("weights").is_string())
      values["weights"] = resolve_weights(values.at("weights").get<std::string>());

    const std::optional<Metrics> val = find_task(task).train(values, *overwrite, std::cout);
    if (!val) return;
    if (val->token_level)
      std::cout << "final validation perplexity: " << val->perplexity() << "\n";
    else
      std::cout << "final validation accuracy: " << val->accuracy << "\n";
  });
}

}  // namespace graft::cli

// `graft export RUN_DIR --format hf --out DIR`: a text run as a plain Hugging Face model folder.
#include <iostream>

#include "cli/commands.h"
#include "graft/errors.h"
#include "graft/run.h"
#include "graft/run_document.h"
#include "graft/text_task.h"

namespace graft::cli {

void add_export_command(CLI::App& app) {
  auto* command = app.add_subcommand(
      "export",
      "write a text run as a Hugging Face folder (from_pretrained loads it); with --merge, "
      "a LoRA run of any task with its adapter merged in");
  auto run_dir = std::make_shared<std::string>();
  auto format = std::make_shared<std::string>("hf");
  auto out = std::make_shared<std::string>();
  auto merge = std::make_shared<bool>(false);
  command->add_option("run", *run_dir, "text run directory written by graft train")->required();
  command->add_option("--format", *format, "hf: config.json, model.safetensors and the tokenizer files");
  command->add_option("--out", *out, "folder to create")->required();
  command->add_flag("--merge", *merge, "a LoRA run: merge the adapter into its base (a plain model folder)");
  command->callback([run_dir, format, out, merge] {
    const std::string task = run_task(*run_dir);
    if (*merge && (task == "image-classify" || task == "video-classify")) {
      export_merged_run(*run_dir, *out);
      std::cout << "exported " << *run_dir << " with its adapter merged to " << *out
                << " (a plain run directory: graft predict and eval read it)\n";
      return;
    }
    if (*format != "hf") throw Error("--format " + *format + ": graft exports hf (Hugging Face folders)");
    export_hf(*run_dir, *out, *merge);
    std::cout << "exported " << *run_dir << " to " << *out
              << " (load it in Python with AutoModel*.from_pretrained and AutoTokenizer.from_pretrained)\n";
  });
}

}  // namespace graft::cli

// `graft pull ORG/NAME [--revision R] [--files F ...]`: downloads a Hugging Face Hub model repository
// into the Hugging Face cache (the layout huggingface_hub uses, so Python finds the files too), after
// which `--weights ORG/NAME` loads it with no network.
#include <iostream>

#include "cli/commands.h"
#include "graft/errors.h"
#include "graft/hub.h"

namespace graft::cli {

void add_pull_command(CLI::App& app) {
  auto* command = app.add_subcommand("pull",
                                     "download a model from the Hugging Face Hub into the cache (HF_HOME, "
                                     "HF_HUB_CACHE, HF_ENDPOINT, HF_TOKEN, "
                                     "HF_HUB_OFFLINE)");
  auto repo = std::make_shared<std::string>();
  auto revision = std::make_shared<std::string>();
  auto files = std::make_shared<std::vector<std::string>>();
  command
      ->add_option("repo", *repo,
                   "repository ORG/NAME (or ORG/NAME@REVISION), e.g. google-bert/bert-base-uncased")
      ->required();
  command->add_option("--revision", *revision, "branch, tag or commit (default: main)");
  command->add_option(
      "--files", *files,
      "only these files (default: the ones graft reads: config.json, *.safetensors, tokenizer files, "
      "*.h5, TF.js model.json and its shards; never pickles)");
  command->callback([repo, revision, files] {
    HubRepo parsed = HubRepo::parse(*repo);
    if (!revision->empty()) {
      if (repo->find('@') != std::string::npos && parsed.revision != *revision)
        throw Error("give the revision once: " + *repo + " or --revision " + *revision);
      parsed = HubRepo::parse(parsed.id + "@" + *revision);
    }
    const HubOptions options = HubOptions::from_environment();
    std::cerr << "graft pull: " << parsed.id << "@" << parsed.revision << " from "
              << (options.offline ? std::string("the cache (HF_HUB_OFFLINE)") : options.endpoint) << " into "
              << options.cache_dir << "\n";
    const HubPullResult result = hub_pull(parsed, *files, options);
    for (const auto& [name, why] : result.skipped) std::cerr << "  skipped " << name << ": " << why << "\n";
    std::cout << "pulled " << result.repo << "@" << result.revision << " (commit " << result.commit
              << "): " << result.files.size() << " files";
    if (result.from_cache_only)
      std::cout << ", from the cache only";
    else
      std::cout << ", " << result.downloaded_bytes << " bytes downloaded";
    std::cout << "\n" << result.snapshot << "\n";
  });
}

}  // namespace graft::cli

// Run directories: model.safetensors and graft.json are two atomic writes, tied by a save id, so a save
// interrupted between them is refused at load instead of pairing new weights with old class names.
#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "graft/errors.h"
#include "graft/registry.h"
#include "graft/run.h"

namespace fs = std::filesystem;

namespace {

struct Folder {
  fs::path path = fs::temp_directory_path() / ("graft_run_dir_" + std::to_string(::getpid()));
  Folder() { fs::create_directories(path); }
  ~Folder() { fs::remove_all(path); }
};

graft::RunSpec spec_for(const std::string& model) {
  graft::RunSpec spec;
  spec.model = model;
  spec.classes = {"cat", "dog", "fish"};
  return spec;
}

}  // namespace

TEST(RunDir, WeightsFromAnotherSaveAreRefusedNamingBothFiles) {
  Folder folder;
  const std::string first = (folder.path / "first").string(), second = (folder.path / "second").string();
  const graft::RunSpec spec = spec_for("mobilenet_v2");
  torch::manual_seed(1);
  graft::Backbone a = graft::create_model("mobilenet_v2", 3);
  torch::manual_seed(2);
  graft::Backbone b = graft::create_model("mobilenet_v2", 3);
  graft::save_run(first, *a, spec, nlohmann::json::object());
  graft::save_run(second, *b, spec, nlohmann::json::object());

  const graft::LoadedRun loaded = graft::load_run(first);
  EXPECT_EQ(loaded.spec.weights_save_id.size(), 16u);
  const graft::SafeTensorsReader reader(first + "/model.safetensors");
  EXPECT_EQ(reader.metadata().at("graft_save_id"), loaded.spec.weights_save_id);
  EXPECT_NE(graft::load_run(second).spec.weights_save_id, loaded.spec.weights_save_id);

  // A second save into `first` that wrote its weights and died before graft.json.
  fs::copy_file(second + "/model.safetensors", first + "/model.safetensors",
                fs::copy_options::overwrite_existing);
  try {
    graft::load_run(first);
    ADD_FAILURE() << "weights of another save were loaded";
  } catch (const graft::FormatError& e) {
    const std::string message = e.what();
    EXPECT_NE(message.find(first + "/graft.json: names weights of save " + loaded.spec.weights_save_id),
              std::string::npos)
        << message;
    EXPECT_NE(message.find(first + "/model.safetensors is from save "), std::string::npos) << message;
    EXPECT_NE(message.find("interrupted"), std::string::npos) << message;
    // Another run's weights copied in read the same way: the message names both causes (#14).
    EXPECT_NE(message.find("weights copied in from elsewhere (another run's"), std::string::npos) << message;
  }

  // A run saved before save ids existed has none in graft.json: its weights load unchecked.
  nlohmann::json doc;
  std::ifstream(first + "/graft.json") >> doc;
  doc.erase("weights_save_id");
  std::ofstream(first + "/graft.json") << doc.dump(2);
  EXPECT_NO_THROW(graft::load_run(first));
}

// `graft train`: transfer learning on an image folder (or IDX files) into a run directory.
#include <fstream>
#include <iostream>

#include "cli/commands.h"
#include "graft/errors.h"
#include "graft/hub.h"
#include "graft/image_task.h"
#include "graft/json_file.h"
#include "graft/run.h"
#include "graft/runtime.h"
#include "graft/text_task.h"
#include "graft/video_task.h"

namespace graft::cli {

void add_train_command(CLI::App& app) {
  auto* command =
      app.add_subcommand("train", "train a new head (and optionally the backbone's top) on your images");
  auto o = std::make_shared<ImageTrainOptions>();
  auto config_file = std::make_shared<std::string>();
  auto device = std::make_shared<std::string>("auto");
  auto weight_decay = std::make_shared<double>(-1.0);
  auto task = std::make_shared<std::string>("image-classify");
  auto text = std::make_shared<TextTrainOptions>();
  auto video = std::make_shared<VideoTrainOptions>();
  auto init_from = std::make_shared<std::string>();
  auto overwrite = std::make_shared<bool>(false);
  command
      ->add_option("--config", *config_file,
                   "JSON file of options (keys as printed at start); flags override")
      ->check(CLI::ExistingFile);
  command->add_option("--task", *task, "image-classify | text-classify | causal-lm | video-classify");
  command->add_option(
      "--init-from", *init_from,
      "start from the model of an earlier run directory (its weights; a new last layer when classes differ)");
  command->add_option("--model", o->model, "architecture or ARCH.TAG, e.g. mobilenet_v2; text: bert, gpt2");
  command->add_option(
      "--weights", o->weights,
      "pretrained weights (safetensors, reference names); text: a Hugging Face folder or run dir; "
      "or a Hub repository ORG/NAME[@REV]");
  command->add_option("--data", o->data,
                      "image folder: DATA/<class>/*.jpg, or DATA/train + DATA/val; or IDX files");
  command->add_option("--out", o->out, "run directory to write");
  command->add_option("--head", o->head, "head spec, e.g. avg,dropout:0.2,dense:512:relu (dense:C appended)");
  command->add_option("--strategy", o->strategy, "feature-extract | fine-tune | two-stage");
  command->add_option("--freeze", o->freeze,
                      "fine-tune / two-stage stage 2: all, none, last:N, until:NAME, globs");
  command->add_option("--stage1-epochs", o->stage1_epochs, "two-stage: head-only epochs (default: half)");
  command->add_option("--backbone-lr-mult", o->backbone_lr_mult, "backbone learning rate = lr x this");
  command->add_flag("--bn-train-frozen", o->bn_train_frozen,
                    "frozen BatchNorm layers update running statistics");
  command->add_option("--val-split", o->val_split, "validation fraction when DATA has no val/ folder");
  command->add_flag("!--no-val", o->validate, "skip validation (no held-out data is evaluated)");
  command->add_option("--batch-size", o->batch_size, "images per batch");
  command->add_option("--image-size", o->image_size, "input size (default: the model's)");
  command->add_flag("!--no-augment", o->augment, "no random crop/flip on training images");
  command->add_option("--rotation", o->rotation, "training: random rotation up to this many degrees");
  command->add_option("--jitter", o->jitter, "training: colour jitter strength");
  command->add_option("--workers", o->workers, "decoding threads (default: cores)");
  command->add_option("--limit", o->limit, "IDX data: training images to use (validation: a quarter)");
  command->add_option("--epochs", o->train.epochs, "epochs");
  command->add_option("--optimizer", o->train.optimizer.name, "sgd | adam | adamw");
  command->add_option("--lr", o->train.optimizer.lr, "learning rate of the head");
  command->add_option("--momentum", o->train.optimizer.momentum, "sgd momentum");
  command->add_option("--weight-decay", *weight_decay, "weight decay (default: the optimiser's)");
  command->add_option("--schedule", o->train.schedule.name, "constant | step | cosine | linear");
  command->add_option("--warmup-steps", o->train.schedule.warmup_steps, "linear warm-up steps");
  command->add_option("--step-size", o->train.schedule.step_size, "step schedule: epochs per decay");
  command->add_option("--gamma", o->train.schedule.gamma, "step schedule: decay factor");
  command->add_option("--label-smoothing", o->train.label_smoothing, "cross-entropy label smoothing");
  command->add_option("--class-weights", o->train.class_weights, "cross-entropy class weights, one per class")
      ->delimiter(',');
  command->add_option("--grad-clip", o->train.grad_clip, "clip the global gradient norm (0: off)");
  command->add_option("--seed", o->train.seed, "random seed (runs repeat exactly on CPU)");
  command->add_flag("--early-stopping", o->train.early_stopping.enabled,
                    "stop when the monitored metric stalls");
  command->add_option("--monitor", o->train.early_stopping.monitor,
                      "val_loss | val_accuracy | ... (best checkpoint)");
  command->add_option("--patience", o->train.early_stopping.patience, "early stopping patience (epochs)");
  command->add_option("--min-delta", o->train.early_stopping.min_delta, "smallest change that counts");
  command->add_flag("--resume", o->train.resume, "continue the run in --out from its last checkpoint");
  command->add_flag("--overwrite", *overwrite,
                    "replace the graft run in --out (its checkpoints are removed first)");
  command->add_option("--device", *device, "auto, cpu or cuda[:N]");
  auto* text_group = command->add_option_group("text", "text-classify and causal-lm");
  text_group->add_option("--model-config", text->model_config,
                         "config.json of a new model trained from scratch");
  text_group->add_option("--tokenizer", text->tokenizer,
                         "tokenizer file or folder (default: the weights' folder)");
  text_group->add_option("--val-data", text->val_data, "validation data (default: --val-split of --data)");
  text_group->add_option("--format", text->columns.format, "auto | csv | tsv | jsonl | txt");
  text_group->add_option("--text-column", text->columns.text,
                         "column or JSON key of the text (number without header)");
  text_group->add_option("--text-pair-column", text->columns.text_pair,
                         "column of a second text (sentence pairs)");
  text_group->add_option("--label-column", text->columns.label, "column or JSON key of the label");
  text_group->add_flag("!--no-header", text->columns.header,
                       "csv/tsv: the first row is data; columns by number");
  text_group->add_option("--max-length", text->max_length, "text-classify: tokens per example (truncated)");
  text_group->add_option("--block-size", text->block_size, "causal-lm: tokens per training block");
  text_group->add_flag("--line-by-line", text->line_by_line,
                       "causal-lm: one example per line, not packed blocks");
  text_group->add_option("--warmup-ratio", text->warmup_ratio, "warm-up steps as a fraction of all steps");

  auto* video_group = command->add_option_group("video", "video-classify");
  video_group->add_option("--frames", video->frames, "frames sampled per clip");
  video_group->add_option("--temporal", video->temporal, "over frame features: lstm:H, gru:H (:bi), avg");
  video_group->add_flag(
      "!--no-feature-cache", video->cache_features,
      "frozen backbone: run it on every epoch's frames instead of caching (for comparison)");

  command->callback([command, o, config_file, device, weight_decay, task, text, video, init_from, overwrite] {
    auto flag_given = [&](const char* name) { return command->get_option(name)->count() > 0; };
    if (*task == "video-classify") {
      if (!config_file->empty())
        throw Error("--config is read for image tasks only; give video options as flags");
      VideoTrainOptions options = *video;
      options.model = o->model;
      options.weights = resolve_weights(o->weights);
      options.init_from = *init_from;
      options.data = o->data;
      options.out = o->out;
      if (flag_given("--freeze")) options.freeze = o->freeze;
      if (flag_given("--val-split")) options.val_split = o->val_split;
      options.validate = o->validate;
      options.augment = o->augment;
      options.rotation = o->rotation;
      options.jitter = o->jitter;
      if (flag_given("--batch-size")) options.batch_size = o->batch_size;
      if (flag_given("--image-size")) options.image_size = o->image_size;
      if (flag_given("--workers")) options.workers = o->workers;
      options.train = o->train;
      if (*weight_decay >= 0) options.train.optimizer.weight_decay = *weight_decay;
      options.train.resume = o->train.resume;
      options.train.device = parse_device(*device);
      for (const char* image_only :
           {"--head", "--strategy", "--stage1-epochs", "--backbone-lr-mult", "--limit"}) {
        if (flag_given(image_only))
          throw Error(std::string(image_only) +
                      " is an image option; --task video-classify does not take it");
      }
      check_out_folder(options.out, {options.data}, {options.weights, options.init_from},
                       options.train.resume, *overwrite);
      VideoTrainResult result = train_video_classifier(options, std::cout);
      if (result.val_metrics)
        std::cout << "final validation accuracy: " << result.val_metrics->accuracy << "\n";
      return;
    }
    for (const char* video_only : {"--frames", "--temporal", "--no-feature-cache"}) {
      if (flag_given(video_only))
        throw Error(std::string(video_only) + " is a video option; add --task video-classify");
    }
    if (*task == "text-classify" || *task == "causal-lm") {
      if (!config_file->empty())
        throw Error("--config is read for image tasks only; give text options as flags");
      TextTrainOptions options = *text;
      options.task = *task;
      options.model = o->model;
      options.weights = resolve_weights(o->weights);
      if (!init_from->empty()) {
        // A text run directory is a Hugging Face folder: starting from it is loading its weights.
        if (!options.weights.empty()) throw Error("give --weights or --init-from, not both");
        options.weights = *init_from;
      }
      options.data = o->data;
      options.out = o->out;
      options.freeze = o->freeze;
      // Flags given override the text recipe's defaults (AdamW 5e-5, linear decay, 3 epochs).
      if (flag_given("--val-split")) options.val_split = o->val_split;
      options.validate = o->validate;
      if (flag_given("--batch-size")) options.batch_size = o->batch_size;
      if (flag_given("--epochs")) options.train.epochs = o->train.epochs;
      if (flag_given("--optimizer")) options.train.optimizer.name = o->train.optimizer.name;
      if (flag_given("--lr")) options.train.optimizer.lr = o->train.optimizer.lr;
      if (flag_given("--momentum")) options.train.optimizer.momentum = o->train.optimizer.momentum;
      if (*weight_decay >= 0) options.train.optimizer.weight_decay = *weight_decay;
      if (flag_given("--schedule")) options.train.schedule.name = o->train.schedule.name;
      if (flag_given("--warmup-steps")) options.train.schedule.warmup_steps = o->train.schedule.warmup_steps;
      if (flag_given("--step-size")) options.train.schedule.step_size = o->train.schedule.step_size;
      if (flag_given("--gamma")) options.train.schedule.gamma = o->train.schedule.gamma;
      if (flag_given("--label-smoothing")) options.train.label_smoothing = o->train.label_smoothing;
      if (flag_given("--grad-clip")) options.train.grad_clip = o->train.grad_clip;
      if (flag_given("--seed")) options.train.seed = o->train.seed;
      options.train.early_stopping = o->train.early_stopping;
      options.train.resume = o->train.resume;
      options.train.device = parse_device(*device);
      for (const char* image_only :
           {"--head", "--strategy", "--stage1-epochs", "--backbone-lr-mult", "--image-size", "--rotation",
            "--jitter", "--workers", "--limit", "--class-weights"}) {
        if (flag_given(image_only))
          throw Error(std::string(image_only) + " is an image option; --task " + *task + " does not take it");
      }
      check_out_folder(options.out, {options.data, options.val_data},
                       {options.weights, options.tokenizer, options.model_config}, options.train.resume,
                       *overwrite);
      TextTrainResult result = train_text_model(options, std::cout);
      if (result.val_metrics) {
        if (options.task == "causal-lm")
          std::cout << "final validation perplexity: " << result.val_metrics->perplexity() << "\n";
        else
          std::cout << "final validation accuracy: " << result.val_metrics->accuracy << "\n";
      }
      return;
    }
    if (*task != "image-classify")
      throw Error("--task " + *task +
                  ": expected image-classify, text-classify, causal-lm or video-classify");
    for (const char* text_only : {"--model-config", "--tokenizer", "--val-data", "--format", "--text-column",
                                  "--text-pair-column", "--label-column", "--no-header", "--max-length",
                                  "--block-size", "--line-by-line", "--warmup-ratio"}) {
      if (command->get_option(text_only)->count() > 0)
        throw Error(std::string(text_only) +
                    " is a text option; add --task text-classify or --task causal-lm");
    }
    ImageTrainOptions options;
    if (!config_file->empty()) {
      const uint64_t max_config_bytes = uint64_t{16} << 20;  // a training config is a few KiB
      apply_json(options, read_json_file(*config_file, max_config_bytes), *config_file);
    }
    // Flags given on the command line override the file.
    nlohmann::json flags = to_json(*o), given;
    for (const auto& opt : command->get_options()) {
      if (opt->count() == 0 || opt->get_lnames().empty()) continue;
      std::string key = opt->get_lnames().front();
      for (auto& c : key) c = c == '-' ? '_' : c;
      if (key == "no_augment") key = "augment";
      if (key == "no_val") key = "validate";
      if (key == "task" || key == "init_from") continue;
      if (flags.contains(key)) given[key] = flags[key];
    }
    if (given.contains("weight_decay") || *weight_decay >= 0) given["weight_decay"] = *weight_decay;
    given.erase("config");
    apply_json(options, given, "command line");
    if (!init_from->empty()) options.init_from = *init_from;
    options.weights = resolve_weights(options.weights);
    for (const auto& [name, value] : {std::pair<const char*, const std::string*>{"--model", &options.model},
                                      {"--data", &options.data},
                                      {"--out", &options.out}}) {
      if (value->empty() && !(value == &options.model && !options.init_from.empty()))
        throw Error(std::string(name) + " is required (on the command line or in --config)");
    }
    options.train.resume = o->train.resume;
    options.train.device = parse_device(*device);
    check_out_folder(options.out, {options.data}, {options.weights, options.init_from}, options.train.resume,
                     *overwrite);
    ImageTrainResult result = train_image_classifier(options, std::cout);
    if (result.val_metrics) {
      std::cout << "final validation accuracy: " << result.val_metrics->accuracy << "\n";
    }
  });
}

}  // namespace graft::cli

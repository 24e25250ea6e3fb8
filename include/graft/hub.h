// The Hugging Face Hub: downloading a model repository into the cache that huggingface_hub itself uses,
// and resolving `--weights ORG/NAME[@REVISION]` to files in that cache.
//
// Cache layout (huggingface_hub/file_download.py, hf_hub_download, v0.2x):
//   $HF_HUB_CACHE (default $HF_HOME/hub, HF_HOME default ~/.cache/huggingface)
//     models--ORG--NAME/
//       blobs/<etag>                  file content, named by its ETag (LFS: the content's SHA-256)
//       blobs/<etag>.incomplete       a download in progress, resumed with an HTTP Range request
//       snapshots/<commit>/<file>     relative symlink to ../../blobs/<etag>
//       refs/<revision>               the commit hash the revision (branch, tag) pointed to
//   .locks/models--ORG--NAME/<etag>.lock   held (flock) while the blob is written
// Endpoints (HF_ENDPOINT, default https://huggingface.co):
//   GET  /api/models/ORG/NAME/revision/REV?blobs=true   {"sha": commit, "siblings": [{"rfilename": ..}]}
//   HEAD /ORG/NAME/resolve/COMMIT/FILE   X-Repo-Commit, ETag or X-Linked-Etag, Content-Length or
//                                        X-Linked-Size (LFS files answer with a redirect to a CDN)
// Environment: HF_ENDPOINT, HF_HOME, HF_HUB_CACHE, HF_HUB_OFFLINE=1 (the cache only), HF_TOKEN.
//
// Pickle files (PyTorch *.bin, *.pt, *.pth, *.ckpt, *.pkl) are never downloaded: unpickling runs code.
#pragma once
#include <cstdint>
#include <iostream>
#include <string>
#include <vector>

namespace graft {

struct HubOptions {
  std::string endpoint = "https://huggingface.co";  // HF_ENDPOINT; http:// is accepted (local mirrors)
  std::string cache_dir;                            // HF_HUB_CACHE, else $HF_HOME/hub
  std::string token;                                // HF_TOKEN: sent as "Authorization: Bearer ..."
  bool offline = false;                             // HF_HUB_OFFLINE=1: never touch the network
  int attempts = 3;                  // per file: a dropped transfer is resumed (Range) this many times
  double retry_delay_seconds = 1.0;  // before the 2nd attempt; doubles after each
  std::ostream* log = &std::cerr;    // progress bars and per-file lines
  // A download stops at the size the server announced; a file announced with no size stops here (the Hub
  // stores files of at most 50 GB).
  int64_t max_unsized_bytes = int64_t{50} << 30;
  // The options the environment gives (the variables above).
  static HubOptions from_environment();
};

// "ORG/NAME" (or a bare "NAME", e.g. gpt2) with an optional "@REVISION".
struct HubRepo {
  std::string id;                 // ORG/NAME
  std::string revision = "main";  // branch, tag or commit hash
  // Throws SpecError when `text` is not a valid repository id: characters [A-Za-z0-9._-], at most one
  // '/', no "--" or "..", no leading or trailing '.' or '-'.
  static HubRepo parse(const std::string& text);
  std::string folder_name() const;  // "models--ORG--NAME"
};

// True when `value` has the shape ORG/NAME[@REV] (exactly one '/', valid id): what --weights takes as a
// Hub repository when no file or folder of that name exists.
bool looks_like_hub_repo(const std::string& value);

// Throws graft::Error when a repository file name could leave the snapshot folder: empty, absolute,
// "..", "." or empty components, backslashes, control characters, or longer than 1000 bytes.
void check_hub_file_name(const std::string& name);

// Why graft does not take a file by default: "" when it does (config.json, *.safetensors, tokenizer
// files, Keras *.h5, TF.js model.json), else a reason (pickles: "pickle (...)"). TF.js weight shards are
// taken through their model.json's manifest, not by name.
std::string hub_skip_reason(const std::string& name);
bool is_pickle_file(const std::string& name);

struct HubPullResult {
  std::string repo;                                          // ORG/NAME
  std::string revision;                                      // as asked
  std::string commit;                                        // the commit the revision resolved to
  std::string snapshot;                                      // <cache>/models--ORG--NAME/snapshots/<commit>
  std::vector<std::string> files;                            // in the snapshot (relative names)
  std::vector<std::pair<std::string, std::string>> skipped;  // (file, why)
  int64_t downloaded_bytes = 0;                              // 0: everything came from the cache
  bool from_cache_only = false;                              // offline, or the Hub was unreachable
};

// Downloads `files` of repo@revision (empty: the files graft can use) into the cache and links them in
// the snapshot folder. Already downloaded blobs are not fetched again; partial ones are resumed. Each
// file is verified (size; the ETag's SHA-256 for LFS files, its git blob id for files kept in git) before
// it is published under snapshots/.
// Offline (or with the Hub unreachable and a cached snapshot): the cached snapshot, or an error.
HubPullResult hub_pull(const HubRepo& repo, const std::vector<std::string>& files = {},
                       const HubOptions& options = HubOptions::from_environment());

// The single resolver for --weights values (and other model paths): a `value` that exists on disk, or
// that does not look like ORG/NAME[@REV], is returned as it is. Otherwise the repository is pulled (or,
// with HF_HUB_OFFLINE=1, found in the cache) and the result is the snapshot's model.safetensors, else
// its Keras .h5 (when there is exactly one), else its TF.js model.json, else the snapshot folder.
std::string resolve_weights(const std::string& value,
                            const HubOptions& options = HubOptions::from_environment());

}  // namespace graft

// huggingface_hub's cache layout for the Hub client (src/io/hub.cpp): blobs, snapshot links, refs, the
// cached snapshot a revision points to; and the small text helpers the client's files share.
#pragma once
#include <cstddef>
#include <filesystem>
#include <optional>
#include <string>
#include <vector>

#include "graft/hub.h"

namespace graft::hub_detail {

// Text helpers shared by the Hub client's files.
std::string lower(std::string text);                  // ASCII lower-case
bool is_hex(const std::string& text, size_t length);  // exactly `length` lowercase hex digits
std::string shorten(const std::string& body);         // first 300 bytes on one line (+ "..."), for messages

// A whole small file; graft::Error when it is larger than max_bytes.
std::string read_small_file(const std::filesystem::path& path, size_t max_bytes);

// snapshots/<commit>/<name> -> the blob, as a relative link (the cache can move), replaced atomically.
void link_snapshot_file(const std::filesystem::path& snapshot, const std::string& name,
                        const std::filesystem::path& blob);

// The ETag without a weak "W/" prefix and quotes.
std::string normalize_etag(std::string etag);
// An ETag becomes a file name under blobs/: only plain characters.
void check_etag(const std::string& etag, const std::string& url);

// HubOptions::cache_dir; graft::Error when there is none.
std::filesystem::path cache_root(const HubOptions& options);

struct CachedSnapshot {
  std::string commit;
  std::filesystem::path snapshot;
};

// The snapshot a revision points to in the cache, if it is there.
std::optional<CachedSnapshot> find_cached_snapshot(const HubRepo& repo, const HubOptions& options);

// The pull's result from the cached snapshot alone (`why`: offline, or the Hub is unreachable); an error
// naming what to pull when the revision or one of `files` is not cached.
HubPullResult pull_from_cache(const HubRepo& repo, const std::vector<std::string>& files,
                              const HubOptions& options, const std::string& why);

}  // namespace graft::hub_detail

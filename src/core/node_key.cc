#include "connthrottle/node_key.h"

#include <atomic>

#include "absl/status/status.h"
#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"

namespace connthrottle {
namespace {

// The node hash places nodes in the shared index, so every process must
// compute the same value: absl::Hash is seeded per process and cannot be used.
// This is
// FNV-1a over the bytes followed by the murmur3 finaliser; it runs once per
// NodeKey, never on the acquire path. Changing it changes the table layout
// (bump internal::kLayoutVersion).
// Debian's Abseil is built with its own absl::string_view.
absl::string_view View(std::string_view s) { return absl::string_view(s.data(), s.size()); }

uint64_t Mix(uint64_t h) {
  h ^= h >> 33;
  h *= 0xff51afd7ed558ccdULL;
  h ^= h >> 33;
  h *= 0xc4ceb9fe1a85ec53ULL;
  h ^= h >> 33;
  return h;
}

// Ids are even and start at 2: 0 marks an empty slot in an owner's entry
// cache, and id + 1 names the key's database counter (NodeKey::cache_id).
std::atomic<uint64_t> next_id{2};

uint64_t HostHash(std::string_view host) {
  uint64_t h = 0xcbf29ce484222325ULL;
  for (unsigned char c : host) {
    h ^= c;
    h *= 0x100000001b3ULL;
  }
  return h;
}

// The node's hash places its counter in the shared table.
uint64_t NodeHash(std::string_view host, uint16_t port) {
  return Mix(HostHash(host) ^ (uint64_t{port} << 32));
}

uint64_t KeyHash(std::string_view host, uint16_t port, uint32_t database) {
  return Mix(HostHash(host) ^ ((uint64_t{port} << 32) | database));
}

}  // namespace

absl::StatusOr<NodeKey> NodeKey::Create(std::string_view host, int port, uint32_t database) {
  if (host.empty()) return absl::InvalidArgumentError("host name is empty");
  if (host.size() > kMaxHostLength) {
    return absl::InvalidArgumentError(
        absl::StrCat("host name is ", host.size(), " bytes long; the maximum is ", kMaxHostLength,
                     ": \"", absl::CHexEscape(View(host.substr(0, 32))), "...\""));
  }
  if (host.find('\0') != std::string_view::npos) {
    return absl::InvalidArgumentError(
        absl::StrCat("host name contains a NUL byte: \"", absl::CHexEscape(View(host)), "\""));
  }
  if (port < 1 || port > 65535) {
    return absl::InvalidArgumentError(absl::StrCat("port ", port, " is outside 1..65535 (host \"",
                                                   absl::CHexEscape(View(host)), "\")"));
  }
  return NodeKey(host, static_cast<uint16_t>(port), database);
}

NodeKey::NodeKey(std::string_view host, uint16_t port, uint32_t database)
    : padded_host_(host),
      host_len_(static_cast<uint16_t>(host.size())),
      port_(port),
      database_(database),
      hash_(KeyHash(host, port, database)),
      node_hash_(NodeHash(host, port)),
      id_(next_id.fetch_add(2, std::memory_order_relaxed)) {
  padded_host_.resize((host.size() + 7) / 8 * 8, '\0');
}

std::string NodeKey::ToString() const {
  return absl::StrCat(View(host()), ":", port_, "/", database_);
}

std::string NodeKey::NodeName() const { return absl::StrCat(View(host()), ":", port_); }

std::strong_ordering operator<=>(const NodeKey& a, const NodeKey& b) {
  if (auto c = a.host().compare(b.host()); c != 0) {
    return c < 0 ? std::strong_ordering::less : std::strong_ordering::greater;
  }
  if (auto c = a.port_ <=> b.port_; c != 0) return c;
  return a.database_ <=> b.database_;
}

}  // namespace connthrottle

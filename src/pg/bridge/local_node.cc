// local_node.cc — local-node detection: connthrottle.local_node, or DNS and
// this machine's interface addresses.

#include "pg/bridge/internal/local_node.h"

#include <arpa/inet.h>
#include <ifaddrs.h>
#include <netdb.h>
#include <netinet/in.h>
#include <sys/socket.h>

#include <cstring>
#include <string>
#include <string_view>

#include "absl/container/flat_hash_map.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "pg/bridge/internal/lease_limit.h"
#include "pg/bridge/internal/outcome.h"
#include "pg/bridge/internal/settings.h"

namespace connthrottle::pg {
namespace {

constexpr size_t kMaxCachedHosts = 256;

// Whether `a` is a loopback address or the address of one of `interfaces`.
bool AddressIsThisMachine(const addrinfo* a, const ifaddrs* interfaces) {
  if (a->ai_family == AF_INET) {
    const auto* in = reinterpret_cast<const sockaddr_in*>(a->ai_addr);
    if ((ntohl(in->sin_addr.s_addr) >> 24) == 127) return true;
  } else if (a->ai_family == AF_INET6) {
    const auto* in6 = reinterpret_cast<const sockaddr_in6*>(a->ai_addr);
    if (IN6_IS_ADDR_LOOPBACK(&in6->sin6_addr)) return true;
  }
  for (const ifaddrs* i = interfaces; i != nullptr; i = i->ifa_next) {
    if (i->ifa_addr == nullptr || i->ifa_addr->sa_family != a->ai_family) continue;
    if (a->ai_family == AF_INET) {
      if (reinterpret_cast<const sockaddr_in*>(i->ifa_addr)->sin_addr.s_addr ==
          reinterpret_cast<const sockaddr_in*>(a->ai_addr)->sin_addr.s_addr) {
        return true;
      }
    } else if (a->ai_family == AF_INET6) {
      if (std::memcmp(&reinterpret_cast<const sockaddr_in6*>(i->ifa_addr)->sin6_addr,
                      &reinterpret_cast<const sockaddr_in6*>(a->ai_addr)->sin6_addr,
                      sizeof(in6_addr)) == 0) {
        return true;
      }
    }
  }
  return false;
}

// Whether `host` resolves to an address of this machine (false when it
// does not resolve).
bool ResolvesToThisMachine(const std::string& host) {
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  addrinfo* resolved = nullptr;
  if (getaddrinfo(host.c_str(), nullptr, &hints, &resolved) != 0) return false;
  ifaddrs* interfaces = nullptr;
  getifaddrs(&interfaces);
  bool local = false;
  for (addrinfo* a = resolved; a != nullptr && !local; a = a->ai_next) {
    local = AddressIsThisMachine(a, interfaces);
  }
  if (interfaces != nullptr) freeifaddrs(interfaces);
  freeaddrinfo(resolved);
  return local;
}

// Whether `host` names this machine: localhost, a Unix-socket directory, or a
// name whose addresses include a loopback address or one of this machine's
// interface addresses. Cached per host for the life of the backend (at most
// kMaxCachedHosts of them).
bool HostIsThisMachine(const std::string& host) {
  static auto* cache = new absl::flat_hash_map<std::string, bool>();
  if (auto it = cache->find(host); it != cache->end()) return it->second;
  const bool local =
      host == "localhost" || (!host.empty() && host[0] == '/') || ResolvesToThisMachine(host);
  // Bounded: the hosts asked about are catalog nodes (or a superuser's),
  // but a backend lives long.
  if (cache->size() >= kMaxCachedHosts) cache->clear();
  cache->emplace(host, local);
  return local;
}

}  // namespace

absl::StatusOr<bool> IsLocal(const NodeKey& key, const Settings& settings) {
  std::string_view spec = settings.local_node == nullptr ? "" : settings.local_node;
  if (spec == "none") return false;
  if (spec.empty()) {
    return key.port() == settings.server_port && HostIsThisMachine(std::string(key.host()));
  }
  // "host:port": the last ':' separates them, so bracket-less IPv6 hosts work.
  size_t colon = spec.rfind(':');
  int port = 0;
  if (colon == std::string_view::npos ||
      !absl::SimpleAtoi(absl::string_view(spec.data() + colon + 1, spec.size() - colon - 1),
                        &port)) {
    return absl::InvalidArgumentError(absl::StrCat("connthrottle.local_node \"", std::string(spec),
                                                   "\" is not '', 'none' or 'host:port'"));
  }
  return key.port() == port && key.host() == spec.substr(0, colon);
}

absl::StatusOr<Limit> LimitFor(const NodeKey& key, const Settings& settings,
                               int active_client_backends) {
  absl::StatusOr<bool> local = IsLocal(key, settings);
  if (!local.ok()) return local.status();
  return WithLease(Limit::ForNode(PoolLimitsOf(settings), *local, active_client_backends),
                   std::string(key.host()), key.port(), *local);
}

Outcome IsLocalNode(const char* host, int port, const Settings& settings, bool* local) {
  return Guard([&] {
    *local = false;
    absl::StatusOr<NodeKey> key = NodeKey::Create(host, port, 0);
    if (!key.ok()) return FromStatus(key.status());
    absl::StatusOr<bool> is_local = IsLocal(*key, settings);
    if (!is_local.ok()) return FromStatus(is_local.status());
    *local = *is_local;
    return Outcome{};
  });
}

}  // namespace connthrottle::pg

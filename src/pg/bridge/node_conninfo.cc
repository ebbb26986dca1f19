// node_conninfo.cc — the allow-list of connthrottle.node_conninfo's keywords.

#include "pg/bridge/node_conninfo.h"

#include <string_view>

namespace connthrottle::pg {

bool NodeConninfoKeywordAllowed(const char* keyword) {
  static constexpr std::string_view kAllowed[] = {
      "application_name",
      "channel_binding",
      "connect_timeout",
      "gssencmode",
      "keepalives",
      "keepalives_count",
      "keepalives_idle",
      "keepalives_interval",
      "krbsrvname",
      "ssl_max_protocol_version",
      "ssl_min_protocol_version",
      "sslcert",
      "sslcompression",
      "sslcrl",
      "sslcrldir",
      "sslkey",
      "sslmode",
      "sslrootcert",
      "sslsni",
      "target_session_attrs",
      "tcp_user_timeout",
  };
  if (keyword == nullptr) return false;
  for (std::string_view allowed : kAllowed) {
    if (allowed == keyword) return true;
  }
  return false;
}

}  // namespace connthrottle::pg

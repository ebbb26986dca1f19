// Real PostgreSQL 15 servers for tests, the stress driver and the demo: each
// LocalServer is an initdb'd data directory under a temporary root, started
// with pg_ctl on a free 127.0.0.1 port (plus a Unix socket in its directory).
//
// PostgreSQL refuses to run as root. When the calling process is root, every
// server command runs as the unprivileged user ServerUser() ("connthrottle",
// created by scripts/install-deps.sh, or here with useradd if missing), and
// the directories are given to that user.
//
// A LocalServer stops its server and removes its directory when destroyed.
// Not thread-safe; servers are independent of each other.

#ifndef CONNTHROTTLE_TESTS_TESTING_LOCAL_SERVER_H_
#define CONNTHROTTLE_TESTS_TESTING_LOCAL_SERVER_H_

#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "tests/testing/pg_client.h"

namespace connthrottle::cluster {

struct ServerConfig {
  std::string name = "server";  // directory name and log prefix
  int max_connections = 100;
  bool preload_connthrottle = false;
  // Further postgresql.conf settings, as name = value (values quoted by the caller).
  std::vector<std::pair<std::string, std::string>> settings;
};

// The OS user servers run as when this process is root.
const std::string& ServerUser();

// A temporary directory owned by the server user; removed by RemoveTree.
absl::StatusOr<std::string> MakeServerRoot(const std::string& prefix);
void RemoveTree(const std::string& path);

class LocalServer {
 public:
  // initdb + start under `root` (a directory from MakeServerRoot).
  static absl::StatusOr<std::unique_ptr<LocalServer>> Start(const std::string& root,
                                                            ServerConfig config);
  LocalServer(const LocalServer&) = delete;
  LocalServer& operator=(const LocalServer&) = delete;
  ~LocalServer();

  const std::string& name() const { return config_.name; }
  const std::string& host() const { return host_; }  // "127.0.0.1"
  int port() const { return port_; }
  const std::string& data_dir() const { return data_dir_; }
  const std::string& log_file() const { return log_file_; }
  bool running() const { return running_; }

  // Parameters to connect as the superuser "postgres" over TCP.
  ConnParams Params(const std::string& database = "postgres") const;
  absl::StatusOr<std::unique_ptr<PgClient>> Connect(const std::string& database = "postgres") const;
  // Runs SQL on a fresh connection.
  absl::StatusOr<QueryResult> Query(const std::string& sql,
                                    const std::string& database = "postgres") const;

  // Stops (fast shutdown) / starts again on the same port.
  absl::Status Stop();
  absl::Status StartAgain();
  // Sets `name = value` (value as SQL literal text) with ALTER SYSTEM and reloads.
  absl::Status SetAndReload(const std::string& name, const std::string& value);
  absl::Status Reload();

 private:
  LocalServer(ServerConfig config, std::string data_dir, std::string log_file, int port)
      : config_(std::move(config)),
        data_dir_(std::move(data_dir)),
        log_file_(std::move(log_file)),
        port_(port) {}
  absl::Status PgCtl(const std::vector<std::string>& args);

  ServerConfig config_;
  std::string data_dir_;
  std::string log_file_;
  std::string host_ = "127.0.0.1";
  int port_;
  bool running_ = false;
};

// Runs a program (argv[0] is a path) as the server user when root, else as
// ourselves; its stdout and stderr are appended to `log`. OK when it exits 0.
absl::Status RunAsServerUser(const std::vector<std::string>& argv, const std::string& log);

// The directory of PostgreSQL's programs (pg_config --bindir).
const std::string& PgBinDir();

}  // namespace connthrottle::cluster

#endif  // CONNTHROTTLE_TESTS_TESTING_LOCAL_SERVER_H_

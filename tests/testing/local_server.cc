#include "tests/testing/local_server.h"

#include <fcntl.h>
#include <grp.h>
#include <netinet/in.h>
#include <pwd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"

#ifndef CONNTHROTTLE_PG_BINDIR
#define CONNTHROTTLE_PG_BINDIR "/usr/lib/postgresql/15/bin"
#endif

namespace connthrottle::cluster {
namespace {

bool IsRoot() { return geteuid() == 0; }

// uid/gid of the server user, creating the user when root and it is missing.
absl::StatusOr<std::pair<uid_t, gid_t>> ServerIds() {
  const std::string& user = ServerUser();
  passwd* pw = getpwnam(user.c_str());
  if (pw == nullptr && IsRoot()) {
    std::string command = absl::StrCat(
        "useradd --system --no-create-home --shell /usr/sbin/nologin ", user, " >/dev/null 2>&1");
    if (std::system(command.c_str()) != 0 && getpwnam(user.c_str()) == nullptr) {
      return absl::FailedPreconditionError(
          absl::StrCat("cannot create the unprivileged user '", user,
                       "' that PostgreSQL servers run as (run scripts/install-deps.sh as root)"));
    }
    pw = getpwnam(user.c_str());
  }
  if (pw == nullptr) {
    return absl::FailedPreconditionError(absl::StrCat("no user '", user, "'"));
  }
  return std::make_pair(pw->pw_uid, pw->pw_gid);
}

absl::Status GiveToServerUser(const std::string& path) {
  if (!IsRoot()) return absl::OkStatus();
  absl::StatusOr<std::pair<uid_t, gid_t>> ids = ServerIds();
  if (!ids.ok()) return ids.status();
  if (chown(path.c_str(), ids->first, ids->second) != 0) {
    return absl::InternalError(absl::StrCat("chown ", path, ": ", strerror(errno)));
  }
  return absl::OkStatus();
}

absl::StatusOr<int> FreePort() {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  if (fd < 0) return absl::InternalError(absl::StrCat("socket: ", strerror(errno)));
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  addr.sin_port = 0;
  socklen_t len = sizeof(addr);
  if (bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0 ||
      getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len) != 0) {
    close(fd);
    return absl::InternalError(absl::StrCat("bind: ", strerror(errno)));
  }
  int port = ntohs(addr.sin_port);
  close(fd);
  return port;
}

std::string Tail(const std::string& path, size_t bytes = 1500) {
  std::ifstream in(path);
  std::string all((std::istreambuf_iterator<char>(in)), {});
  return all.size() > bytes ? all.substr(all.size() - bytes) : all;
}

}  // namespace

const std::string& ServerUser() {
  static const std::string* user = new std::string("connthrottle");
  return *user;
}

const std::string& PgBinDir() {
  static const std::string* dir = [] {
    const char* env = std::getenv("CONNTHROTTLE_PG_BINDIR");
    return new std::string(env != nullptr && env[0] != '\0' ? env : CONNTHROTTLE_PG_BINDIR);
  }();
  return *dir;
}

absl::StatusOr<std::string> MakeServerRoot(const std::string& prefix) {
  std::string pattern = absl::StrCat("/tmp/", prefix, "XXXXXX");
  std::vector<char> buf(pattern.begin(), pattern.end());
  buf.push_back('\0');
  if (mkdtemp(buf.data()) == nullptr) {
    return absl::InternalError(absl::StrCat("mkdtemp ", pattern, ": ", strerror(errno)));
  }
  std::string root(buf.data());
  if (absl::Status s = GiveToServerUser(root); !s.ok()) return s;
  chmod(root.c_str(), 0755);
  return root;
}

void RemoveTree(const std::string& path) {
  std::error_code ignored;
  std::filesystem::remove_all(path, ignored);
}

absl::Status RunAsServerUser(const std::vector<std::string>& argv, const std::string& log) {
  std::pair<uid_t, gid_t> ids{getuid(), getgid()};
  if (IsRoot()) {
    absl::StatusOr<std::pair<uid_t, gid_t>> server = ServerIds();
    if (!server.ok()) return server.status();
    ids = *server;
  }
  // Create the log as the caller, then hand it over, so both can append.
  int fd = open(log.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
  if (fd < 0) return absl::InternalError(absl::StrCat("open ", log, ": ", strerror(errno)));
  close(fd);
  if (IsRoot() && chown(log.c_str(), ids.first, ids.second) != 0) {
    return absl::InternalError(absl::StrCat("chown ", log, ": ", strerror(errno)));
  }
  std::vector<char*> args;
  for (const std::string& a : argv) args.push_back(const_cast<char*>(a.c_str()));
  args.push_back(nullptr);
  pid_t pid = fork();
  if (pid < 0) return absl::InternalError(absl::StrCat("fork: ", strerror(errno)));
  if (pid == 0) {
    int out = open(log.c_str(), O_WRONLY | O_APPEND);
    if (out >= 0) {
      dup2(out, 1);
      dup2(out, 2);
    }
    int devnull = open("/dev/null", O_RDONLY);
    if (devnull >= 0) dup2(devnull, 0);
    if (IsRoot() &&
        (setgroups(0, nullptr) != 0 || setgid(ids.second) != 0 || setuid(ids.first) != 0)) {
      _exit(126);
    }
    if (chdir("/tmp") != 0) _exit(126);
    execv(args[0], args.data());
    _exit(127);
  }
  int status = 0;
  while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {
  }
  if (WIFEXITED(status) && WEXITSTATUS(status) == 0) return absl::OkStatus();
  return absl::InternalError(absl::StrCat(absl::StrJoin(argv, " "), " failed (status ", status,
                                          "); log ", log, ":\n", Tail(log)));
}

absl::StatusOr<std::unique_ptr<LocalServer>> LocalServer::Start(const std::string& root,
                                                                ServerConfig config) {
  const std::string dir = absl::StrCat(root, "/", config.name);
  std::error_code ec;
  std::filesystem::create_directories(dir, ec);
  if (ec) return absl::InternalError(absl::StrCat("mkdir ", dir, ": ", ec.message()));
  if (absl::Status s = GiveToServerUser(dir); !s.ok()) return s;
  const std::string data = absl::StrCat(dir, "/data");
  const std::string log = absl::StrCat(dir, "/server.log");
  if (absl::Status s =
          RunAsServerUser({absl::StrCat(PgBinDir(), "/initdb"), "-D", data, "-A", "trust", "-U",
                           "postgres", "-E", "UTF8", "--no-sync", "--no-instructions"},
                          log);
      !s.ok()) {
    return s;
  }
  {
    std::ofstream conf(absl::StrCat(data, "/postgresql.conf"), std::ios::app);
    conf << "\n# connthrottle test server\n"
         << "listen_addresses = '127.0.0.1'\n"
         << "unix_socket_directories = '" << dir << "'\n"
         << "max_connections = " << config.max_connections << "\n"
         << "fsync = off\nsynchronous_commit = off\nfull_page_writes = off\n"
         << "shared_buffers = '32MB'\n"
         << "log_line_prefix = '%m [%p] " << config.name << " '\n";
    if (config.preload_connthrottle) conf << "shared_preload_libraries = 'connthrottle'\n";
    for (const auto& [name, value] : config.settings) conf << name << " = " << value << "\n";
  }
  // A port is free when checked, but another process could take it before
  // the server binds it: try a few.
  absl::Status last;
  for (int attempt = 0; attempt < 5; ++attempt) {
    absl::StatusOr<int> port = FreePort();
    if (!port.ok()) return port.status();
    {
      std::ofstream conf(absl::StrCat(data, "/postgresql.conf"), std::ios::app);
      conf << "port = " << *port << "\n";
    }
    auto server =
        std::unique_ptr<LocalServer>(new LocalServer(std::move(config), data, log, *port));
    last = server->StartAgain();
    if (last.ok()) return server;
    config = server->config_;
  }
  return last;
}

LocalServer::~LocalServer() {
  if (running_) (void)Stop();
  RemoveTree(std::filesystem::path(data_dir_).parent_path().string());
}

absl::Status LocalServer::PgCtl(const std::vector<std::string>& args) {
  std::vector<std::string> argv = {absl::StrCat(PgBinDir(), "/pg_ctl"), "-D", data_dir_};
  argv.insert(argv.end(), args.begin(), args.end());
  return RunAsServerUser(argv, log_file_);
}

absl::Status LocalServer::StartAgain() {
  absl::Status s = PgCtl({"-l", log_file_, "-w", "-t", "60", "start"});
  running_ = s.ok();
  return s;
}

absl::Status LocalServer::Stop() {
  absl::Status s = PgCtl({"-m", "fast", "-w", "-t", "60", "stop"});
  if (s.ok()) running_ = false;
  return s;
}

absl::Status LocalServer::Reload() { return PgCtl({"reload"}); }

absl::Status LocalServer::SetAndReload(const std::string& name, const std::string& value) {
  absl::StatusOr<QueryResult> r = Query(absl::StrCat("ALTER SYSTEM SET ", name, " = ", value));
  if (!r.ok()) return r.status();
  r = Query("SELECT pg_reload_conf()");
  return r.status();
}

ConnParams LocalServer::Params(const std::string& database) const {
  ConnParams p;
  p.Set("host", host_)
      .Set("port", std::to_string(port_))
      .Set("dbname", database)
      .Set("user", "postgres")
      .Set("connect_timeout", "10")
      .Set("application_name", "connthrottle-test");
  return p;
}

absl::StatusOr<std::unique_ptr<PgClient>> LocalServer::Connect(const std::string& database) const {
  return PgClient::Connect(Params(database));
}

absl::StatusOr<QueryResult> LocalServer::Query(const std::string& sql,
                                               const std::string& database) const {
  absl::StatusOr<std::unique_ptr<PgClient>> client = Connect(database);
  if (!client.ok()) return client.status();
  return (*client)->Query(sql);
}

}  // namespace connthrottle::cluster

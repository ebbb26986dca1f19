// The fault proxy (tests/testing/fault_proxy.h) in front of a real PostgreSQL
// 15 server: it relays libpq connections, tells lease connections from data
// connections by their startup packet, and stalls, drops and refuses them as
// told. One plain server (no extension) is shared by every case; each case has
// a proxy of its own.
//
// Cases synchronise on conditions with deadlines (the proxy's counters, the
// server's pg_stat_activity, a query's end). Where a case checks that
// something did NOT happen (a stalled query has not returned), it checks at a
// point where it could only have happened through a fault in the proxy, so a
// slow machine can make the check weaker, never make it fail.

#include "tests/testing/fault_proxy.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/testing/child_process.h"
#include "tests/testing/local_server.h"
#include "tests/testing/pg_client.h"
#include "tests/testing/pg_test_support.h"

namespace connthrottle::testing {
namespace {

using ::connthrottle::cluster::AsyncQuery;
using ::connthrottle::cluster::LocalServer;
using ::connthrottle::cluster::PgClient;
using ::connthrottle::cluster::PollUntil;
using ::connthrottle::cluster::QueryResult;
using ::connthrottle::cluster::ServerConfig;
using ::connthrottle::cluster::SqlState;
using ::testing::HasSubstr;
using Kind = FaultProxy::Kind;
using Stats = FaultProxy::Stats;
using Target = FaultProxy::Target;

constexpr char kLeaseOptions[] = "-c connthrottle.connection_kind=lease";
constexpr absl::Duration kDeadline = absl::Seconds(30);
// How long a case looks for something that must not happen. Only ever the
// "not yet" direction: a longer window makes the check stronger, not flakier.
constexpr absl::Duration kNotYet = absl::Milliseconds(200);

std::chrono::steady_clock::duration Chrono(absl::Duration d) {
  return absl::ToChronoMilliseconds(d);
}

// ---- the classifier, on crafted startup packets (no server) ----

// A protocol 3.0 StartupMessage with these parameters, in this order.
std::string StartupPacket(const std::vector<std::pair<std::string, std::string>>& params) {
  std::string body;
  for (const auto& [name, value] : params)
    absl::StrAppend(&body, name, std::string(1, '\0'), value, std::string(1, '\0'));
  body.push_back('\0');
  const uint32_t length = htonl(static_cast<uint32_t>(8 + body.size()));
  const uint32_t version = htonl(3u << 16);
  std::string packet(reinterpret_cast<const char*>(&length), 4);
  packet.append(reinterpret_cast<const char*>(&version), 4);
  return packet + body;
}

std::string CodePacket(uint32_t code, size_t extra = 0) {
  const uint32_t length = htonl(static_cast<uint32_t>(8 + extra));
  const uint32_t word = htonl(code);
  std::string packet(reinterpret_cast<const char*>(&length), 4);
  packet.append(reinterpret_cast<const char*>(&word), 4);
  packet.append(extra, '\x01');
  return packet;
}

Kind ClassifyOptions(const std::string& options) {
  return FaultProxy::Classify(
      StartupPacket({{"user", "postgres"}, {"database", "postgres"}, {"options", options}}));
}

TEST(FaultProxyClassifyTest, LeaseOptionMakesALeaseConnection) {
  EXPECT_EQ(ClassifyOptions("-c connthrottle.connection_kind=lease"), Kind::kLease);
  EXPECT_EQ(ClassifyOptions("-cconnthrottle.connection_kind=lease"), Kind::kLease);
  EXPECT_EQ(ClassifyOptions("--connthrottle.connection_kind=lease"), Kind::kLease);
  EXPECT_EQ(ClassifyOptions("--connthrottle.connection-kind=lease"), Kind::kLease);
  EXPECT_EQ(ClassifyOptions("  -c connthrottle.coordinator=c1/42   -c "
                            "connthrottle.connection_kind=lease  "),
            Kind::kLease);
  EXPECT_EQ(ClassifyOptions("-c ConnThrottle.Connection_Kind=lease"), Kind::kLease);
  // A startup parameter of that name is a setting too.
  EXPECT_EQ(FaultProxy::Classify(
                StartupPacket({{"user", "postgres"}, {"connthrottle.connection_kind", "lease"}})),
            Kind::kLease);
}

TEST(FaultProxyClassifyTest, AnythingElseIsData) {
  EXPECT_EQ(FaultProxy::Classify(StartupPacket({{"user", "postgres"}})), Kind::kData);
  EXPECT_EQ(ClassifyOptions(""), Kind::kData);
  EXPECT_EQ(ClassifyOptions("-c connthrottle.coordinator=c1/42"), Kind::kData);
  EXPECT_EQ(ClassifyOptions("-c connthrottle.connection_kind=data"), Kind::kData);
  EXPECT_EQ(ClassifyOptions("-c connthrottle.connection_kind=leased"), Kind::kData);
  // The last setting wins, as on the server.
  EXPECT_EQ(ClassifyOptions("-c connthrottle.connection_kind=lease "
                            "-c connthrottle.connection_kind=data"),
            Kind::kData);
  // An escaped space keeps the text inside another setting's value.
  EXPECT_EQ(ClassifyOptions("-c application_name=x\\ -c\\ connthrottle.connection_kind=lease"),
            Kind::kData);
  // Not a switch: a bare word.
  EXPECT_EQ(ClassifyOptions("connthrottle.connection_kind=lease"), Kind::kData);
  // The text in another parameter.
  EXPECT_EQ(FaultProxy::Classify(
                StartupPacket({{"user", "postgres"}, {"application_name", kLeaseOptions}})),
            Kind::kData);
  // A startup parameter overrides `options`.
  EXPECT_EQ(FaultProxy::Classify(StartupPacket(
                {{"options", kLeaseOptions}, {"connthrottle.connection_kind", "data"}})),
            Kind::kData);
}

TEST(FaultProxyClassifyTest, CancelRequestsAndMalformedPacketsAreOther) {
  EXPECT_EQ(FaultProxy::Classify(CodePacket(80877102, 8)), Kind::kOther);  // CancelRequest
  EXPECT_EQ(FaultProxy::Classify(CodePacket(2u << 16, 8)), Kind::kOther);  // protocol 2
  EXPECT_EQ(FaultProxy::Classify(""), Kind::kOther);
  std::string packet = StartupPacket({{"options", kLeaseOptions}});
  EXPECT_EQ(FaultProxy::Classify(packet.substr(0, packet.size() - 1)), Kind::kOther);
  // A value without its terminating NUL (the length word agrees).
  std::string unterminated = CodePacket(3u << 16, 0) + std::string("user\0postgres", 13);
  const uint32_t length = htonl(static_cast<uint32_t>(unterminated.size()));
  unterminated.replace(0, 4, reinterpret_cast<const char*>(&length), 4);
  EXPECT_EQ(FaultProxy::Classify(unterminated), Kind::kOther);
}

TEST(FaultProxyStartTest, BadTargetsAreInvalidArguments) {
  for (int port : {0, -1, 65536}) {
    absl::StatusOr<std::unique_ptr<FaultProxy>> proxy = FaultProxy::Start("127.0.0.1", port);
    EXPECT_EQ(proxy.status().code(), absl::StatusCode::kInvalidArgument) << port;
  }
  absl::StatusOr<std::unique_ptr<FaultProxy>> proxy =
      FaultProxy::Start("no-such-host.invalid", 5432);
  EXPECT_EQ(proxy.status().code(), absl::StatusCode::kInvalidArgument) << proxy.status();
}

// ---- against a real server ----

// A PgClient::Connect on a thread of its own (a connect the proxy holds).
class AsyncConnect {
 public:
  explicit AsyncConnect(ConnParams params)
      : thread_([this, params = std::move(params)] {
          absl::StatusOr<std::unique_ptr<PgClient>> r = PgClient::Connect(params);
          absl::MutexLock lock(&mu_);
          result_ = std::move(r);
          done_ = true;
        }) {}
  AsyncConnect(const AsyncConnect&) = delete;
  AsyncConnect& operator=(const AsyncConnect&) = delete;
  ~AsyncConnect() { thread_.join(); }

  // Whether the connect returned within `timeout`.
  bool WaitDone(absl::Duration timeout) {
    absl::MutexLock lock(&mu_);
    return mu_.AwaitWithTimeout(absl::Condition(&done_), timeout);
  }
  // Valid once WaitDone returned true.
  absl::StatusOr<std::unique_ptr<PgClient>> Take() {
    absl::MutexLock lock(&mu_);
    return std::move(result_);
  }

 private:
  absl::Mutex mu_;
  bool done_ ABSL_GUARDED_BY(mu_) = false;
  absl::StatusOr<std::unique_ptr<PgClient>> result_ ABSL_GUARDED_BY(mu_) =
      absl::UnknownError("not finished");
  std::thread thread_;
};

class FaultProxyTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    absl::StatusOr<std::string> root = cluster::MakeServerRoot("ct-proxy");
    if (!root.ok()) {
      *startup_error_ = root.status().ToString();
      return;
    }
    *root_ = *root;
    absl::StatusOr<std::unique_ptr<LocalServer>> server =
        LocalServer::Start(*root_, ServerConfig{.name = "server",
                                                .max_connections = 40,
                                                .settings = {{"log_connections", "on"}}});
    if (!server.ok()) {
      *startup_error_ = server.status().ToString();
      return;
    }
    server_ = server->release();
  }

  static void TearDownTestSuite() {
    delete server_;
    server_ = nullptr;
    if (!root_->empty()) cluster::RemoveTree(*root_);
  }

  void SetUp() override {
    ASSERT_NE(server_, nullptr) << "the server did not start: " << *startup_error_;
    absl::StatusOr<std::unique_ptr<FaultProxy>> proxy =
        FaultProxy::Start(server_->host(), server_->port());
    ASSERT_TRUE(proxy.ok()) << proxy.status();
    proxy_ = *std::move(proxy);
    absl::StatusOr<std::unique_ptr<PgClient>> observer = server_->Connect();
    ASSERT_TRUE(observer.ok()) << observer.status();
    observer_ = *std::move(observer);
  }

  // No backend of this case's clients is left on the server.
  void TearDown() override {
    if (observer_ == nullptr) return;
    EXPECT_TRUE(PollUntil([&] { return Backends("fp-%") == 0; }))
        << "backends of proxied clients left on the server";
  }

  // Parameters for a client of `kind` (application_name `name`) through the
  // proxy.
  ConnParams Params(Kind kind, const std::string& name) const {
    ConnParams p = server_->Params();
    p.Set("port", std::to_string(proxy_->port())).Set("application_name", name);
    if (kind == Kind::kLease) p.Set("options", kLeaseOptions);
    return p;
  }
  std::unique_ptr<PgClient> MustConnect(Kind kind, const std::string& name) const {
    absl::StatusOr<std::unique_ptr<PgClient>> client = PgClient::Connect(Params(kind, name));
    EXPECT_TRUE(client.ok()) << client.status();
    return client.ok() ? *std::move(client) : nullptr;
  }

  // Server backends whose application_name is LIKE `pattern` (-1 on error).
  int Backends(const std::string& pattern, const std::string& extra = "") {
    absl::StatusOr<QueryResult> r = observer_->Query(
        absl::StrCat("SELECT count(*) FROM pg_stat_activity WHERE application_name LIKE $1", extra),
        {pattern});
    EXPECT_TRUE(r.ok()) << r.status();
    return r.ok() ? std::stoi(r->Value()) : -1;
  }
  // The state of the backend with this application_name ("" if none).
  std::string StateOf(const std::string& name) {
    absl::StatusOr<QueryResult> r = observer_->Query(
        "SELECT state || ': ' || query FROM pg_stat_activity WHERE application_name = $1", {name});
    EXPECT_TRUE(r.ok()) << r.status();
    return r.ok() ? r->Value() : "";
  }

  bool WaitStats(const std::function<bool(const Stats&)>& condition) {
    return proxy_->WaitFor(condition, kDeadline);
  }

  static inline LocalServer* server_ = nullptr;
  static inline std::string* root_ = new std::string;
  static inline std::string* startup_error_ = new std::string;

  std::unique_ptr<FaultProxy> proxy_;
  std::unique_ptr<PgClient> observer_;  // straight to the server
};

// Ends every fault when a case leaves its scope, before the clients and
// queries declared earlier are destroyed, so that none of them waits on a
// stalled connection when an assertion fails.
class HealOnExit {
 public:
  explicit HealOnExit(std::unique_ptr<FaultProxy>& proxy) : proxy_(proxy) {}
  ~HealOnExit() {
    if (proxy_ != nullptr) proxy_->Heal();
  }

 private:
  std::unique_ptr<FaultProxy>& proxy_;
};

TEST_F(FaultProxyTest, RelaysQueriesBothWays) {
  std::unique_ptr<PgClient> client = MustConnect(Kind::kData, "fp-data");
  ASSERT_NE(client, nullptr);
  absl::StatusOr<std::string> one = client->QueryValue("SELECT 1");
  ASSERT_TRUE(one.ok()) << one.status();
  EXPECT_EQ(*one, "1");
  // More than the proxy holds per direction (64 KiB), each way.
  const std::string big(3 << 20, 'x');
  absl::StatusOr<QueryResult> echoed = client->Query("SELECT length($1), md5($1)", {big});
  ASSERT_TRUE(echoed.ok()) << echoed.status();
  EXPECT_EQ(echoed->rows[0][0], std::to_string(big.size()));
  absl::StatusOr<QueryResult> direct =
      observer_->Query(absl::StrCat("SELECT md5(repeat('x', ", big.size(), "))"));
  ASSERT_TRUE(direct.ok()) << direct.status();
  EXPECT_EQ(echoed->rows[0][1], direct->Value());
  absl::StatusOr<std::string> returned =
      client->QueryValue(absl::StrCat("SELECT repeat('y', ", big.size(), ")"));
  ASSERT_TRUE(returned.ok()) << returned.status();
  EXPECT_EQ(*returned, std::string(big.size(), 'y'));

  const Stats s = proxy_->stats();
  EXPECT_EQ(s.accepted, 1);
  EXPECT_EQ(s.data.accepted, 1);
  EXPECT_EQ(s.data.open, 1);
  EXPECT_GT(s.data.bytes_to_server, static_cast<int64_t>(big.size()));
  EXPECT_GT(s.data.bytes_to_client, static_cast<int64_t>(big.size()));
  client.reset();
  EXPECT_TRUE(WaitStats([](const Stats& s) { return s.data.open == 0 && s.pending == 0; }));
}

TEST_F(FaultProxyTest, TellsLeaseConnectionsFromDataConnections) {
  std::unique_ptr<PgClient> lease = MustConnect(Kind::kLease, "fp-lease");
  std::unique_ptr<PgClient> data = MustConnect(Kind::kData, "fp-data");
  ASSERT_NE(lease, nullptr);
  ASSERT_NE(data, nullptr);
  // A plain server takes the setting as a placeholder (no extension here).
  absl::StatusOr<std::string> kind = lease->QueryValue("SHOW connthrottle.connection_kind");
  ASSERT_TRUE(kind.ok()) << kind.status();
  EXPECT_EQ(*kind, "lease");
  const Stats s = proxy_->stats();
  EXPECT_EQ(s.accepted, 2);
  EXPECT_EQ(s.lease.accepted, 1);
  EXPECT_EQ(s.lease.open, 1);
  EXPECT_EQ(s.data.accepted, 1);
  EXPECT_EQ(s.data.open, 1);
  EXPECT_EQ(s.other.accepted, 0);
  EXPECT_EQ(s.pending, 0);
  lease.reset();
  EXPECT_TRUE(WaitStats([](const Stats& s) { return s.lease.open == 0 && s.data.open == 1; }));
}

TEST_F(FaultProxyTest, AnswersEncryptionRequestsItself) {
  // libpq's default sslmode=prefer asks for SSL first and goes on without.
  ConnParams prefer = Params(Kind::kData, "fp-prefer");
  prefer.Set("sslmode", "prefer");
  absl::StatusOr<std::unique_ptr<PgClient>> client = PgClient::Connect(prefer);
  ASSERT_TRUE(client.ok()) << client.status();
  EXPECT_TRUE((*client)->QueryValue("SELECT 1").ok());
  EXPECT_GE(proxy_->stats().encryption_declined, 1);
  client->reset();

  ConnParams require = Params(Kind::kData, "fp-require");
  require.Set("sslmode", "require");
  client = PgClient::Connect(require);
  ASSERT_FALSE(client.ok());
  EXPECT_THAT(std::string(client.status().message()), HasSubstr("does not support SSL"));

  // By hand: GSSENCRequest, SSLRequest, then the StartupMessage, which the
  // server answers (trust: AuthenticationOk, 'R').
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  ASSERT_GE(fd, 0);
  const timeval timeout{.tv_sec = 30, .tv_usec = 0};
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, sizeof(timeout));
  sockaddr_in address{};
  address.sin_family = AF_INET;
  address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  address.sin_port = htons(static_cast<uint16_t>(proxy_->port()));
  ASSERT_EQ(connect(fd, reinterpret_cast<sockaddr*>(&address), sizeof(address)), 0);
  char answer = 0;
  for (uint32_t code : {80877104u, 80877103u}) {
    const std::string request = CodePacket(code);
    ASSERT_TRUE(WriteAll(fd, request.data(), request.size()));
    ASSERT_TRUE(ReadAll(fd, &answer, 1)) << code;
    EXPECT_EQ(answer, 'N') << code;
  }
  const std::string startup = StartupPacket({{"user", "postgres"},
                                             {"database", "postgres"},
                                             {"application_name", "fp-raw"},
                                             {"options", kLeaseOptions}});
  ASSERT_TRUE(WriteAll(fd, startup.data(), startup.size()));
  ASSERT_TRUE(ReadAll(fd, &answer, 1));
  EXPECT_EQ(answer, 'R');
  const Stats s = proxy_->stats();
  EXPECT_EQ(s.lease.accepted, 1);
  EXPECT_EQ(s.lease.bytes_to_server, static_cast<int64_t>(startup.size()))
      << "the StartupMessage is forwarded unchanged, the encryption requests not at all";
  close(fd);
}

TEST_F(FaultProxyTest, StallHoldsALeaseQueryWhileDataFlows) {
  std::unique_ptr<PgClient> lease = MustConnect(Kind::kLease, "fp-lease");
  std::unique_ptr<PgClient> data = MustConnect(Kind::kData, "fp-data");
  ASSERT_NE(lease, nullptr);
  ASSERT_NE(data, nullptr);
  ASSERT_TRUE(lease->QueryValue("SELECT 'before'").ok());
  proxy_->Stall(Target::kLease);
  const Stats stalled = proxy_->stats();
  AsyncQuery query(*lease, "SELECT 'lease went through'");
  HealOnExit heal(proxy_);

  // Data connections, open and new, are not stalled.
  absl::StatusOr<std::string> one = data->QueryValue("SELECT 1");
  ASSERT_TRUE(one.ok()) << one.status();
  std::unique_ptr<PgClient> data2 = MustConnect(Kind::kData, "fp-data2");
  ASSERT_NE(data2, nullptr);
  EXPECT_TRUE(data2->QueryValue("SELECT 2").ok());
  // Not yet: the lease query has not reached the server, nor returned.
  EXPECT_FALSE(query.WaitDone(Chrono(kNotYet)));
  EXPECT_EQ(StateOf("fp-lease"), "idle: SELECT 'before'");
  EXPECT_EQ(proxy_->stats().lease.bytes_to_server, stalled.lease.bytes_to_server);
  EXPECT_EQ(proxy_->stats().lease.bytes_to_client, stalled.lease.bytes_to_client);

  proxy_->Resume(Target::kLease);
  ASSERT_TRUE(query.WaitDone(Chrono(kDeadline))) << "the query stayed stalled after Resume";
  ASSERT_TRUE(query.result().ok()) << query.result().status();
  EXPECT_EQ(query.result()->Value(), "lease went through");
}

TEST_F(FaultProxyTest, StallHoldsAReplyInFlight) {
  std::unique_ptr<PgClient> lease = MustConnect(Kind::kLease, "fp-lease");
  ASSERT_NE(lease, nullptr);
  ASSERT_TRUE(observer_->Exec("SELECT pg_advisory_lock(28)").ok());
  AsyncQuery query(*lease, "SELECT 'reply', pg_advisory_lock(28), pg_advisory_unlock(28)");
  HealOnExit heal(proxy_);
  // The query is on the server, waiting for the lock.
  ASSERT_TRUE(PollUntil([&] {
    return Backends("fp-lease", " AND wait_event_type = 'Lock' AND state = 'active'") == 1;
  }));
  proxy_->Stall(Target::kAll);
  const Stats stalled = proxy_->stats();
  ASSERT_TRUE(observer_->Exec("SELECT pg_advisory_unlock(28)").ok());
  // The server has replied; the reply waits in the proxy's socket.
  ASSERT_TRUE(PollUntil([&] { return StateOf("fp-lease").rfind("idle", 0) == 0; }));
  EXPECT_FALSE(query.WaitDone(Chrono(kNotYet)));
  EXPECT_EQ(proxy_->stats().lease.bytes_to_client, stalled.lease.bytes_to_client);

  proxy_->Resume(Target::kAll);
  ASSERT_TRUE(query.WaitDone(Chrono(kDeadline)));
  ASSERT_TRUE(query.result().ok()) << query.result().status();
  EXPECT_EQ(query.result()->Value(), "reply");
  EXPECT_GT(proxy_->stats().lease.bytes_to_client, stalled.lease.bytes_to_client);
}

TEST_F(FaultProxyTest, StallHoldsNewLeaseConnections) {
  proxy_->Stall(Target::kLease);
  AsyncConnect connect(Params(Kind::kLease, "fp-lease"));
  HealOnExit heal(proxy_);
  // Accepted and classified, but the packet is held: the server has no
  // backend for it.
  ASSERT_TRUE(WaitStats([](const Stats& s) { return s.lease.accepted == 1; }));
  std::unique_ptr<PgClient> data = MustConnect(Kind::kData, "fp-data");
  ASSERT_NE(data, nullptr);
  EXPECT_FALSE(connect.WaitDone(kNotYet));
  EXPECT_EQ(Backends("fp-lease"), 0);
  EXPECT_EQ(proxy_->stats().lease.bytes_to_server, 0);

  proxy_->Resume(Target::kLease);
  ASSERT_TRUE(connect.WaitDone(kDeadline));
  absl::StatusOr<std::unique_ptr<PgClient>> lease = connect.Take();
  ASSERT_TRUE(lease.ok()) << lease.status();
  absl::StatusOr<std::string> kind = (*lease)->QueryValue("SHOW connthrottle.connection_kind");
  ASSERT_TRUE(kind.ok()) << kind.status();
  EXPECT_EQ(*kind, "lease");
}

TEST_F(FaultProxyTest, DropClosesDataConnectionsAndLeavesLeaseOnes) {
  std::unique_ptr<PgClient> lease = MustConnect(Kind::kLease, "fp-lease");
  std::unique_ptr<PgClient> data = MustConnect(Kind::kData, "fp-data");
  ASSERT_NE(lease, nullptr);
  ASSERT_NE(data, nullptr);
  ASSERT_TRUE(data->QueryValue("SELECT 1").ok());

  proxy_->Drop(Target::kData);
  Stats s = proxy_->stats();
  EXPECT_EQ(s.data.open, 0) << "Drop returned before closing";
  EXPECT_EQ(s.data.dropped, 1);
  EXPECT_EQ(s.lease.open, 1);
  absl::StatusOr<std::string> failed = data->QueryValue("SELECT 1");
  EXPECT_FALSE(failed.ok()) << "a query on a dropped connection succeeded";
  // The server saw its client go; the lease connection still works.
  EXPECT_TRUE(PollUntil([&] { return Backends("fp-data") == 0; }));
  absl::StatusOr<std::string> one = lease->QueryValue("SELECT 1");
  ASSERT_TRUE(one.ok()) << one.status();

  // A new data connection is closed after its startup packet, never reaching
  // the server; a new lease connection works.
  const int64_t relayed = proxy_->stats().data.bytes_to_server;
  absl::StatusOr<std::unique_ptr<PgClient>> refused =
      PgClient::Connect(Params(Kind::kData, "fp-data-new"));
  EXPECT_FALSE(refused.ok());
  s = proxy_->stats();
  EXPECT_GE(s.data.dropped, 2);
  EXPECT_EQ(s.data.bytes_to_server, relayed);
  std::unique_ptr<PgClient> lease2 = MustConnect(Kind::kLease, "fp-lease2");
  ASSERT_NE(lease2, nullptr);
  EXPECT_TRUE(lease2->QueryValue("SELECT 1").ok());

  proxy_->Resume(Target::kData);
  std::unique_ptr<PgClient> data2 = MustConnect(Kind::kData, "fp-data2");
  ASSERT_NE(data2, nullptr);
  EXPECT_TRUE(data2->QueryValue("SELECT 1").ok());
}

TEST_F(FaultProxyTest, DropAllClosesEveryConnection) {
  std::unique_ptr<PgClient> lease = MustConnect(Kind::kLease, "fp-lease");
  std::unique_ptr<PgClient> data = MustConnect(Kind::kData, "fp-data");
  ASSERT_NE(lease, nullptr);
  ASSERT_NE(data, nullptr);
  proxy_->Drop(Target::kAll);
  const Stats s = proxy_->stats();
  EXPECT_EQ(s.lease.open + s.data.open + s.other.open, 0);
  EXPECT_FALSE(lease->QueryValue("SELECT 1").ok());
  EXPECT_FALSE(data->QueryValue("SELECT 1").ok());
  proxy_->Heal();
  std::unique_ptr<PgClient> again = MustConnect(Kind::kLease, "fp-lease2");
  ASSERT_NE(again, nullptr);
  EXPECT_TRUE(again->QueryValue("SELECT 1").ok());
}

TEST_F(FaultProxyTest, RefuseClosesNewConnectionsAtAccept) {
  std::unique_ptr<PgClient> open = MustConnect(Kind::kData, "fp-open");
  ASSERT_NE(open, nullptr);
  proxy_->Refuse(true);
  absl::StatusOr<std::unique_ptr<PgClient>> refused =
      PgClient::Connect(Params(Kind::kLease, "fp-refused"));
  EXPECT_FALSE(refused.ok());
  const Stats s = proxy_->stats();
  EXPECT_GE(s.refused, 1);
  EXPECT_EQ(s.accepted, 1) << "a refused connection was accepted";
  EXPECT_EQ(s.lease.accepted, 0);
  // Open connections are left alone.
  EXPECT_TRUE(open->QueryValue("SELECT 1").ok());

  proxy_->Refuse(false);
  std::unique_ptr<PgClient> lease = MustConnect(Kind::kLease, "fp-lease");
  ASSERT_NE(lease, nullptr);
  EXPECT_TRUE(lease->QueryValue("SELECT 1").ok());
}

TEST_F(FaultProxyTest, RelaysCancelRequestsAsOther) {
  std::unique_ptr<PgClient> data = MustConnect(Kind::kData, "fp-data");
  ASSERT_NE(data, nullptr);
  AsyncQuery query(*data, "SELECT pg_sleep(600)");
  ASSERT_TRUE(PollUntil([&] {
    return Backends("fp-data",
                    " AND query LIKE '%pg_sleep%' "
                    "AND state = 'active'") == 1;
  }));
  absl::Status cancelled = data->Cancel();
  ASSERT_TRUE(cancelled.ok()) << cancelled;
  ASSERT_TRUE(query.WaitDone(Chrono(kDeadline)));
  EXPECT_EQ(SqlState(query.result().status()), "57014") << query.result().status();
  const Stats s = proxy_->stats();
  EXPECT_EQ(s.other.accepted, 1);
  EXPECT_EQ(s.data.accepted, 1);
}

TEST_F(FaultProxyTest, DestructionClosesEverything) {
  std::unique_ptr<PgClient> lease = MustConnect(Kind::kLease, "fp-lease");
  std::unique_ptr<PgClient> data = MustConnect(Kind::kData, "fp-data");
  ASSERT_NE(lease, nullptr);
  ASSERT_NE(data, nullptr);
  proxy_->Stall(Target::kLease);
  AsyncQuery query(*lease, "SELECT 1");
  HealOnExit heal(proxy_);
  const int port = proxy_->port();
  proxy_.reset();
  ASSERT_TRUE(query.WaitDone(Chrono(kDeadline))) << "a stalled query outlived the proxy";
  EXPECT_FALSE(query.result().ok());
  EXPECT_FALSE(data->QueryValue("SELECT 1").ok());
  ConnParams gone = server_->Params();
  gone.Set("port", std::to_string(port));
  EXPECT_FALSE(PgClient::Connect(gone).ok()) << "the port still listens";
}

TEST_F(FaultProxyTest, UnreachableServerClosesTheClient) {
  // A port nobody listens on: one a proxy listened on, until it was destroyed.
  absl::StatusOr<std::unique_ptr<FaultProxy>> probe = FaultProxy::Start("127.0.0.1", 1);
  ASSERT_TRUE(probe.ok()) << probe.status();
  const int unused = (*probe)->port();
  probe->reset();
  absl::StatusOr<std::unique_ptr<FaultProxy>> proxy = FaultProxy::Start("127.0.0.1", unused);
  ASSERT_TRUE(proxy.ok()) << proxy.status();
  ConnParams p = Params(Kind::kData, "fp-nowhere");
  p.Set("port", std::to_string((*proxy)->port()));
  EXPECT_FALSE(PgClient::Connect(p).ok());
  EXPECT_GE((*proxy)->stats().server_connect_failed, 1);
  EXPECT_EQ((*proxy)->stats().data.open, 0);
}

}  // namespace
}  // namespace connthrottle::testing

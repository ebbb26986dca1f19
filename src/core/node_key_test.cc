#include "connthrottle/node_key.h"

#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <set>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/testing/child_process.h"

namespace connthrottle {
namespace {

using ::connthrottle::testing::ReadAll;
using ::connthrottle::testing::WriteAll;
using ::testing::HasSubstr;

constexpr char kHashChildEnv[] = "CONNTHROTTLE_NODE_KEY_TEST_HASH_CHILD";

// What a process reports: NodeKey::hash() of a fixed key and, for contrast,
// the address of a global variable, which is what absl::Hash seeds itself
// with (so absl::Hash differs between two processes exactly when it does).
struct Hashes {
  uint64_t node_key = 0;
  uint64_t node = 0;
  uint64_t seed_address = 0;
};

const int kSeedLike = 0;

Hashes ComputeHashes() {
  absl::StatusOr<NodeKey> key = NodeKey::Create("worker-1.example", 6432, 16384);
  if (!key.ok()) std::abort();
  return Hashes{key->hash(), key->node_hash(),
                static_cast<uint64_t>(reinterpret_cast<uintptr_t>(&kSeedLike))};
}

// When this binary is re-executed by HashIsTheSameInAFreshlyExecutedProcess,
// it writes its hashes to stdout and exits before main() runs any test.
[[maybe_unused]] const bool kRunningAsHashChild = [] {
  if (std::getenv(kHashChildEnv) == nullptr) return false;
  Hashes h = ComputeHashes();
  _exit(WriteAll(STDOUT_FILENO, &h, sizeof(h)) ? 0 : 1);
}();

// Runs `child` (which writes to the given fd and returns an exit code) in a
// forked process and returns what it wrote.
template <typename Child>
Hashes HashesFromChild(Child child) {
  int fds[2];
  if (pipe(fds) != 0) {
    ADD_FAILURE() << "pipe: " << errno;
    return {};
  }
  pid_t pid = fork();
  if (pid < 0) {
    ADD_FAILURE() << "fork: " << errno;
    return {};
  }
  if (pid == 0) {
    close(fds[0]);
    _exit(child(fds[1]));
  }
  close(fds[1]);
  Hashes h;
  EXPECT_TRUE(ReadAll(fds[0], &h, sizeof(h))) << "the child wrote no hashes";
  close(fds[0]);
  int status = 0;
  EXPECT_EQ(waitpid(pid, &status, 0), pid);
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << "child status " << status;
  return h;
}

absl::Status CreateStatus(std::string_view host, int port, uint32_t database = 1) {
  return NodeKey::Create(host, port, database).status();
}

NodeKey MustCreate(std::string_view host, int port, uint32_t database) {
  absl::StatusOr<NodeKey> key = NodeKey::Create(host, port, database);
  EXPECT_TRUE(key.ok()) << key.status();
  if (!key.ok()) std::abort();
  return *key;
}

// ---- Create: accepted keys ----------------------------------------------

TEST(NodeKeyCreateTest, AcceptsAValidKeyAndKeepsItsParts) {
  absl::StatusOr<NodeKey> key = NodeKey::Create("worker-1", 5432, 16384);
  ASSERT_TRUE(key.ok()) << key.status();
  EXPECT_EQ(key->host(), "worker-1");
  EXPECT_EQ(key->port(), 5432);
  EXPECT_EQ(key->database(), 16384u);
}

TEST(NodeKeyCreateTest, AcceptsIpAddressesAsHosts) {
  EXPECT_TRUE(NodeKey::Create("10.0.0.7", 5432, 1).ok());
  EXPECT_TRUE(NodeKey::Create("::1", 5432, 1).ok());
}

TEST(NodeKeyCreateTest, AcceptsDatabaseZeroAndTheLargestDatabaseId) {
  EXPECT_TRUE(NodeKey::Create("w", 5432, 0).ok());
  EXPECT_TRUE(NodeKey::Create("w", 5432, UINT32_MAX).ok());
}

TEST(NodeKeyCreateTest, AcceptsAHostOfExactlyTheMaximumLength) {
  std::string host(NodeKey::kMaxHostLength, 'h');
  ASSERT_EQ(host.size(), 255u);
  absl::StatusOr<NodeKey> key = NodeKey::Create(host, 5432, 1);
  ASSERT_TRUE(key.ok()) << key.status();
  EXPECT_EQ(key->host(), host);
}

TEST(NodeKeyCreateTest, AcceptsPortOne) { EXPECT_TRUE(NodeKey::Create("w", 1, 1).ok()); }

TEST(NodeKeyCreateTest, AcceptsPort65535) { EXPECT_TRUE(NodeKey::Create("w", 65535, 1).ok()); }

// ---- Create: refused keys -----------------------------------------------

TEST(NodeKeyCreateTest, RefusesAnEmptyHost) {
  absl::Status s = CreateStatus("", 5432);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(s.message()), HasSubstr("empty"));
}

TEST(NodeKeyCreateTest, RefusesAHostOneByteTooLongNamingItsLength) {
  std::string host(NodeKey::kMaxHostLength + 1, 'h');
  absl::Status s = CreateStatus(host, 5432);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(s.message()), HasSubstr("256"));
  EXPECT_THAT(std::string(s.message()), HasSubstr("255"));
}

TEST(NodeKeyCreateTest, RefusesAVeryLongHostNamingItsLength) {
  std::string host(100000, 'h');
  absl::Status s = CreateStatus(host, 5432);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(s.message()), HasSubstr("100000"));
  // The message quotes only a prefix of the host, not all of it.
  EXPECT_LT(s.message().size(), 1000u);
}

TEST(NodeKeyCreateTest, RefusesAHostContainingANulByte) {
  std::string host("work\0er", 7);
  absl::Status s = CreateStatus(host, 5432);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(s.message()), HasSubstr("NUL"));
  // The bad value is shown escaped, so the message itself holds no NUL.
  EXPECT_THAT(std::string(s.message()), HasSubstr("work\\x00"));
  EXPECT_EQ(std::string(s.message()).find('\0'), std::string::npos);
}

TEST(NodeKeyCreateTest, RefusesAHostThatIsOnlyANulByte) {
  absl::Status s = CreateStatus(std::string(1, '\0'), 5432);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
}

TEST(NodeKeyCreateTest, RefusesPortZeroNamingIt) {
  absl::Status s = CreateStatus("w", 0);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(s.message()), HasSubstr("port 0 "));
}

TEST(NodeKeyCreateTest, RefusesANegativePortNamingIt) {
  absl::Status s = CreateStatus("w", -1);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(s.message()), HasSubstr("-1"));
}

TEST(NodeKeyCreateTest, RefusesPort65536NamingIt) {
  absl::Status s = CreateStatus("w", 65536);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(s.message()), HasSubstr("65536"));
}

TEST(NodeKeyCreateTest, RefusesPort70000NamingIt) {
  absl::Status s = CreateStatus("w", 70000);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(s.message()), HasSubstr("70000"));
}

TEST(NodeKeyCreateTest, RefusesExtremePorts) {
  EXPECT_EQ(CreateStatus("w", INT32_MIN).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(CreateStatus("w", INT32_MAX).code(), absl::StatusCode::kInvalidArgument);
}

TEST(NodeKeyCreateTest, PortErrorNamesTheHostToo) {
  absl::Status s = CreateStatus("worker-9", 0);
  EXPECT_THAT(std::string(s.message()), HasSubstr("worker-9"));
}

// ---- Global order ---------------------------------------------------------

TEST(NodeKeyOrderTest, OrdersByHostFirstWhateverThePortAndDatabase) {
  EXPECT_LT(MustCreate("a", 65535, UINT32_MAX), MustCreate("b", 1, 0));
  EXPECT_GT(MustCreate("b", 1, 0), MustCreate("a", 65535, UINT32_MAX));
}

TEST(NodeKeyOrderTest, OrdersHostsBytewise) {
  // Bytewise: upper case before lower case, a prefix before its extensions,
  // and bytes >= 0x80 after ASCII (unsigned, whatever the signedness of char).
  EXPECT_LT(MustCreate("Z", 1, 1), MustCreate("a", 1, 1));
  EXPECT_LT(MustCreate("a", 1, 1), MustCreate("ab", 1, 1));
  EXPECT_LT(MustCreate("host10", 1, 1), MustCreate("host9", 1, 1));
  EXPECT_LT(MustCreate("z", 1, 1), MustCreate("\xc3\xa9", 1, 1));
  EXPECT_LT(MustCreate("\x7f", 1, 1), MustCreate("\x80", 1, 1));
}

TEST(NodeKeyOrderTest, OrdersByPortNumericallyWhenHostsAreEqual) {
  EXPECT_LT(MustCreate("w", 999, UINT32_MAX), MustCreate("w", 1000, 0));
  EXPECT_LT(MustCreate("w", 5432, 1), MustCreate("w", 65535, 1));
}

TEST(NodeKeyOrderTest, OrdersByDatabaseWhenHostAndPortAreEqual) {
  EXPECT_LT(MustCreate("w", 5432, 1), MustCreate("w", 5432, 2));
  EXPECT_LT(MustCreate("w", 5432, 2), MustCreate("w", 5432, UINT32_MAX));
}

TEST(NodeKeyOrderTest, EqualKeysCompareEquivalent) {
  EXPECT_EQ(MustCreate("w", 5432, 7) <=> MustCreate("w", 5432, 7), std::strong_ordering::equal);
}

TEST(NodeKeyOrderTest, SortingShuffledKeysYieldsHostPortDatabaseOrder) {
  std::vector<NodeKey> expected = {
      MustCreate("alpha", 1, 5),    MustCreate("alpha", 5432, 1), MustCreate("alpha", 5432, 2),
      MustCreate("alpha", 6432, 0), MustCreate("beta", 2, 9),     MustCreate("beta", 5432, 1),
      MustCreate("gamma", 1, 1),    MustCreate("gamma1", 1, 1),
  };
  std::vector<NodeKey> keys = expected;
  std::mt19937 rng(20240601);
  for (int round = 0; round < 20; ++round) {
    std::shuffle(keys.begin(), keys.end(), rng);
    std::sort(keys.begin(), keys.end());
    ASSERT_EQ(keys, expected) << "round " << round;
  }
}

// ---- Equality and hash ----------------------------------------------------

TEST(NodeKeyEqualityTest, KeysWithTheSamePartsAreEqual) {
  EXPECT_EQ(MustCreate("w", 5432, 1), MustCreate("w", 5432, 1));
  EXPECT_FALSE(MustCreate("w", 5432, 1) != MustCreate("w", 5432, 1));
}

TEST(NodeKeyEqualityTest, KeysDifferingInAnyPartAreNotEqual) {
  NodeKey base = MustCreate("w", 5432, 1);
  EXPECT_NE(base, MustCreate("x", 5432, 1));
  EXPECT_NE(base, MustCreate("W", 5432, 1));
  EXPECT_NE(base, MustCreate("w", 5433, 1));
  EXPECT_NE(base, MustCreate("w", 5432, 2));
}

TEST(NodeKeyEqualityTest, CopiesAreEqualToTheOriginal) {
  NodeKey a = MustCreate("w", 5432, 1);
  NodeKey b = a;
  EXPECT_EQ(a, b);
  EXPECT_EQ(a.hash(), b.hash());
}

TEST(NodeKeyHashTest, EqualKeysHaveEqualHashes) {
  EXPECT_EQ(MustCreate("worker-1", 5432, 1).hash(), MustCreate("worker-1", 5432, 1).hash());
  // Independent of how the host string was produced.
  std::string built = std::string("worker-") + std::to_string(1);
  EXPECT_EQ(MustCreate(built, 5432, 1).hash(), MustCreate("worker-1", 5432, 1).hash());
}

TEST(NodeKeyHashTest, HashesDifferForDifferentPorts) {
  std::set<uint64_t> hashes;
  for (int port = 1; port <= 65535; ++port) hashes.insert(MustCreate("w", port, 1).hash());
  EXPECT_EQ(hashes.size(), 65535u);
}

TEST(NodeKeyHashTest, HashesDifferForDifferentDatabases) {
  std::set<uint64_t> hashes;
  for (uint32_t db = 0; db < 20000; ++db) hashes.insert(MustCreate("w", 5432, db).hash());
  hashes.insert(MustCreate("w", 5432, UINT32_MAX).hash());
  EXPECT_EQ(hashes.size(), 20001u);
}

TEST(NodeKeyHashTest, HashesDifferForDifferentHosts) {
  std::set<uint64_t> hashes;
  for (int i = 0; i < 20000; ++i) {
    hashes.insert(MustCreate("worker-" + std::to_string(i), 5432, 1).hash());
  }
  EXPECT_EQ(hashes.size(), 20000u);
}

TEST(NodeKeyHashTest, LowBitsSpreadOverBuckets) {
  // The shared index uses the low bits of the hash: consecutive ports must not
  // pile into a few buckets.
  constexpr int kBuckets = 64;
  std::vector<int> per_bucket(kBuckets, 0);
  for (int port = 1; port <= 64 * 100; ++port) {
    ++per_bucket[MustCreate("w", port, 1).hash() % kBuckets];
  }
  for (int b = 0; b < kBuckets; ++b) {
    EXPECT_GT(per_bucket[b], 40) << "bucket " << b;
    EXPECT_LT(per_bucket[b], 160) << "bucket " << b;
  }
}

// The node hash places nodes in the shared table, so a change to it is a
// layout change: if this test fails, bump internal::kLayoutVersion
// (layout.h) and update the pinned values together.
TEST(NodeKeyHashTest, HashIsPinnedToKnownValues) {
  // FNV-1a over the host bytes, xor (port << 32 | database), murmur3 fmix64;
  // the node's without the database; values computed independently of this
  // library.
  EXPECT_EQ(MustCreate("worker-1", 5432, 1).hash(), 0x790d708230fa9546ULL);
  EXPECT_EQ(MustCreate("10.0.0.7", 6432, 16384).hash(), 0xc083a0c307d51f09ULL);
  EXPECT_EQ(MustCreate("worker-1", 5432, 1).node_hash(), 0x6c674464dc5e306eULL);
  EXPECT_EQ(MustCreate("10.0.0.7", 6432, 16384).node_hash(), 0xc124d40f21c32d5aULL);
}

// The counters are kept per node: every database of a node has its hash.
TEST(NodeKeyHashTest, NodeHashIgnoresTheDatabaseOnly) {
  const NodeKey a = MustCreate("w", 5432, 1);
  EXPECT_EQ(MustCreate("w", 5432, 2).node_hash(), a.node_hash());
  EXPECT_EQ(MustCreate("w", 5432, UINT32_MAX).node_hash(), a.node_hash());
  EXPECT_NE(MustCreate("w", 5433, 1).node_hash(), a.node_hash());
  EXPECT_NE(MustCreate("v", 5432, 1).node_hash(), a.node_hash());
  EXPECT_TRUE(MustCreate("w", 5432, 2).SameNode(a));
  EXPECT_FALSE(MustCreate("w", 5433, 1).SameNode(a));
  EXPECT_FALSE(MustCreate("ww", 5432, 1).SameNode(a));
}

TEST(NodeKeyHashTest, HashIsTheSameInAForkedProcess) {
  Hashes parent = ComputeHashes();
  Hashes child = HashesFromChild([](int fd) {
    Hashes h = ComputeHashes();
    return WriteAll(fd, &h, sizeof(h)) ? 0 : 1;
  });
  EXPECT_EQ(child.node_key, parent.node_key);
  EXPECT_EQ(child.node, parent.node);
}

// A forked child shares its parent's address space layout, so even a seeded
// hash like absl::Hash agrees there. A freshly executed image of this binary
// gets a new layout (with ASLR on), so only a truly stable hash agrees.
TEST(NodeKeyHashTest, HashIsTheSameInAFreshlyExecutedProcess) {
  Hashes parent = ComputeHashes();
  Hashes child = HashesFromChild([](int fd) {
    if (dup2(fd, STDOUT_FILENO) < 0) return 2;
    setenv(kHashChildEnv, "1", 1);
    execl("/proc/self/exe", "node_key_test_hash_child", static_cast<char*>(nullptr));
    return 3;  // exec failed
  });
  EXPECT_EQ(child.node_key, parent.node_key);
  EXPECT_EQ(child.node, parent.node);
  if (child.seed_address == parent.seed_address) {
    std::fprintf(stderr,
                 "note: global addresses agreed across exec (ASLR off?), so this run could not "
                 "tell a stable hash from an address-seeded one like absl::Hash\n");
  }
}

// ---- ToString -------------------------------------------------------------

TEST(NodeKeyToStringTest, NodeNameIsHostColonPort) {
  EXPECT_EQ(MustCreate("worker-1", 5432, 16384).NodeName(), "worker-1:5432");
}

TEST(NodeKeyToStringTest, FormatsAsHostColonPortSlashDatabase) {
  EXPECT_EQ(MustCreate("worker-1", 5432, 16384).ToString(), "worker-1:5432/16384");
  EXPECT_EQ(MustCreate("w", 1, 0).ToString(), "w:1/0");
  EXPECT_EQ(MustCreate("w", 65535, UINT32_MAX).ToString(), "w:65535/4294967295");
}

}  // namespace
}  // namespace connthrottle

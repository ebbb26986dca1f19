#include "connthrottle/shared_segment.h"

#include <dirent.h>
#include <fcntl.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstddef>
#include <cstring>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "connthrottle/counter_table.h"
#include "connthrottle/owner.h"
#include "core/internal/layout.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/testing/child_process.h"
#include "tests/testing/heap_table.h"

namespace connthrottle {
namespace {

using ::connthrottle::testing::Key;
using ::connthrottle::testing::Pipe;
using ::connthrottle::testing::ReadAll;
using ::connthrottle::testing::WaitForExit;
using ::connthrottle::testing::WriteAll;
using ::testing::HasSubstr;

constexpr uid_t kNobody = 65534;

TableOptions SmallOptions() {
  TableOptions options;
  options.capacity = 16;
  options.max_owners = 8;
  return options;
}

std::string PathOf(const std::string& name) { return "/dev/shm/" + name; }

// ---- Small POSIX helpers (usable in forked children: no gtest calls) --------

bool WriteOne(int fd, char c) { return WriteAll(fd, &c, 1); }

// Creates /dev/shm/<name> with exactly `mode` and `contents`.
void WriteSegmentFile(const std::string& name, const std::string& contents, mode_t mode) {
  std::string path = PathOf(name);
  int fd = open(path.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
  ASSERT_GE(fd, 0) << "open " << path << ": " << strerror(errno);
  ASSERT_EQ(fchmod(fd, mode), 0) << strerror(errno);
  size_t done = 0;
  while (done < contents.size()) {
    ssize_t n = write(fd, contents.data() + done, contents.size() - done);
    ASSERT_GT(n, 0) << strerror(errno);
    done += static_cast<size_t>(n);
  }
  close(fd);
}

// Names of the entries of /dev/shm that contain `fragment`.
std::vector<std::string> ShmEntriesContaining(const std::string& fragment) {
  std::vector<std::string> found;
  DIR* dir = opendir("/dev/shm");
  if (dir == nullptr) return found;
  while (struct dirent* e = readdir(dir)) {
    std::string n = e->d_name;
    if (n != "." && n != ".." && n.find(fragment) != std::string::npos) found.push_back(n);
  }
  closedir(dir);
  return found;
}

class SharedSegmentTest : public ::testing::Test {
 protected:
  void SetUp() override {
    const ::testing::TestInfo* info = ::testing::UnitTest::GetInstance()->current_test_info();
    name_ = absl::StrCat("connthrottle-test-", getpid(), "-", info->name());
    ASSERT_TRUE(SharedSegment::ValidateName(name_).ok()) << name_;
    unlink(PathOf(name_).c_str());  // a leftover of an earlier run with the same pid
  }
  void TearDown() override {
    absl::Status s = SharedSegment::Remove(name_);
    EXPECT_TRUE(s.ok() || absl::IsNotFound(s)) << s;
    // Creation must not leave its temporary files behind.
    for (const std::string& left : ShmEntriesContaining(name_)) {
      ADD_FAILURE() << "left behind in /dev/shm: " << left;
      unlink(PathOf(left).c_str());
    }
  }

  std::unique_ptr<SharedSegment> MustCreate(const TableOptions& options = SmallOptions()) {
    absl::StatusOr<std::unique_ptr<SharedSegment>> segment =
        SharedSegment::CreateOrAttach(name_, options);
    EXPECT_TRUE(segment.ok()) << segment.status();
    if (!segment.ok()) return nullptr;
    return std::move(*segment);
  }

  std::string name_;
};

// ---- Creating and attaching -------------------------------------------------

TEST_F(SharedSegmentTest, CreateOrAttachCreatesANewSegment) {
  absl::StatusOr<std::unique_ptr<SharedSegment>> segment =
      SharedSegment::CreateOrAttach(name_, SmallOptions());
  ASSERT_TRUE(segment.ok()) << segment.status();
  EXPECT_TRUE((*segment)->created());
  EXPECT_EQ((*segment)->name(), name_);
  EXPECT_EQ((*segment)->table().options().capacity, 16u);
  EXPECT_EQ((*segment)->table().options().max_owners, 8u);
}

TEST_F(SharedSegmentTest, SecondCreateOrAttachAttaches) {
  std::unique_ptr<SharedSegment> first = MustCreate();
  ASSERT_NE(first, nullptr);
  absl::StatusOr<std::unique_ptr<SharedSegment>> second =
      SharedSegment::CreateOrAttach(name_, SmallOptions());
  ASSERT_TRUE(second.ok()) << second.status();
  EXPECT_FALSE((*second)->created());
  EXPECT_EQ((*second)->size(), first->size());
}

TEST_F(SharedSegmentTest, TwoMappingsShareTheCounters) {
  std::unique_ptr<SharedSegment> first = MustCreate();
  ASSERT_NE(first, nullptr);
  absl::StatusOr<std::unique_ptr<SharedSegment>> second =
      SharedSegment::CreateOrAttach(name_, SmallOptions());
  ASSERT_TRUE(second.ok()) << second.status();
  NodeKey key = Key("worker-1");
  {
    std::unique_ptr<Owner> owner = *first->table().RegisterOwner();
    Slot slot = *owner->TryAcquire(key, Limit::AtMost(2));
    EXPECT_EQ((*second)->table().ConnectionCount(key), 1u);
    EXPECT_EQ((*second)->table().Stats().owners, 1u);
  }
  EXPECT_EQ((*second)->table().ConnectionCount(key), 0u);
}

TEST_F(SharedSegmentTest, AttachFindsACreatedSegment) {
  std::unique_ptr<SharedSegment> first = MustCreate();
  ASSERT_NE(first, nullptr);
  absl::StatusOr<std::unique_ptr<SharedSegment>> attached = SharedSegment::Attach(name_);
  ASSERT_TRUE(attached.ok()) << attached.status();
  EXPECT_FALSE((*attached)->created());
  EXPECT_EQ((*attached)->table().options().capacity, 16u);
  EXPECT_EQ((*attached)->table().options().max_owners, 8u);
}

TEST_F(SharedSegmentTest, SegmentFileHasMode0600AndBelongsToThisUser) {
  std::unique_ptr<SharedSegment> segment = MustCreate();
  ASSERT_NE(segment, nullptr);
  struct stat st;
  ASSERT_EQ(stat(PathOf(name_).c_str(), &st), 0) << strerror(errno);
  EXPECT_TRUE(S_ISREG(st.st_mode));
  EXPECT_EQ(st.st_mode & 07777, 0600u);
  EXPECT_EQ(st.st_uid, geteuid());
}

TEST_F(SharedSegmentTest, SegmentFileHasMode0600WhateverTheUmask) {
  mode_t old = umask(0);
  std::unique_ptr<SharedSegment> segment = MustCreate();
  umask(old);
  ASSERT_NE(segment, nullptr);
  struct stat st;
  ASSERT_EQ(stat(PathOf(name_).c_str(), &st), 0) << strerror(errno);
  EXPECT_EQ(st.st_mode & 07777, 0600u);
}

TEST_F(SharedSegmentTest, SegmentSizeIsWhatTheTableNeeds) {
  std::unique_ptr<SharedSegment> segment = MustCreate();
  ASSERT_NE(segment, nullptr);
  TableOptions options = SmallOptions();
  options.reclaim_dead_owners = true;
  absl::StatusOr<size_t> bytes = CounterTable::RequiredBytes(options);
  ASSERT_TRUE(bytes.ok());
  EXPECT_EQ(segment->size(), *bytes);
  struct stat st;
  ASSERT_EQ(stat(PathOf(name_).c_str(), &st), 0);
  EXPECT_EQ(static_cast<size_t>(st.st_size), *bytes);
}

TEST_F(SharedSegmentTest, SegmentsAlwaysReclaimDeadOwners) {
  TableOptions options = SmallOptions();
  options.reclaim_dead_owners = false;
  std::unique_ptr<SharedSegment> segment = MustCreate(options);
  ASSERT_NE(segment, nullptr);
  EXPECT_TRUE(segment->table().options().reclaim_dead_owners);
}

TEST_F(SharedSegmentTest, CreateOrAttachRefusesInvalidTableOptions) {
  TableOptions options = SmallOptions();
  options.capacity = 0;
  absl::StatusOr<std::unique_ptr<SharedSegment>> segment =
      SharedSegment::CreateOrAttach(name_, options);
  EXPECT_EQ(segment.status().code(), absl::StatusCode::kInvalidArgument) << segment.status();
  EXPECT_NE(access(PathOf(name_).c_str(), F_OK), 0) << "a segment was created";
}

TEST_F(SharedSegmentTest, AttachWithADifferentCapacityIsRefusedNamingBoth) {
  std::unique_ptr<SharedSegment> first = MustCreate();
  ASSERT_NE(first, nullptr);
  TableOptions other = SmallOptions();
  other.capacity = 32;
  absl::StatusOr<std::unique_ptr<SharedSegment>> second =
      SharedSegment::CreateOrAttach(name_, other);
  EXPECT_EQ(second.status().code(), absl::StatusCode::kFailedPrecondition) << second.status();
  EXPECT_THAT(std::string(second.status().message()), HasSubstr("capacity 16"));
  EXPECT_THAT(std::string(second.status().message()), HasSubstr("capacity 32"));
}

TEST_F(SharedSegmentTest, AttachWithADifferentMaxOwnersIsRefusedNamingBoth) {
  std::unique_ptr<SharedSegment> first = MustCreate();
  ASSERT_NE(first, nullptr);
  TableOptions other = SmallOptions();
  other.max_owners = 9;
  absl::StatusOr<std::unique_ptr<SharedSegment>> second =
      SharedSegment::CreateOrAttach(name_, other);
  EXPECT_EQ(second.status().code(), absl::StatusCode::kFailedPrecondition) << second.status();
  EXPECT_THAT(std::string(second.status().message()), HasSubstr("8 owners"));
  EXPECT_THAT(std::string(second.status().message()), HasSubstr("for 9"));
}

TEST_F(SharedSegmentTest, AttachOfAMissingSegmentIsNotFound) {
  absl::StatusOr<std::unique_ptr<SharedSegment>> segment = SharedSegment::Attach(name_);
  EXPECT_EQ(segment.status().code(), absl::StatusCode::kNotFound) << segment.status();
  EXPECT_THAT(std::string(segment.status().message()), HasSubstr(name_));
}

TEST_F(SharedSegmentTest, AttachDoesNotCreate) {
  ASSERT_FALSE(SharedSegment::Attach(name_).ok());
  EXPECT_NE(access(PathOf(name_).c_str(), F_OK), 0);
}

TEST_F(SharedSegmentTest, AcceptsANameOf200Characters) {
  std::string long_name = name_ + std::string(200 - name_.size(), 'x');
  ASSERT_EQ(long_name.size(), 200u);
  absl::StatusOr<std::unique_ptr<SharedSegment>> segment =
      SharedSegment::CreateOrAttach(long_name, SmallOptions());
  ASSERT_TRUE(segment.ok()) << segment.status();
  EXPECT_TRUE((*segment)->created());
  EXPECT_TRUE(SharedSegment::Remove(long_name).ok());
}

// ---- Remove -----------------------------------------------------------------

TEST_F(SharedSegmentTest, RemoveOfAMissingSegmentIsNotFound) {
  EXPECT_EQ(SharedSegment::Remove(name_).code(), absl::StatusCode::kNotFound);
}

TEST_F(SharedSegmentTest, RemoveUnlinksTheName) {
  std::unique_ptr<SharedSegment> segment = MustCreate();
  ASSERT_NE(segment, nullptr);
  ASSERT_TRUE(SharedSegment::Remove(name_).ok());
  EXPECT_EQ(SharedSegment::Attach(name_).status().code(), absl::StatusCode::kNotFound);
}

TEST_F(SharedSegmentTest, MappingStaysUsableAfterRemove) {
  std::unique_ptr<SharedSegment> segment = MustCreate();
  ASSERT_NE(segment, nullptr);
  ASSERT_TRUE(SharedSegment::Remove(name_).ok());
  std::unique_ptr<Owner> owner = *segment->table().RegisterOwner();
  Slot slot = *owner->TryAcquire(Key("w"), Limit::AtMost(1));
  EXPECT_EQ(segment->table().ConnectionCount(Key("w")), 1u);
}

TEST_F(SharedSegmentTest, CreateOrAttachAfterRemoveCreatesAFreshTable) {
  std::unique_ptr<SharedSegment> old = MustCreate();
  ASSERT_NE(old, nullptr);
  std::unique_ptr<Owner> owner = *old->table().RegisterOwner();
  Slot slot = *owner->TryAcquire(Key("w"), Limit::AtMost(1));
  ASSERT_TRUE(SharedSegment::Remove(name_).ok());
  std::unique_ptr<SharedSegment> fresh = MustCreate();
  ASSERT_NE(fresh, nullptr);
  EXPECT_TRUE(fresh->created());
  EXPECT_EQ(fresh->table().ConnectionCount(Key("w")), 0u);
}

// ---- Refusing segments that are not ours or not tables ---------------------

TEST_F(SharedSegmentTest, GarbageFileIsRefusedAsAnotherLayout) {
  WriteSegmentFile(name_, std::string(1 << 16, '\xab'), 0600);
  absl::StatusOr<std::unique_ptr<SharedSegment>> segment = SharedSegment::Attach(name_);
  EXPECT_EQ(segment.status().code(), absl::StatusCode::kFailedPrecondition) << segment.status();
}

TEST_F(SharedSegmentTest, CreateOrAttachRefusesAGarbageFileRatherThanReplacingIt) {
  WriteSegmentFile(name_, std::string(1 << 16, '\xab'), 0600);
  absl::StatusOr<std::unique_ptr<SharedSegment>> segment =
      SharedSegment::CreateOrAttach(name_, SmallOptions());
  EXPECT_EQ(segment.status().code(), absl::StatusCode::kFailedPrecondition) << segment.status();
  struct stat st;
  ASSERT_EQ(stat(PathOf(name_).c_str(), &st), 0);
  EXPECT_EQ(st.st_size, 1 << 16);
}

TEST_F(SharedSegmentTest, WrongMagicIsRefusedAsAnotherLayout) {
  std::unique_ptr<SharedSegment> made = MustCreate();
  ASSERT_NE(made, nullptr);
  std::string bytes(made->size(), '\0');
  made.reset();
  ASSERT_TRUE(SharedSegment::Remove(name_).ok());
  std::memcpy(bytes.data(), "NOTATABL", 8);
  WriteSegmentFile(name_, bytes, 0600);
  absl::StatusOr<std::unique_ptr<SharedSegment>> segment = SharedSegment::Attach(name_);
  EXPECT_EQ(segment.status().code(), absl::StatusCode::kFailedPrecondition) << segment.status();
  EXPECT_THAT(std::string(segment.status().message()), HasSubstr("magic"));
}

TEST_F(SharedSegmentTest, AnotherLayoutVersionIsRefused) {
  std::unique_ptr<SharedSegment> made = MustCreate();
  ASSERT_NE(made, nullptr);
  made.reset();
  {
    int fd = open(PathOf(name_).c_str(), O_RDWR | O_CLOEXEC);
    ASSERT_GE(fd, 0);
    uint32_t version = internal::kLayoutVersion + 1;
    ASSERT_EQ(
        pwrite(fd, &version, sizeof(version), offsetof(internal::TableHeader, layout_version)),
        static_cast<ssize_t>(sizeof(version)));
    close(fd);
  }
  absl::StatusOr<std::unique_ptr<SharedSegment>> segment = SharedSegment::Attach(name_);
  EXPECT_EQ(segment.status().code(), absl::StatusCode::kFailedPrecondition) << segment.status();
  EXPECT_THAT(std::string(segment.status().message()), HasSubstr("layout version"));
}

TEST_F(SharedSegmentTest, TruncatedSegmentIsRefused) {
  std::unique_ptr<SharedSegment> made = MustCreate();
  ASSERT_NE(made, nullptr);
  made.reset();
  ASSERT_EQ(truncate(PathOf(name_).c_str(), 4096), 0) << strerror(errno);
  absl::StatusOr<std::unique_ptr<SharedSegment>> segment = SharedSegment::Attach(name_);
  EXPECT_EQ(segment.status().code(), absl::StatusCode::kFailedPrecondition) << segment.status();
}

TEST_F(SharedSegmentTest, TinyFileIsRefusedAsHoldingNoTable) {
  WriteSegmentFile(name_, "abc", 0600);
  absl::StatusOr<std::unique_ptr<SharedSegment>> segment = SharedSegment::Attach(name_);
  EXPECT_EQ(segment.status().code(), absl::StatusCode::kFailedPrecondition) << segment.status();
}

TEST_F(SharedSegmentTest, EmptyFileIsRefusedAsHoldingNoTable) {
  WriteSegmentFile(name_, "", 0600);
  absl::StatusOr<std::unique_ptr<SharedSegment>> segment =
      SharedSegment::CreateOrAttach(name_, SmallOptions());
  EXPECT_EQ(segment.status().code(), absl::StatusCode::kFailedPrecondition) << segment.status();
}

TEST_F(SharedSegmentTest, SegmentWithMode0644IsPermissionDenied) {
  std::unique_ptr<SharedSegment> made = MustCreate();
  ASSERT_NE(made, nullptr);
  ASSERT_EQ(chmod(PathOf(name_).c_str(), 0644), 0);
  absl::StatusOr<std::unique_ptr<SharedSegment>> segment = SharedSegment::Attach(name_);
  EXPECT_EQ(segment.status().code(), absl::StatusCode::kPermissionDenied) << segment.status();
  EXPECT_THAT(std::string(segment.status().message()), HasSubstr("644"));
}

TEST_F(SharedSegmentTest, CreateOrAttachRefusesAFileWithMode0644) {
  WriteSegmentFile(name_, std::string(4096, '\0'), 0644);
  absl::StatusOr<std::unique_ptr<SharedSegment>> segment =
      SharedSegment::CreateOrAttach(name_, SmallOptions());
  EXPECT_EQ(segment.status().code(), absl::StatusCode::kPermissionDenied) << segment.status();
}

TEST_F(SharedSegmentTest, SegmentWithMode0400IsPermissionDenied) {
  std::unique_ptr<SharedSegment> made = MustCreate();
  ASSERT_NE(made, nullptr);
  ASSERT_EQ(chmod(PathOf(name_).c_str(), 0400), 0);
  absl::StatusOr<std::unique_ptr<SharedSegment>> segment = SharedSegment::Attach(name_);
  EXPECT_EQ(segment.status().code(), absl::StatusCode::kPermissionDenied) << segment.status();
}

TEST_F(SharedSegmentTest, SegmentOfAnotherUserIsPermissionDenied) {
  if (geteuid() != 0) GTEST_SKIP() << "needs root to chown a file to another user";
  std::unique_ptr<SharedSegment> made = MustCreate();
  ASSERT_NE(made, nullptr);
  ASSERT_EQ(chown(PathOf(name_).c_str(), kNobody, static_cast<gid_t>(-1)), 0) << strerror(errno);
  absl::StatusOr<std::unique_ptr<SharedSegment>> segment = SharedSegment::Attach(name_);
  EXPECT_EQ(segment.status().code(), absl::StatusCode::kPermissionDenied) << segment.status();
  EXPECT_THAT(std::string(segment.status().message()), HasSubstr("65534"));
}

TEST_F(SharedSegmentTest, CreateOrAttachRefusesASegmentOfAnotherUser) {
  if (geteuid() != 0) GTEST_SKIP() << "needs root to chown a file to another user";
  std::unique_ptr<SharedSegment> made = MustCreate();
  ASSERT_NE(made, nullptr);
  ASSERT_EQ(chown(PathOf(name_).c_str(), kNobody, static_cast<gid_t>(-1)), 0) << strerror(errno);
  absl::StatusOr<std::unique_ptr<SharedSegment>> segment =
      SharedSegment::CreateOrAttach(name_, SmallOptions());
  EXPECT_EQ(segment.status().code(), absl::StatusCode::kPermissionDenied) << segment.status();
}

TEST_F(SharedSegmentTest, SymlinkIsNotFollowed) {
  std::string target_name = name_ + "-target";
  absl::StatusOr<std::unique_ptr<SharedSegment>> target =
      SharedSegment::CreateOrAttach(target_name, SmallOptions());
  ASSERT_TRUE(target.ok()) << target.status();
  ASSERT_EQ(symlink(PathOf(target_name).c_str(), PathOf(name_).c_str()), 0) << strerror(errno);
  absl::StatusOr<std::unique_ptr<SharedSegment>> segment = SharedSegment::Attach(name_);
  EXPECT_EQ(segment.status().code(), absl::StatusCode::kPermissionDenied) << segment.status();
  EXPECT_TRUE(SharedSegment::Remove(target_name).ok());
}

// ---- Names ---------------------------------------------------------------------

TEST(SharedSegmentNameTest, AcceptsPortableNames) {
  EXPECT_TRUE(SharedSegment::ValidateName("a").ok());
  EXPECT_TRUE(SharedSegment::ValidateName("connthrottle_Main-1.v2").ok());
  EXPECT_TRUE(SharedSegment::ValidateName(std::string(200, 'n')).ok());
}

class InvalidSegmentNameTest : public ::testing::TestWithParam<std::string> {};

TEST_P(InvalidSegmentNameTest, ValidateNameRefusesIt) {
  EXPECT_EQ(SharedSegment::ValidateName(GetParam()).code(), absl::StatusCode::kInvalidArgument);
}

TEST_P(InvalidSegmentNameTest, CreateOrAttachRefusesIt) {
  EXPECT_EQ(SharedSegment::CreateOrAttach(GetParam(), SmallOptions()).status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST_P(InvalidSegmentNameTest, AttachRefusesIt) {
  EXPECT_EQ(SharedSegment::Attach(GetParam()).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST_P(InvalidSegmentNameTest, RemoveRefusesIt) {
  EXPECT_EQ(SharedSegment::Remove(GetParam()).code(), absl::StatusCode::kInvalidArgument);
}

INSTANTIATE_TEST_SUITE_P(Names, InvalidSegmentNameTest,
                         ::testing::Values(std::string(""), std::string(201, 'n'),
                                           std::string("a/b"), std::string("/abs"),
                                           std::string("../etc"), std::string(".hidden"),
                                           std::string("."), std::string(".."),
                                           std::string("with space"), std::string("nul\0byte", 8),
                                           std::string("caf\xc3\xa9")),
                         [](const ::testing::TestParamInfo<std::string>& info) {
                           return absl::StrCat("Case", info.index);
                         });

TEST(SharedSegmentNameTest, TooLongNameErrorNamesTheLength) {
  absl::Status s = SharedSegment::ValidateName(std::string(201, 'n'));
  EXPECT_THAT(std::string(s.message()), HasSubstr("201"));
}

// ---- Across processes ---------------------------------------------------------

// Child exit codes.
constexpr int kChildOk = 0;
constexpr int kChildAttachFailed = 2;
constexpr int kChildRegisterFailed = 3;
constexpr int kChildAcquireFailed = 4;
constexpr int kChildPipeFailed = 5;

// In a forked child: attaches `name`, takes one slot of `key`, reports on
// `ready`, holds the slot until a byte (or end of file) arrives on `go`, then
// releases it and exits normally.
[[noreturn]] void HoldOneSlotInChild(const std::string& name, const NodeKey& key, int ready,
                                     int go) {
  int code = kChildOk;
  {
    absl::StatusOr<std::unique_ptr<SharedSegment>> segment = SharedSegment::Attach(name);
    if (!segment.ok()) _exit(kChildAttachFailed);
    absl::StatusOr<std::unique_ptr<Owner>> owner = (*segment)->table().RegisterOwner();
    if (!owner.ok()) _exit(kChildRegisterFailed);
    absl::StatusOr<Slot> slot = (*owner)->TryAcquire(key, Limit::AtMost(1));
    if (!slot.ok()) _exit(kChildAcquireFailed);
    char c;
    if (!WriteOne(ready, 'r')) code = kChildPipeFailed;
    ReadAll(go, &c, 1);
    slot->Release();
  }
  _exit(code);
}

TEST_F(SharedSegmentTest, ASlotTakenInAnotherProcessIsCountedHere) {
  std::unique_ptr<SharedSegment> segment = MustCreate();
  ASSERT_NE(segment, nullptr);
  NodeKey key = Key("worker-1");
  Pipe ready, go;
  pid_t pid = fork();
  ASSERT_GE(pid, 0) << strerror(errno);
  if (pid == 0) {
    ready.CloseRead();
    go.CloseWrite();
    HoldOneSlotInChild(name_, key, ready.write_fd(), go.read_fd());
  }
  ready.CloseWrite();
  go.CloseRead();
  char c;
  bool child_ready = ReadAll(ready.read_fd(), &c, 1);
  if (!child_ready) {
    ADD_FAILURE() << "child exited early with " << WaitForExit(pid);
    return;
  }
  EXPECT_EQ(segment->table().ConnectionCount(key), 1u);
  // The limit holds across processes: this process cannot take a second slot.
  std::unique_ptr<Owner> owner = *segment->table().RegisterOwner();
  EXPECT_EQ(owner->TryAcquire(key, Limit::AtMost(1)).status().code(),
            absl::StatusCode::kResourceExhausted);

  ASSERT_TRUE(WriteOne(go.write_fd(), 'g'));
  EXPECT_EQ(WaitForExit(pid), kChildOk);
  EXPECT_EQ(segment->table().ConnectionCount(key), 0u);
  EXPECT_TRUE(segment->table().Snapshot().empty());
  EXPECT_EQ(segment->table().Stats().owners, 1u);  // only ours
}

TEST_F(SharedSegmentTest, AWaiterHereIsWokenByAReleaseInAnotherProcess) {
  std::unique_ptr<SharedSegment> segment = MustCreate();
  ASSERT_NE(segment, nullptr);
  NodeKey key = Key("worker-1");
  Pipe ready, go;
  pid_t pid = fork();
  ASSERT_GE(pid, 0) << strerror(errno);
  if (pid == 0) {
    ready.CloseRead();
    go.CloseWrite();
    HoldOneSlotInChild(name_, key, ready.write_fd(), go.read_fd());
  }
  ready.CloseWrite();
  go.CloseRead();
  char c;
  if (!ReadAll(ready.read_fd(), &c, 1)) {
    ADD_FAILURE() << "child exited early with " << WaitForExit(pid);
    return;
  }
  std::unique_ptr<Owner> owner = *segment->table().RegisterOwner();
  std::atomic<bool> got{false};
  absl::Status status;
  std::thread waiter([&] {
    // No polling and a 60 s deadline: only the cross-process wake-up can end
    // this wait within the 10 s the test allows below.
    AcquireOptions options;
    options.poll_interval = absl::Hours(1);
    absl::StatusOr<Slot> slot =
        owner->AcquireWaiting(key, Limit::AtMost(1), absl::Now() + absl::Seconds(60), options);
    status = slot.status();
    got = slot.ok();
  });
  absl::Time give_up = absl::Now() + absl::Seconds(30);
  auto waiters = [&] {
    std::vector<KeyStats> snapshot = segment->table().Snapshot();
    return snapshot.empty() ? 0u : snapshot[0].waiters;
  };
  while (waiters() == 0 && absl::Now() < give_up) std::this_thread::yield();
  EXPECT_EQ(waiters(), 1u);
  EXPECT_FALSE(got.load());
  ASSERT_TRUE(WriteOne(go.write_fd(), 'g'));
  // A liveness bound, not a speed one: the wake-up takes microseconds.
  absl::Time woken_by = absl::Now() + absl::Seconds(30);
  while (!got.load() && absl::Now() < woken_by) std::this_thread::yield();
  EXPECT_TRUE(got.load()) << "the release in the other process did not wake the waiter";
  waiter.join();
  EXPECT_TRUE(got.load()) << status;
  EXPECT_EQ(WaitForExit(pid), kChildOk);
  EXPECT_EQ(segment->table().ConnectionCount(key), 0u);
}

TEST_F(SharedSegmentTest, SlotsOfAKilledProcessAreReclaimed) {
  std::unique_ptr<SharedSegment> segment = MustCreate();
  ASSERT_NE(segment, nullptr);
  NodeKey key = Key("worker-1");
  Pipe ready, go;
  pid_t pid = fork();
  ASSERT_GE(pid, 0) << strerror(errno);
  if (pid == 0) {
    ready.CloseRead();
    go.CloseWrite();
    HoldOneSlotInChild(name_, key, ready.write_fd(), go.read_fd());
  }
  ready.CloseWrite();
  go.CloseRead();
  char c;
  if (!ReadAll(ready.read_fd(), &c, 1)) {
    ADD_FAILURE() << "child exited early with " << WaitForExit(pid);
    return;
  }
  ASSERT_EQ(segment->table().ConnectionCount(key), 1u);
  ASSERT_EQ(kill(pid, SIGKILL), 0);
  EXPECT_EQ(WaitForExit(pid), -SIGKILL);
  std::unique_ptr<Owner> owner = *segment->table().RegisterOwner();
  EXPECT_EQ(owner->ReclaimDeadOwners(), 1);
  EXPECT_EQ(segment->table().ConnectionCount(key), 0u);
  EXPECT_EQ(segment->table().Stats().slots_reclaimed, 1u);
  EXPECT_EQ(segment->table().Stats().owners, 1u);
}

TEST_F(SharedSegmentTest, ConcurrentCreateOrAttachCreatesExactlyOnce) {
  constexpr int kChildren = 8;
  constexpr int kCreated = 10;
  constexpr int kAttached = 11;
  constexpr int kFailed = 12;
  constexpr int kRounds = 5;
  for (int round = 0; round < kRounds; ++round) {
    std::string name = absl::StrCat(name_, "-", round);
    Pipe barrier;
    std::vector<pid_t> children;
    for (int i = 0; i < kChildren; ++i) {
      pid_t pid = fork();
      ASSERT_GE(pid, 0) << strerror(errno);
      if (pid == 0) {
        barrier.CloseWrite();
        char c;
        ReadAll(barrier.read_fd(), &c, 1);  // returns at end of file: everyone starts at once
        absl::StatusOr<std::unique_ptr<SharedSegment>> segment =
            SharedSegment::CreateOrAttach(name, SmallOptions());
        if (!segment.ok()) _exit(kFailed);
        // Every process must see a complete table.
        if ((*segment)->table().options().capacity != 16) _exit(kFailed);
        absl::StatusOr<std::unique_ptr<Owner>> owner = (*segment)->table().RegisterOwner();
        if (!owner.ok()) _exit(kFailed);
        int code = (*segment)->created() ? kCreated : kAttached;
        owner->reset();
        segment->reset();
        _exit(code);
      }
      children.push_back(pid);
    }
    barrier.CloseWrite();  // release them all
    int created = 0, attached = 0, other = 0;
    for (pid_t pid : children) {
      int code = WaitForExit(pid);
      if (code == kCreated) {
        ++created;
      } else if (code == kAttached) {
        ++attached;
      } else {
        ++other;
      }
    }
    EXPECT_EQ(created, 1) << "round " << round;
    EXPECT_EQ(attached, kChildren - 1) << "round " << round;
    EXPECT_EQ(other, 0) << "round " << round;
    absl::StatusOr<std::unique_ptr<SharedSegment>> segment = SharedSegment::Attach(name);
    ASSERT_TRUE(segment.ok()) << segment.status();
    EXPECT_EQ((*segment)->table().Stats().owners, 0u);
    segment->reset();
    EXPECT_TRUE(SharedSegment::Remove(name).ok());
  }
}

}  // namespace
}  // namespace connthrottle

#include "pg/bridge/pool_message.h"

#include <string>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace connthrottle::pg {
namespace {

using ::testing::HasSubstr;

SharedPool::Submission TwoTasks() {
  SharedPool::Submission s;
  s.database_id = 16384;
  s.max_rows_kept = 1;
  s.slot_wait_timeout = absl::Milliseconds(1500);
  s.tasks = {{{"10.0.0.1", 5432}, "SELECT 1", true},
             {{"worker-b.example", 6432}, std::string("SELECT '\0x'", 11), false}};
  ConnParams a;
  a.Set("host", "10.0.0.1").Set("port", "5432").Set("dbname", "app").Set("user", "alice");
  ConnParams b;
  b.Set("host", "worker-b.example").Set("sslmode", "require");
  s.params = {a, b};
  s.local = {false, true};
  return s;
}

TEST(PoolMessageTest, ARequestComesBackAsItWasWritten) {
  std::vector<char> area(4096);
  absl::StatusOr<size_t> n = EncodeRequest(TwoTasks(), area.data(), area.size());
  ASSERT_TRUE(n.ok()) << n.status();
  absl::StatusOr<SharedPool::Submission> back = DecodeRequest(area.data(), *n);
  ASSERT_TRUE(back.ok()) << back.status();
  const SharedPool::Submission want = TwoTasks();
  EXPECT_EQ(back->database_id, want.database_id);
  EXPECT_EQ(back->max_rows_kept, 1);
  EXPECT_EQ(back->slot_wait_timeout, absl::Milliseconds(1500));
  ASSERT_EQ(back->tasks.size(), 2u);
  for (size_t t = 0; t < 2; ++t) {
    EXPECT_EQ(back->tasks[t].node, want.tasks[t].node);
    EXPECT_EQ(back->tasks[t].sql, want.tasks[t].sql);
    EXPECT_EQ(back->tasks[t].allow_local, want.tasks[t].allow_local);
    EXPECT_EQ(back->local[t], want.local[t]);
    EXPECT_EQ(back->params[t].ToString(), want.params[t].ToString());
  }
  EXPECT_EQ(back->params[0].Get("user"), "alice");
}

TEST(PoolMessageTest, ARequestThatDoesNotFitIsRefused) {
  std::vector<char> area(64);
  absl::StatusOr<size_t> n = EncodeRequest(TwoTasks(), area.data(), area.size());
  EXPECT_EQ(n.status().code(), absl::StatusCode::kResourceExhausted);
}

TEST(PoolMessageTest, ATruncatedOrForeignMessageIsAnErrorNotARead) {
  std::vector<char> area(4096);
  const size_t n = *EncodeRequest(TwoTasks(), area.data(), area.size());
  for (size_t cut = 0; cut < n; ++cut) {
    // A copy of exactly `cut` bytes, so that AddressSanitizer sees any read beyond.
    std::vector<char> part(area.begin(), area.begin() + cut);
    EXPECT_FALSE(DecodeRequest(part.data(), part.size()).ok()) << cut;
  }
  EXPECT_FALSE(DecodeResponse(area.data(), n).ok()) << "a request read as a response";
  // A count far larger than the bytes that follow (the task count, after
  // the magic, the database, max_rows_kept and the wait timeout).
  std::vector<char> lying(area.begin(), area.begin() + n);
  lying[24] = lying[25] = lying[26] = lying[27] = '\x7f';
  EXPECT_FALSE(DecodeRequest(lying.data(), lying.size()).ok());
}

TaskResult Value(std::optional<std::string> v) {
  TaskResult r;
  r.command_tag = "SELECT 1";
  r.row_count = 1;
  r.columns = {"x"};
  r.rows = {{std::move(v)}};
  r.node = {"w", 1};
  r.connection = 3;
  r.queued = absl::Microseconds(120);
  r.run = absl::Microseconds(450);
  return r;
}

PoolResponse FourResults() {
  PoolResponse p;
  p.tasks.push_back(Value("42"));
  p.tasks.push_back(Value(std::nullopt));
  TaskResult many;
  many.command_tag = "SELECT 5";
  many.row_count = 5;
  many.rows = {{"1"}};  // max_rows_kept: only the first row kept
  p.tasks.push_back(many);
  TaskResult failed;
  failed.status = absl::UnknownError("node w:1: division by zero");
  failed.sqlstate = "22012";
  p.tasks.push_back(failed);
  p.run_locally = {false, false, false, true};
  p.tasks_retried = 2;
  return p;
}

TEST(PoolMessageTest, AResponseKeepsWhatRunTasksShows) {
  std::vector<char> area(4096);
  const size_t n = EncodeResponse(FourResults(), area.data(), area.size(), "the_setting");
  ASSERT_GT(n, 0u);
  absl::StatusOr<PoolResponse> back = DecodeResponse(area.data(), n);
  ASSERT_TRUE(back.ok()) << back.status();
  ASSERT_TRUE(back->status.ok());
  ASSERT_EQ(back->tasks.size(), 4u);
  EXPECT_EQ(back->tasks_retried, 2);
  EXPECT_THAT(back->run_locally, ::testing::ElementsAre(false, false, false, true));
  EXPECT_EQ(back->tasks[0].rows[0][0], "42");
  EXPECT_EQ(back->tasks[0].row_count, 1);
  EXPECT_EQ(back->tasks[0].connection, 3);
  EXPECT_EQ(back->tasks[0].queued, absl::Microseconds(120));
  EXPECT_EQ(back->tasks[0].run, absl::Microseconds(450));
  EXPECT_EQ(back->tasks[0].node, (NodeAddress{"w", 1}));
  ASSERT_EQ(back->tasks[1].rows.size(), 1u);
  EXPECT_EQ(back->tasks[1].rows[0][0], std::nullopt);
  EXPECT_TRUE(back->tasks[2].rows.empty()) << "more than one row: only the tag";
  EXPECT_EQ(back->tasks[2].command_tag, "SELECT 5");
  EXPECT_EQ(back->tasks[2].row_count, 5);
  EXPECT_EQ(back->tasks[3].status.code(), absl::StatusCode::kUnknown);
  EXPECT_EQ(back->tasks[3].status.message(), "node w:1: division by zero");
  EXPECT_EQ(back->tasks[3].sqlstate, "22012");
  for (size_t cut = 0; cut < n; ++cut) {
    std::vector<char> part(area.begin(), area.begin() + cut);
    EXPECT_FALSE(DecodeResponse(part.data(), part.size()).ok()) << cut;
  }
}

TEST(PoolMessageTest, AValueTooLargeForTheAreaFailsThatTaskOnly) {
  PoolResponse p = FourResults();
  p.tasks[1] = Value(std::string(3000, 'v'));
  std::vector<char> area(1024);
  const size_t n = EncodeResponse(p, area.data(), area.size(), "connthrottle.pool_message_bytes");
  absl::StatusOr<PoolResponse> back = DecodeResponse(area.data(), n);
  ASSERT_TRUE(back.ok()) << back.status();
  ASSERT_EQ(back->tasks.size(), 4u);
  EXPECT_EQ(back->tasks[0].rows[0][0], "42");
  EXPECT_EQ(back->tasks[1].sqlstate, "54000");
  EXPECT_THAT(std::string(back->tasks[1].status.message()),
              HasSubstr("does not fit in connthrottle.pool_message_bytes"));
  EXPECT_EQ(back->tasks[3].sqlstate, "22012");
}

// What crosses the area in parts: ResponseBytes is exactly what a whole
// encoding takes, and a buffer of that size keeps every value uncut.
TEST(PoolMessageTest, ResponseBytesIsWhatTheWholeResponseTakes) {
  PoolResponse p = FourResults();
  p.tasks[1] = Value(std::string(300000, 'v'));
  const size_t whole = ResponseBytes(p);
  EXPECT_GT(whole, 300000u);
  std::vector<char> buffer(whole);
  EXPECT_EQ(EncodeResponse(p, buffer.data(), buffer.size(), "s"), whole);
  absl::StatusOr<PoolResponse> back = DecodeResponse(buffer.data(), whole);
  ASSERT_TRUE(back.ok()) << back.status();
  ASSERT_EQ(back->tasks.size(), 4u);
  EXPECT_EQ(back->tasks[1].rows[0][0], std::string(300000, 'v'));
  EXPECT_EQ(back->tasks[3].sqlstate, "22012");
  // One byte less and the big value no longer fits whole.
  std::vector<char> smaller(whole - 1);
  back = DecodeResponse(smaller.data(), EncodeResponse(p, smaller.data(), smaller.size(), "s"));
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_EQ(back->tasks[1].sqlstate, "54000");

  PoolResponse error;
  error.status = absl::UnavailableError("gone");
  error.sqlstate = "08006";
  std::vector<char> area(512);
  EXPECT_EQ(ResponseBytes(error), EncodeResponse(error, area.data(), area.size(), "s"));
}

TEST(PoolMessageTest, ResultsThatCannotFitAtAllBecomeOneError) {
  PoolResponse p;
  for (int t = 0; t < 200; ++t) p.tasks.push_back(Value("x"));
  std::vector<char> area(256);
  const size_t n = EncodeResponse(p, area.data(), area.size(), "the_setting");
  absl::StatusOr<PoolResponse> back = DecodeResponse(area.data(), n);
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_EQ(back->sqlstate, "54000");
  EXPECT_THAT(std::string(back->status.message()), HasSubstr("the_setting"));
}

TEST(PoolMessageTest, AnErrorResponseCarriesItsSqlstate) {
  PoolResponse p;
  p.status = absl::UnavailableError("connthrottle: the communicator was terminated");
  p.sqlstate = "57P01";
  std::vector<char> area(512);
  const size_t n = EncodeResponse(p, area.data(), area.size(), "s");
  absl::StatusOr<PoolResponse> back = DecodeResponse(area.data(), n);
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_EQ(back->status, p.status);
  EXPECT_EQ(back->sqlstate, "57P01");
  EXPECT_TRUE(back->tasks.empty());
}

}  // namespace
}  // namespace connthrottle::pg

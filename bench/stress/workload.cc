// The workload's operations and their SQL: parsing and drawing --mix, and
// the tasks a fan-out, a router or a COPY operation gives the workers.

#include "stress/workload.h"

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "stress/cluster.h"

namespace connthrottle::stress {
namespace {

// The rows of the shard table on every worker (PrepareWorker).
constexpr int kShardRows = 20000;

// The SQL of fan-out task t of an execution keyed `key` (--fanout_task).
std::string FanoutTask(const Options& options, int key, int t) {
  if (options.fanout_task == "sleep") {
    return absl::StrCat("SELECT payload, pg_sleep(0.01) FROM shard WHERE id = ",
                        (key + t * 997) % kShardRows + 1);
  }
  if (options.fanout_task == "short") {
    return absl::StrCat("SELECT payload FROM shard WHERE id = ", (key + t * 997) % kShardRows + 1);
  }
  return absl::StrCat("SELECT count(*) FROM shard WHERE id % 16 = ", (key + t) % 16);
}

}  // namespace

const char* OpName(Op op) {
  switch (op) {
    case Op::kFanout:
      return "fanout";
    case Op::kRouter:
      return "router";
    case Op::kCopy:
      return "copy";
  }
  return "?";
}

Mix Mix::Parse(const std::string& text, bool library) {
  Mix m;
  for (absl::string_view part : absl::StrSplit(text, ',', absl::SkipEmpty())) {
    std::vector<std::string> kv = absl::StrSplit(part, '=');
    int weight = 1;
    if (kv.size() == 2 && !absl::SimpleAtoi(kv[1], &weight)) Die("bad --mix weight");
    Op op;
    if (kv[0] == "fanout") {
      op = Op::kFanout;
    } else if (kv[0] == "router") {
      op = Op::kRouter;
    } else if (kv[0] == "copy") {
      if (library) continue;  // COPY is exercised through the extension
      op = Op::kCopy;
    } else {
      Die(absl::StrCat("unknown --mix workload '", kv[0], "'"));
    }
    if (weight > 0) {
      m.weights.emplace_back(op, weight);
      m.total += weight;
    }
  }
  if (m.total == 0) Die("--mix selects no workload");
  return m;
}

Op Mix::Pick(std::mt19937_64& rng) const {
  int r = static_cast<int>(rng() % static_cast<uint64_t>(total));
  for (const auto& [op, w] : weights) {
    if (r < w) return op;
    r -= w;
  }
  return weights.back().first;
}

int RandomKey(std::mt19937_64& rng) { return static_cast<int>(rng() % kShardRows) + 1; }

std::vector<WorkerTask> OperationTasks(const Options& options, Op op, int key, size_t workers,
                                       std::mt19937_64& rng) {
  std::vector<WorkerTask> tasks;
  switch (op) {
    case Op::kFanout:
      for (size_t w = 0; w < workers; ++w) {
        for (int t = 0; t < options.tasks_per_worker; ++t) {
          tasks.push_back({w, FanoutTask(options, key, t)});
        }
      }
      break;
    case Op::kRouter:
      tasks.push_back(
          {rng() % workers, absl::StrCat("SELECT payload FROM shard WHERE id = ", key)});
      break;
    case Op::kCopy:
      for (size_t w = 0; w < workers; ++w) tasks.push_back({w, ""});
      break;
  }
  return tasks;
}

bool TooManyClients(const std::string& sqlstate, const std::string& message) {
  return sqlstate == "53300" || message.find("too many clients") != std::string::npos ||
         message.find("remaining connection slots") != std::string::npos;
}

}  // namespace connthrottle::stress

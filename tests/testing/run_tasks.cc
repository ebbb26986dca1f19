#include "tests/testing/run_tasks.h"

#include <chrono>
#include <latch>
#include <sstream>
#include <thread>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"

namespace connthrottle::cluster {
namespace {

int ToInt(const std::optional<std::string>& v) { return v.has_value() ? std::stoi(*v) : 0; }

}  // namespace

// A PostgreSQL array literal of text elements ({"a","b"}), for a $n::text[] parameter.
std::string TextArray(const std::vector<std::string>& items) {
  std::vector<std::string> quoted;
  for (const std::string& item : items) {
    std::string q = "\"";
    for (char c : item) {
      if (c == '"' || c == '\\') q.push_back('\\');
      q.push_back(c);
    }
    q.push_back('"');
    quoted.push_back(std::move(q));
  }
  return absl::StrCat("{", absl::StrJoin(quoted, ","), "}");
}

std::string IntArray(const std::vector<int>& items) {
  return absl::StrCat("{", absl::StrJoin(items, ","), "}");
}

std::ostream& operator<<(std::ostream& os, const TaskRow& r) {
  return os << "{task " << r.task << ", " << r.host << ":" << r.port << ", success " << r.success
            << ", result " << r.result.value_or("NULL") << ", sqlstate "
            << r.sqlstate.value_or("NULL") << ", error " << r.error.value_or("NULL")
            << ", ran_locally " << r.ran_locally << "}";
}

std::vector<std::optional<std::string>> RunTasksParams(const std::vector<TaskSpec>& tasks) {
  std::vector<std::string> hosts, sqls;
  std::vector<int> ports;
  for (const TaskSpec& t : tasks) {
    hosts.push_back(t.host);
    ports.push_back(t.port);
    sqls.push_back(t.sql);
  }
  return {TextArray(hosts), IntArray(ports), TextArray(sqls)};
}

absl::StatusOr<std::vector<TaskRow>> RunTasks(PgClient& c, const std::vector<TaskSpec>& tasks) {
  absl::StatusOr<QueryResult> r = c.Query(
      "SELECT task, host, port, success, result, sqlstate, error, ran_locally, connection "
      "FROM connthrottle.run_tasks($1::text[], $2::int[], $3::text[]) ORDER BY task",
      RunTasksParams(tasks));
  if (!r.ok()) return r.status();
  std::vector<TaskRow> rows;
  for (const auto& row : r->rows) {
    TaskRow t;
    t.task = ToInt(row[0]);
    t.host = row[1].value_or("");
    t.port = ToInt(row[2]);
    t.success = row[3] == "t";
    t.result = row[4];
    t.sqlstate = row[5];
    t.error = row[6];
    t.ran_locally = row[7] == "t";
    t.connection = row[8];
    rows.push_back(std::move(t));
  }
  return rows;
}

SessionRuns RunSessionsUntil(std::vector<std::unique_ptr<PgClient>>& clients,
                             const std::vector<TaskSpec>& tasks, int min_executions,
                             const std::function<bool()>& more) {
  SessionRuns out{std::vector<std::string>(clients.size()), std::vector<int>(clients.size(), 0)};
  std::latch go(static_cast<std::ptrdiff_t>(clients.size()));
  std::vector<std::thread> sessions;
  for (size_t i = 0; i < clients.size(); ++i) {
    sessions.emplace_back([&, i] {
      go.arrive_and_wait();
      const auto give_up = std::chrono::steady_clock::now() + std::chrono::seconds(120);
      while ((out.executions[i] < min_executions || more()) &&
             std::chrono::steady_clock::now() < give_up && out.failures[i].empty()) {
        absl::StatusOr<std::vector<TaskRow>> rows = RunTasks(*clients[i], tasks);
        if (!rows.ok()) {
          out.failures[i] = rows.status().ToString();
          break;
        }
        for (const TaskRow& r : *rows) {
          if (r.success) continue;
          std::ostringstream failure;
          failure << r;
          out.failures[i] = failure.str();
        }
        ++out.executions[i];
      }
    });
  }
  for (std::thread& t : sessions) t.join();
  return out;
}

}  // namespace connthrottle::cluster

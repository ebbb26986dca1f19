// The monitor's sampling: one connection per worker (reconnected after a
// restart), raised in priority where the driver may, and one count of the
// coordinators' connections per worker, and per database and per
// coordinator, every interval.

#include "stress/sampler.h"

#include <sys/resource.h>
#include <unistd.h>

#include <algorithm>
#include <cstdlib>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"

namespace connthrottle::stress {

Sampler::Sampler(const Cluster& cluster, absl::Duration interval)
    : cluster_(cluster),
      interval_(interval),
      databases_(cluster.databases.size()),
      coordinators_(cluster.coordinator_ids.size()) {
  // One row: the total, then with several databases a count per database,
  // then with several coordinators a count per coordinator.
  query_ = "SELECT count(*)";
  int param = 0;
  if (databases_ > 1) {
    for (const std::string& database : cluster.databases) {
      absl::StrAppend(&query_, ", count(*) FILTER (WHERE datname = $", ++param, ")");
      params_.push_back(database);
    }
  }
  for (size_t c = 0; c < coordinators_; ++c) {
    absl::StrAppend(&query_, ", count(*) FILTER (WHERE application_name = $", ++param, ")");
    params_.push_back(CoordinatorApplication(cluster, c));
  }
  absl::StrAppend(&query_,
                  " FROM pg_stat_activity WHERE application_name = 'connthrottle' OR "
                  "application_name LIKE 'connthrottle/%'");
  for (const Endpoint& w : cluster.workers) {
    auto c = cluster.Connect(w, "connthrottle-monitor");
    if (!c.ok()) Die(std::string(c.status().message()));
    clients_.push_back(*std::move(c));
    Boost(*clients_.back());
  }
  latest_.assign(cluster.workers.size(), 0);
}

void Sampler::Start(absl::Time start) {
  start_ = start;
  thread_ = std::thread([this] { Loop(); });
}

void Sampler::Stop() {
  stop_ = true;
  if (thread_.joinable()) thread_.join();
}

std::vector<Sample> Sampler::samples() {
  std::lock_guard<std::mutex> lock(mu_);
  return samples_;
}

std::vector<int> Sampler::latest() {
  std::lock_guard<std::mutex> lock(mu_);
  return latest_;
}

// The monitor is the measuring instrument: on a machine the load saturates
// (the clients and the workers share its cores) a starved monitor would
// sample too rarely and fail the run for it. So the sampling thread, and
// the worker backends serving it when the driver started the cluster
// itself, run at a higher priority (nice -10) when the driver may raise
// one (as root). Without that privilege nothing changes.
void Sampler::Boost(const PgClient& client) const {
  if (cluster_.root.empty() || geteuid() != 0) return;
  setpriority(PRIO_PROCESS, static_cast<id_t>(client.BackendPid()), kMonitorNice);
}

// Connections from the coordinators (application_name connthrottle, or
// connthrottle/<id> with several, as the extension names them) that
// `client`'s worker has now in all, and with several databases or
// coordinators per database and per coordinator. False when the query
// failed.
bool Sampler::Count(PgClient& client, int* total, std::vector<int>* per_database,
                    std::vector<int>* per_coordinator) const {
  absl::StatusOr<cluster::QueryResult> r = client.Query(query_, params_);
  const size_t columns = 1 + (databases_ > 1 ? databases_ : 0) + coordinators_;
  if (!r.ok() || r->rows.size() != 1 || r->rows[0].size() != columns) return false;
  const std::vector<std::optional<std::string>>& row = r->rows[0];
  auto at = [&](size_t i) { return std::atoi(row[i].value_or("0").c_str()); };
  *total = at(0);
  size_t i = 1;
  for (; databases_ > 1 && i <= databases_; ++i) per_database->push_back(at(i));
  for (size_t c = 0; c < coordinators_; ++c) per_coordinator->push_back(at(i++));
  return true;
}

// One count per worker; a worker that does not answer counts 0, and is
// reconnected to at the next sample.
Sample Sampler::TakeSample() {
  Sample s;
  for (size_t w = 0; w < clients_.size(); ++w) {
    int n = -1;
    std::vector<int> per_database, per_coordinator;
    if (clients_[w] != nullptr) {
      if (!Count(*clients_[w], &n, &per_database, &per_coordinator)) {
        n = -1;
        per_database.clear();
        per_coordinator.clear();
        clients_[w].reset();  // the worker restarted: reconnect next time
      }
    } else {
      auto c = cluster_.Connect(cluster_.workers[w], "connthrottle-monitor");
      if (c.ok()) {
        clients_[w] = *std::move(c);
        Boost(*clients_[w]);
      }
    }
    s.coordinator_connections.push_back(std::max(n, 0));
    if (databases_ > 1) {
      per_database.resize(databases_, 0);
      s.per_database.push_back(std::move(per_database));
    }
    if (coordinators_ > 1) {
      per_coordinator.resize(coordinators_, 0);
      s.per_coordinator.push_back(std::move(per_coordinator));
    }
  }
  return s;
}

void Sampler::Loop() {
  if (geteuid() == 0) setpriority(PRIO_PROCESS, static_cast<id_t>(gettid()), kMonitorNice);
  while (!stop_) {
    const absl::Time tick = absl::Now();
    Sample s = TakeSample();
    s.at = tick - start_;
    {
      std::lock_guard<std::mutex> lock(mu_);
      samples_.push_back(s);
      latest_ = s.coordinator_connections;
    }
    absl::SleepFor(interval_ - (absl::Now() - tick));  // pacing, not synchronisation
  }
}

}  // namespace connthrottle::stress

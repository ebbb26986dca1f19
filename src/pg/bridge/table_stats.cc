// table_stats.cc — the shared table's figures as plain rows.

#include "pg/bridge/table_stats.h"

#include <vector>

#include "pg/bridge/internal/backend_state.h"
#include "pg/bridge/internal/outcome.h"

namespace connthrottle::pg {
namespace {

// The figures node rows and holder rows share, from the table's KeyStats or
// Holding.
template <typename Row, typename Figures>
void CopyKeyFigures(Row& row, const Figures& f) {
  CopyHost(row.host, f.host);
  row.port = f.port;
  row.connections = f.connections;
  row.forced = f.forced;
  row.reserved = f.reserved;
  row.per_database = f.database.has_value();
  row.database = f.database.value_or(0);
}

}  // namespace

Outcome NodeStats(NodeRow* out, int max, int* count) {
  return Guard([&] {
    *count = 0;
    if (!TableReady()) return NotReady();
    for (const KeyStats& k : S().table->Snapshot()) {
      if (*count >= max) break;
      NodeRow& row = out[(*count)++];
      CopyKeyFigures(row, k);
      row.waiters = k.waiters;
      row.acquired = k.acquired;
      row.refused = k.refused;
      row.waited = k.waited;
      row.forced_total = k.forced_total;
      row.wakeups = k.wakeups;
      row.cached = k.parked;
      row.wait_time_us = absl::ToInt64Microseconds(k.wait_time);
    }
    return Outcome{};
  });
}

Outcome Holders(const HolderRow** rows, int* count) {
  return Guard([&] {
    *count = 0;
    if (!TableReady()) return NotReady();
    std::vector<HolderRow>& out = S().holder_rows;
    out.clear();
    for (const Holding& h : S().table->Holders()) {
      HolderRow& row = out.emplace_back();
      row.pid = h.pid;
      CopyKeyFigures(row, h);
      row.waiting = h.waiting;
    }
    *rows = out.data();
    *count = static_cast<int>(out.size());
    return Outcome{};
  });
}

Outcome TableStatistics(TableRow* out) {
  return Guard([&] {
    if (!TableReady()) return NotReady();
    TableStats t = S().table->Stats();
    *out = TableRow{t.capacity,
                    t.entries_in_use,
                    t.owners,
                    t.max_owners,
                    t.uncounted_in_use,
                    t.full_table_events,
                    t.entries_created,
                    t.entries_dropped,
                    t.acquired,
                    t.refused,
                    t.waited,
                    t.forced_total,
                    absl::ToInt64Microseconds(t.wait_time),
                    t.wakeups};
    return Outcome{};
  });
}

Outcome Audit() {
  return Guard([] {
    if (!TableReady()) return NotReady();
    return FromStatus(S().table->Audit());
  });
}

uint64_t FullTableEvents() { return TableReady() ? S().table->FullTableEvents() : 0; }

uint32_t Capacity() { return TableReady() ? S().table->options().capacity : 0; }

}  // namespace connthrottle::pg

#include "tests/testing/pauses.h"

#include "core/internal/test_hooks.h"

namespace connthrottle::testing {

thread_local Pauses::Role Pauses::role = Pauses::kNone;

Pauses& Pauses::Get() {
  static Pauses* pauses = new Pauses();
  return *pauses;
}

void Pauses::Install() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    for (Gate& gate : gates_) gate = Gate();
    counts_.clear();
  }
  internal::test_hook.store(&Pauses::Hook);
}

void Pauses::Uninstall() { internal::test_hook.store(nullptr); }

void Pauses::Arm(Role r, const std::string& point) {
  std::lock_guard<std::mutex> lock(mu_);
  Gate& gate = gates_[r];
  gate.point = point;
  gate.armed = true;
  gate.arrived = false;
}

void Pauses::AwaitArrival(Role r) {
  std::unique_lock<std::mutex> lock(mu_);
  changed_.wait(lock, [&] { return gates_[r].arrived; });
}

bool Pauses::AwaitArrivalOr(Role r, const bool* done) {
  std::unique_lock<std::mutex> lock(mu_);
  const Gate& gate = gates_[r];
  changed_.wait(lock, [&] { return gate.arrived || *done; });
  return gate.arrived;
}

void Pauses::Open(Role r) {
  std::lock_guard<std::mutex> lock(mu_);
  ++gates_[r].opened;
  changed_.notify_all();
}

void Pauses::Done(bool* done) {
  std::lock_guard<std::mutex> lock(mu_);
  *done = true;
  changed_.notify_all();
}

int Pauses::Count(const std::string& point) {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = counts_.find(point);
  return it == counts_.end() ? 0 : it->second;
}

void Pauses::Hook(const char* point) { Get().Reached(point); }

void Pauses::Reached(const char* point) {
  std::unique_lock<std::mutex> lock(mu_);
  ++counts_[point];
  if (role == kNone) return;
  Gate& gate = gates_[role];
  if (!gate.armed || gate.arrived || gate.point != point) return;
  gate.arrived = true;
  gate.armed = false;
  changed_.notify_all();
  const int ticket = gate.opened;
  changed_.wait(lock, [&] { return gate.opened > ticket; });
}

}  // namespace connthrottle::testing

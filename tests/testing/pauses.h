// Test helper: stops threads at named points of the shared-memory protocol.
//
// A deterministic test of a race plays one interleaving: it stops a thread
// at an exact step (internal/test_hooks.h names them), lets another thread
// run, then lets the first go on. A thread takes part under a role; each role
// has one gate, which the test arms at a point: the next thread of that role
// to reach the point stops there until the test opens the gate. Every point
// reached by any thread is also counted, so a test can assert that a step
// (say, a lock takeover) happened exactly as often as it should.
//
// One Pauses per process (Get). Install it in SetUp and Uninstall it in
// TearDown, while no table operation runs. Thread-safe.

#ifndef CONNTHROTTLE_TESTS_TESTING_PAUSES_H_
#define CONNTHROTTLE_TESTS_TESTING_PAUSES_H_

#include <condition_variable>
#include <map>
#include <mutex>
#include <string>

namespace connthrottle::testing {

class Pauses {
 public:
  enum Role { kNone = 0, kFirst = 1, kSecond = 2, kRoles = 3 };
  // The calling thread's role; kNone threads are counted but never stopped.
  static thread_local Role role;

  static Pauses& Get();

  // Installs the hook and forgets earlier counts and gates.
  void Install();
  void Uninstall();

  // Stops the next thread of role r that reaches `point`.
  void Arm(Role r, const std::string& point);
  // Waits until r's gate holds a thread.
  void AwaitArrival(Role r);
  // Waits until r's gate holds a thread or *done (set with Done) is true.
  // Returns whether a thread arrived.
  bool AwaitArrivalOr(Role r, const bool* done);
  // Lets the thread stopped at r's gate go on (the gate may be armed again
  // before, for the thread's next point).
  void Open(Role r);
  // Sets *done under the helper's lock and wakes AwaitArrivalOr.
  void Done(bool* done);

  // Times any thread reached `point` since Install.
  int Count(const std::string& point);

 private:
  struct Gate {
    std::string point;
    bool armed = false;
    bool arrived = false;
    int opened = 0;  // times the test let a stopped thread go
  };

  static void Hook(const char* point);
  void Reached(const char* point);

  // std, not absl::Mutex: ThreadSanitizer sees the std (pthread) primitives
  // even when Abseil is a prebuilt, uninstrumented library.
  std::mutex mu_;
  std::condition_variable changed_;
  Gate gates_[kRoles];
  std::map<std::string, int> counts_;
};

}  // namespace connthrottle::testing

#endif  // CONNTHROTTLE_TESTS_TESTING_PAUSES_H_

#include "connthrottle/executor/standalone_context.h"

namespace connthrottle {

void StandaloneContext::set_limits(const PoolLimits& limits) {
  std::lock_guard<std::mutex> lock(limits_mu_);
  settings_.limits = limits;
}

ConnParams StandaloneContext::ParamsFor(const NodeAddress& node) {
  ConnParams p;
  p.Set("host", node.host)
      .Set("port", std::to_string(node.port))
      .Set("dbname", settings_.database)
      .Set("user", settings_.user)
      .Set("application_name", settings_.application_name);
  if (!settings_.password.empty()) p.Set("password", settings_.password);
  return p;
}

bool StandaloneContext::IsLocal(const NodeAddress& node) {
  return settings_.local_node.has_value() && *settings_.local_node == node;
}

Limit StandaloneContext::LimitFor(const NodeAddress&, bool local) {
  std::lock_guard<std::mutex> lock(limits_mu_);
  return Limit::ForNode(settings_.limits, local, active_client_backends_.load());
}

TaskResult StandaloneContext::RunLocally(const Task& task) {
  if (settings_.run_locally) return settings_.run_locally(task);
  return ExecutionContext::RunLocally(task);
}

}  // namespace connthrottle

// The communicator's copy of the settings
// connthrottle/executor/shared_pool_settings.def declares: each setting's
// integer, in its unit, in a member named for the SharedPoolOptions member it
// fills. module.cc's settings are the members of one PoolSettings, the
// communicator passes a copy to the pool service after each reload, and the
// service makes the pool's options from it (ApplyPoolSettings).
// Plain C++: no PostgreSQL header.

#ifndef CONNTHROTTLE_SRC_PG_BRIDGE_POOL_SETTINGS_H_
#define CONNTHROTTLE_SRC_PG_BRIDGE_POOL_SETTINGS_H_

namespace connthrottle::pg {

struct PoolSettings {
#define CONNTHROTTLE_POOL_SETTING(field, unit, default_value, ...) int field = default_value;
#include "connthrottle/executor/shared_pool_settings.def"
};

// Each setting's name, by member: pool_setting_name::result_memory is
// "connthrottle.pool_response_memory".
namespace pool_setting_name {
#define CONNTHROTTLE_POOL_SETTING(field, unit, default_value, min, max, name, ...) \
  inline constexpr char field[] = name;
#include "connthrottle/executor/shared_pool_settings.def"
}  // namespace pool_setting_name

}  // namespace connthrottle::pg

#endif  // CONNTHROTTLE_SRC_PG_BRIDGE_POOL_SETTINGS_H_

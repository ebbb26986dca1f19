# The extension's SQL script, made from sql/connthrottle--1.0.sql.in: the
# OUT columns of pool_stats() come from the figures
# include/connthrottle/executor/shared_pool_stats.def declares, so that the
# library's values and the script's columns are one list.

# Sets `out_var` to pool_stats()'s OUT columns: pid and starts, then one
# bigint per figure of `def_file` in its order, filled to 96 columns and
# indented by four (as the script was written by hand). Re-runs CMake when
# `def_file` changes.
function(connthrottle_pool_stats_columns def_file out_var)
  set_property(DIRECTORY APPEND PROPERTY CMAKE_CONFIGURE_DEPENDS "${def_file}")
  file(READ "${def_file}" text)
  string(REGEX MATCHALL "\nCONNTHROTTLE_[A-Z_]*\\(" lines "${text}")
  string(REGEX MATCHALL "\nCONNTHROTTLE_(POOL|COMMUNICATOR)_STAT\\([a-z0-9_]+\\)" figures
         "${text}")
  list(LENGTH lines line_count)
  list(LENGTH figures figure_count)
  if(NOT line_count EQUAL figure_count OR figure_count EQUAL 0)
    message(FATAL_ERROR "${def_file}: ${line_count} lines declare figures, ${figure_count} of "
                        "them as CONNTHROTTLE_POOL_STAT(name) or CONNTHROTTLE_COMMUNICATOR_STAT(name)")
  endif()
  set(columns "OUT pid integer" "OUT starts bigint")
  foreach(figure IN LISTS figures)
    string(REGEX REPLACE ".*\\(([a-z0-9_]+)\\)" "OUT \\1 bigint" column "${figure}")
    list(APPEND columns "${column}")
  endforeach()
  list(LENGTH columns left)
  set(text "")
  set(line "   ")
  foreach(column IN LISTS columns)
    math(EXPR left "${left} - 1")
    if(left GREATER 0)
      string(APPEND column ",")
    endif()
    string(LENGTH "${line} ${column}" width)
    if(width GREATER 96 AND NOT line STREQUAL "   ")
      string(APPEND text "${line}\n")
      set(line "    ${column}")
    else()
      string(APPEND line " ${column}")
    endif()
  endforeach()
  string(APPEND text "${line}")
  set(${out_var} "${text}" PARENT_SCOPE)
endfunction()

# Writes `output` from sql/connthrottle--1.0.sql.in.
function(connthrottle_sql_script output)
  connthrottle_pool_stats_columns(
    ${PROJECT_SOURCE_DIR}/include/connthrottle/executor/shared_pool_stats.def
    CONNTHROTTLE_POOL_STATS_COLUMNS)
  configure_file(${PROJECT_SOURCE_DIR}/sql/connthrottle--1.0.sql.in "${output}" @ONLY)
endfunction()

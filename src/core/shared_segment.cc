#include "connthrottle/shared_segment.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <random>

#include "absl/cleanup/cleanup.h"
#include "absl/strings/str_cat.h"

namespace connthrottle {
namespace {

constexpr char kDirectory[] = "/dev/shm/";

std::string PathOf(std::string_view name) { return absl::StrCat(kDirectory, std::string(name)); }

absl::Status ErrnoStatus(int err, std::string_view what) {
  std::string message = absl::StrCat(std::string(what), ": ", strerror(err));
  switch (err) {
    case ENOENT:
      return absl::NotFoundError(message);
    case EACCES:
    case EPERM:
      return absl::PermissionDeniedError(message);
    case ELOOP:  // O_NOFOLLOW: a symbolic link where the segment should be
      return absl::PermissionDeniedError(absl::StrCat(message, " (a symbolic link is refused)"));
    case ENOSPC:
    case ENOMEM:
    case EMFILE:
    case ENFILE:
      return absl::ResourceExhaustedError(message);
    default:
      return absl::InternalError(message);
  }
}

}  // namespace

absl::Status SharedSegment::ValidateName(std::string_view name) {
  if (name.empty() || name.size() > 200) {
    return absl::InvalidArgumentError(
        absl::StrCat("segment name must be 1..200 characters, got ", name.size()));
  }
  if (name.front() == '.') {
    return absl::InvalidArgumentError(
        absl::StrCat("segment name \"", std::string(name), "\" must not start with '.'"));
  }
  for (char c : name) {
    bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '.' || c == '_' || c == '-';
    if (!ok) {
      return absl::InvalidArgumentError(
          absl::StrCat("segment name \"", std::string(name), "\" may only contain [A-Za-z0-9._-]"));
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<std::unique_ptr<SharedSegment>> SharedSegment::CreateOrAttach(
    std::string_view name, const TableOptions& requested) {
  if (absl::Status s = ValidateName(name); !s.ok()) return s;
  TableOptions options = requested;
  options.reclaim_dead_owners = true;
  absl::StatusOr<size_t> bytes = CounterTable::RequiredBytes(options);
  if (!bytes.ok()) return bytes.status();

  // Fast path: it exists already.
  absl::StatusOr<std::unique_ptr<SharedSegment>> existing = OpenExisting(name, &options);
  if (!absl::IsNotFound(existing.status())) return existing;

  // Build the table under a private temporary name, then publish it with
  // link(), which fails if someone else published first.
  std::random_device random;
  std::string temp = absl::StrCat(kDirectory, ".", std::string(name), ".", getpid(), ".", random());
  int fd = open(temp.c_str(), O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, 0600);
  if (fd < 0) return ErrnoStatus(errno, absl::StrCat("cannot create ", temp));
  absl::Cleanup close_and_unlink = [&] {
    close(fd);
    unlink(temp.c_str());
  };
  if (fchmod(fd, 0600) != 0) return ErrnoStatus(errno, absl::StrCat("cannot chmod ", temp));
  if (ftruncate(fd, static_cast<off_t>(*bytes)) != 0) {
    return ErrnoStatus(errno, absl::StrCat("cannot size ", temp, " to ", *bytes, " bytes"));
  }
  void* base = mmap(nullptr, *bytes, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  if (base == MAP_FAILED) return ErrnoStatus(errno, absl::StrCat("cannot map ", temp));
  absl::StatusOr<CounterTable> table = CounterTable::Initialize(base, *bytes, options);
  if (!table.ok()) {
    munmap(base, *bytes);
    return table.status();
  }
  if (link(temp.c_str(), PathOf(name).c_str()) != 0) {
    int err = errno;
    munmap(base, *bytes);
    if (err == EEXIST) return OpenExisting(name, &options);  // lost the race
    return ErrnoStatus(err, absl::StrCat("cannot publish ", PathOf(name)));
  }
  return std::unique_ptr<SharedSegment>(
      new SharedSegment(std::string(name), base, *bytes, *table, /*created=*/true));
}

absl::StatusOr<std::unique_ptr<SharedSegment>> SharedSegment::Attach(std::string_view name) {
  if (absl::Status s = ValidateName(name); !s.ok()) return s;
  return OpenExisting(name, nullptr);
}

absl::Status SharedSegment::Remove(std::string_view name) {
  if (absl::Status s = ValidateName(name); !s.ok()) return s;
  if (unlink(PathOf(name).c_str()) != 0) {
    return ErrnoStatus(errno, absl::StrCat("cannot remove ", PathOf(name)));
  }
  return absl::OkStatus();
}

SharedSegment::~SharedSegment() { munmap(base_, size_); }

absl::StatusOr<std::unique_ptr<SharedSegment>> SharedSegment::OpenExisting(
    std::string_view name, const TableOptions* expected) {
  std::string path = PathOf(name);
  int fd = open(path.c_str(), O_RDWR | O_CLOEXEC | O_NOFOLLOW);
  if (fd < 0) return ErrnoStatus(errno, absl::StrCat("cannot open segment ", path));
  absl::Cleanup closer = [fd] { close(fd); };
  struct stat st;
  if (fstat(fd, &st) != 0) return ErrnoStatus(errno, absl::StrCat("cannot stat ", path));
  if (st.st_uid != geteuid()) {
    return absl::PermissionDeniedError(absl::StrCat("segment ", path, " belongs to uid ", st.st_uid,
                                                    ", not to this user (uid ", geteuid(), ")"));
  }
  if ((st.st_mode & 07777) != 0600) {
    return absl::PermissionDeniedError(absl::StrCat(
        "segment ", path, " has mode 0", absl::Hex(st.st_mode & 07777), "; expected 0600"));
  }
  size_t size = static_cast<size_t>(st.st_size);
  if (size < 64) {
    return absl::FailedPreconditionError(
        absl::StrCat("segment ", path, " is ", size, " bytes: it holds no counter table"));
  }
  void* base = mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  if (base == MAP_FAILED) return ErrnoStatus(errno, absl::StrCat("cannot map ", path));
  absl::StatusOr<CounterTable> table = CounterTable::Attach(base, size);
  if (!table.ok()) {
    munmap(base, size);
    return absl::FailedPreconditionError(
        absl::StrCat("segment ", path, ": ", table.status().message()));
  }
  if (expected != nullptr) {
    TableOptions actual = table->options();
    if (actual.capacity != expected->capacity || actual.max_owners != expected->max_owners) {
      munmap(base, size);
      return absl::FailedPreconditionError(
          absl::StrCat("segment ", path, " holds a table of capacity ", actual.capacity, " for ",
                       actual.max_owners, " owners; requested capacity ", expected->capacity,
                       " for ", expected->max_owners));
    }
  }
  return std::unique_ptr<SharedSegment>(
      new SharedSegment(std::string(name), base, size, *table, /*created=*/false));
}

}  // namespace connthrottle

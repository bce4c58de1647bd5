"""Every limit of the API, defined once.

The REST shim, the gRPC server, the CLI, the OpenAPI document and the docs'
tables (checked by `tests/unit/test_limits.py`) take them from here; the
Python client reads the ones it needs from `hershy_client.limits`, which a
test keeps equal to these. Pure values, no IO.
"""

from __future__ import annotations

from hershy.domain.model import Resources

KiB = 1024
MiB = 1024 * KiB
GiB = 1024 * MiB

# --- lists and waits ----------------------------------------------------------------------------

#: ListPrograms' page when the caller names no size, and the most one page holds.
DEFAULT_PAGE_SIZE = 100
MAX_PAGE_SIZE = 1000
#: WaitProgram's timeout when the caller gives none, and the longest one may wait.
DEFAULT_WAIT_SECONDS = 60.0
MAX_WAIT_SECONDS = 3600.0

# --- ids ------------------------------------------------------------------------------------------

#: A user id and a program id (regular expressions, matched whole).
USER_ID_PATTERN = r"[a-z0-9][a-z0-9_-]{0,62}"
PROGRAM_ID_PATTERN = r"[a-z0-9][a-z0-9-]{0,62}"

# --- a program's source -------------------------------------------------------------------------

MAX_SOURCE_FILE_BYTES = 32 * MiB
MAX_SOURCE_TOTAL_BYTES = 48 * MiB
MAX_SOURCE_FILES = 10_000
MAX_SOURCE_PATH_BYTES = 255
MAX_SOURCE_PATH_DEPTH = 16

# --- messages and bodies ------------------------------------------------------------------------

#: gRPC messages either way: sources can be tens of MiB (gRPC's default is 4 MiB).
MAX_MESSAGE_BYTES = 64 * MiB
#: A batched Watch snapshot (`snapshot_batch_size`): the most programs one SNAPSHOT message
#: carries, and the bytes past which a batch ends early (well under gRPC's default 4 MiB
#: receive limit, which clients that did not raise it still have; a single program bigger
#: than this goes alone in its message).
MAX_WATCH_SNAPSHOT_BATCH = 1000
MAX_WATCH_SNAPSHOT_BATCH_BYTES = 1 * MiB
#: A REST create's JSON body: the source base64-encoded (4/3), plus room for the rest.
MAX_CREATE_BODY_BYTES = MAX_SOURCE_TOTAL_BYTES * 4 // 3 + 1 * MiB
#: Every other REST body (aiohttp's `client_max_size`), and the small ones (tokens, quotas).
MAX_BODY_BYTES = 1 * MiB
MAX_SMALL_BODY_BYTES = 4096
#: One JSON answer of `GET /programs/{id}/logs` (NDJSON streams have no such limit).
MAX_JSON_LOG_BYTES = 4 * MiB

# --- programs' resources ------------------------------------------------------------------------

#: What a program gets when it asks for nothing (`resources` left at 0).
DEFAULT_RESOURCES = Resources()
#: The most a program may ask for on this Host.
MAX_RESOURCES = Resources(memory_bytes=4 * GiB, milli_cpus=2000, pids=4096, state_bytes=16 * GiB)
#: The least: 16 MiB of state, since ext4 needs a few MiB for itself.
MIN_RESOURCES = Resources(memory_bytes=16 * MiB, milli_cpus=10, pids=16, state_bytes=16 * MiB)

# --- builds (`hershy serve --build-*`; the Docker adapter's `BuildLimits` defaults) ----------

#: Each build's RUN steps: memory (no swap) and host threads (gVisor's own included);
#: all builds together get BUILD_TOTAL_MEMORY_FACTOR and BUILD_TOTAL_PIDS_FACTOR times these.
BUILD_MEMORY_BYTES = 1 * GiB
BUILD_PIDS = 512
BUILD_TOTAL_MEMORY_FACTOR = 2
BUILD_TOTAL_PIDS_FACTOR = 4
#: What a build may write: each RUN step's layer and each image it makes.
BUILD_MAX_IMAGE_BYTES = 1 * GiB
#: No build starts (and a running one is cancelled) while Docker's disk has less free.
BUILD_MIN_FREE_DISK_BYTES = 2 * GiB
#: Builds at once on the Host (`machine_builds_at_once` of a 2-core machine), and per user.
BUILDS_AT_ONCE = 2
BUILDS_AT_ONCE_PER_USER = 1
#: Program containers being created and started at once, per core (each start boots a
#: gVisor sandbox, CPU-bound; waiting for a program to answer holds no slot).
STARTS_AT_ONCE_PER_CORE = 8


def machine_builds_at_once(cores: int, memory_bytes: int) -> int:
    """The Host's default builds at once: one per core (a build's steps are CPU-bound),
    and no more than a quarter of the machine's memory holds at BUILD_MEMORY_BYTES each."""
    return max(1, min(cores, memory_bytes // (4 * BUILD_MEMORY_BYTES)))


def machine_starts_at_once(cores: int) -> int:
    """The Host's bound on program starts at once (`STARTS_AT_ONCE_PER_CORE` per core)."""
    return max(1, cores) * STARTS_AT_ONCE_PER_CORE


# --- fairness -----------------------------------------------------------------------------------

#: Creates one user may have in progress at once (each may carry 48 MiB and 10,000
#: files to write): the rest are refused, not queued, so a flood holds no memory.
MAX_CREATES_IN_PROGRESS_PER_USER = 2

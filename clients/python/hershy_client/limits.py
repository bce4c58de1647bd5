"""The Host's API limits the client needs, in one place.

The same values as the Host's `hershy/domain/limits.py` (the client does not
import the Host); `tests/unit/test_limits.py` keeps the two equal.
"""

from __future__ import annotations

#: ListPrograms: the most one page holds (the Host caps a bigger `page_size` to it).
MAX_PAGE_SIZE = 1000
#: WaitProgram's timeout when none is given, and the longest the Host accepts (seconds).
DEFAULT_WAIT_SECONDS = 60.0
MAX_WAIT_SECONDS = 3600.0
#: gRPC messages either way: sources can be tens of MiB (gRPC's default is 4 MiB).
MAX_MESSAGE_BYTES = 64 * 1024 * 1024
#: A batched Watch snapshot: the most programs the Host puts in one SNAPSHOT message
#: (what the client asks for: its watches take the snapshot in batches).
MAX_WATCH_SNAPSHOT_BATCH = 1000

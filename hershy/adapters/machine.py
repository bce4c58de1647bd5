"""The machine the Host runs on, looked at once: what its bounds are fitted to.

The domain's `limits` turns these into bounds (`machine_builds_at_once`,
`machine_starts_at_once`); this module only reads them (no heavy imports: the
CLI shows the defaults they give).
"""

from __future__ import annotations

import os

#: The cores this process may run on (its CPU affinity, not the machine's count).
CORES = len(os.sched_getaffinity(0))
#: The machine's physical memory.
MEMORY_BYTES = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")

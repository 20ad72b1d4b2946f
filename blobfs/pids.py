"""Whether a process still runs: what leftovers named after their writer's pid are judged by
(``write.atomic``'s replaced trees, ``fuse.overlay``'s private directories)."""
from __future__ import annotations

import os


def alive(pid: int) -> bool:
    """True while ``pid`` exists (also another user's process: kill(2) then fails with EPERM)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True

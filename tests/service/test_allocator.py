import platform

import pytest

from service.allocator import release_freed_memory


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="malloc_trim is glibc's")
def test_freed_memory_is_released_on_glibc() -> None:
    assert release_freed_memory() is True

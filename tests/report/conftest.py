"""The report tests' shared fixture: one headless Chromium per module."""

import os

import pytest

from ..browser import Browser, find_chromium


@pytest.fixture(scope="module")
def browser():
    exe = find_chromium()
    if exe is None:
        if os.environ.get("OVERLAP_AUDIT_SKIP_BROWSER") == "1":
            pytest.skip("OVERLAP_AUDIT_SKIP_BROWSER=1 and no Chromium installed")
        pytest.fail("Chromium is needed for the report.html tests: `apt-get install -y chromium` "
                    "(or set OVERLAP_AUDIT_SKIP_BROWSER=1 to skip them knowingly)")
    b = Browser(exe)
    yield b
    b.close()

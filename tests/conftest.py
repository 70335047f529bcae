"""Suite-wide settings: hypothesis runs a fixed, reproducible set of examples.

The ``ci`` profile (the default) derandomizes hypothesis, so a failure in CI reproduces on any
machine with the same code; ``HYPOTHESIS_PROFILE=explore`` draws fresh random examples locally
(hypothesis then prints the ``@reproduce_failure`` blob of a failing example).

strop's user cache (compiled graphs, the demo's model, verified-file verdicts) goes to a folder of
this session's own unless ``STROP_CACHE`` is set: the suite never reads or writes the user's.
"""

import atexit
import os
import shutil
import tempfile

from hypothesis import settings

settings.register_profile("ci", derandomize=True, print_blob=True)
settings.register_profile("explore", derandomize=False, print_blob=True)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

if not os.environ.get("STROP_CACHE"):  # as strop._cache reads it: empty means unset
    _cache = tempfile.mkdtemp(prefix="strop-test-cache-")
    os.environ["STROP_CACHE"] = _cache
    # removed when the session's process ends (subprocesses of tests have ended by then)
    atexit.register(shutil.rmtree, _cache, ignore_errors=True)

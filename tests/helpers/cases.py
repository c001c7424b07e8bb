"""Tables of small cases folded into one test: each failure names the row that failed."""
import re

import pytest


def raises_for(case, exc, pattern, call):
    """The exception that ``call()`` raises, which must be an ``exc`` (a class or a tuple) whose
    message matches the regular expression ``pattern``; otherwise the test fails naming ``case``,
    so a table of error cases run in one test still says which row broke."""
    try:
        call()
    except exc as error:
        assert re.search(pattern, str(error)), (case, str(error), pattern)
        return error
    except Exception as error:
        pytest.fail(f"{case!r}: raised {type(error).__name__}: {error}, not {exc!r}")
    pytest.fail(f"{case!r}: did not raise {exc!r} matching {pattern!r}")

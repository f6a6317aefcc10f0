"""Values from numpy and pandas reach the driver and JSON as plain Python values, and the
records module loads pandas only where it makes a frame."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from datetime import datetime
from decimal import Decimal

import numpy as np
import pandas as pd
import pytest

from db.records import plain


@pytest.mark.parametrize(("value", "expected", "kind"), [
    (np.int64(2 ** 62), 2 ** 62, int),
    (np.int32(-7), -7, int),
    (np.float32(0.5), 0.5, float),
    (np.float64(0.25), 0.25, float),
    (np.bool_(True), True, bool),
    (np.str_("abc"), "abc", str),
    (pd.Timestamp("2024-05-01 12:30:00.000123"), datetime(2024, 5, 1, 12, 30, 0, 123), datetime),
])
def test_numpy_and_pandas_scalars_become_python_values(value: object, expected: object,
                                                       kind: type) -> None:
    result = plain(value)
    assert result == expected and type(result) is kind
    json.dumps(result, default=str)  # a datetime is the driver's, the rest JSON's


@pytest.mark.parametrize("missing", [None, math.nan, np.float64("nan"), np.float32("nan"),
                                     pd.NA, pd.NaT])
def test_every_missing_value_becomes_none(missing: object) -> None:
    assert plain(missing) is None


@pytest.mark.parametrize("value", [0, 1.5, "text", True, Decimal("1.10"), [np.int64(1)],
                                   {"a": 1}, datetime(2024, 1, 1)])
def test_other_values_pass_unchanged(value: object) -> None:
    assert plain(value) is value


def test_the_repository_loads_neither_pandas_nor_numpy() -> None:
    # status, flagged, models and rollback reach the records module through the
    # repository and make no frame: loading pandas would cost them half a second.
    code = ("import sys, db.repository, db.records; "
            "print(sorted(m for m in ('pandas', 'numpy') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=120, check=True)
    assert result.stdout.strip() == "[]"

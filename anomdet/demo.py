"""Deterministic demo records: application log lines from a small online shop.

Anomalies are built from the same vocabulary as normal lines: an admin login is
normal from the office network and anomalous from outside, a declined charge is
normal and a five-digit approved one is not, exit codes, latencies and attempt
counts are normal in one range and anomalous in another. No single word gives
an anomaly away; a model has to read the combination.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd

Line = Callable[[np.random.Generator], str]

USERS = ["alice", "bob", "carol", "dave", "erin", "frank", "grace", "heidi", "ivan", "judy",
         "mallory", "niaj", "olivia", "peggy", "rupert", "sybil", "trent", "victor", "walter",
         "admin", "svc-backup", "svc-report"]
RESOURCES = ["orders", "carts", "products", "users", "invoices", "shipments"]
REGIONS = ["eu-west", "eu-central", "us-east", "us-west", "ap-south"]
CURRENCIES = ["EUR", "USD", "GBP"]
JOBS = ["nightly-report", "cache-warmup", "invoice-export", "search-reindex", "db-backup"]
AGENTS = ["Mozilla/5.0", "okhttp/4.12", "python-requests/2.32", "curl/8.5", "Go-http-client/1.1"]


def _pick(rng: np.random.Generator, items: list[str]) -> str:
    return items[int(rng.integers(len(items)))]


def _office_ip(rng: np.random.Generator) -> str:
    return f"10.{rng.integers(0, 4)}.{rng.integers(0, 255)}.{rng.integers(1, 255)}"


def _outside_ip(rng: np.random.Generator) -> str:
    octets = rng.integers(1, 255, size=3)
    return f"{rng.integers(30, 220)}.{octets[0]}.{octets[1]}.{octets[2]}"


def _money(rng: np.random.Generator, low: float, high: float) -> str:
    return f"{rng.uniform(low, high):.2f}"  # small amounts: no thousands separator


# --- normal lines -------------------------------------------------------------------------

def _login_ok(rng: np.random.Generator) -> str:
    return (f"auth-svc user={_pick(rng, USERS)} login ok from {_office_ip(rng)} "
            f"method={_pick(rng, ['password', 'sso', 'sso', 'token'])} "
            f"latency={rng.integers(20, 400)}ms")


def _login_failed(rng: np.random.Generator) -> str:
    return (f"auth-svc user={_pick(rng, USERS)} login failed bad password from "
            f"{_pick(rng, [_office_ip(rng), _outside_ip(rng)])} attempt={rng.integers(1, 4)}")


def _charge(rng: np.random.Generator) -> str:
    status = _pick(rng, ["approved"] * 8 + ["declined reason=insufficient_funds",
                                            "declined reason=expired_card"])
    return (f"payments-api charge tx-{rng.integers(10**6, 10**7)} amount={_money(rng, 4, 480)} "
            f"{_pick(rng, CURRENCIES)} card=****{rng.integers(1000, 9999)} status={status} "
            f"latency={rng.integers(80, 900)}ms")


def _refund(rng: np.random.Generator) -> str:
    return (f"payments-api refund tx-{rng.integers(10**6, 10**7)} amount={_money(rng, 4, 200)} "
            f"{_pick(rng, CURRENCIES)} by user={_pick(rng, USERS[:12])} status=approved")


def _order(rng: np.random.Generator) -> str:
    items = int(rng.integers(1, 9))
    return (f"orders-svc order {rng.integers(10**5, 10**6)} created items={items} "
            f"total={_money(rng, 5 * items, 60 * items)} {_pick(rng, CURRENCIES)} "
            f"region={_pick(rng, REGIONS)}")


def _request(rng: np.random.Generator) -> str:
    code = _pick(rng, ["200"] * 12 + ["201", "304", "404", "429"])
    return (f"gateway {_pick(rng, ['GET'] * 4 + ['POST', 'PUT'])} /api/v{rng.integers(1, 3)}/"
            f"{_pick(rng, RESOURCES)}/{rng.integers(1, 99999)} {code} "
            f"{rng.integers(3, 950)}ms client={_outside_ip(rng)} ua={_pick(rng, AGENTS)}")


def _job(rng: np.random.Generator) -> str:
    exit_code = _pick(rng, ["0"] * 9 + ["1 retrying"])
    return f"scheduler job {_pick(rng, JOBS)} completed in {rng.integers(2, 600)}s exit={exit_code}"


def _compaction(rng: np.random.Generator) -> str:
    return (f"storage-node-{rng.integers(1, 7)} compaction finished "
            f"segments={rng.integers(2, 80)} freed={rng.integers(16, 4096)}MB "
            f"in {rng.integers(1, 120)}s")


# --- anomalous lines: normal vocabulary, unusual combinations --------------------------

def _admin_from_outside(rng: np.random.Generator) -> str:
    user = _pick(rng, ["admin", "svc-backup", "svc-report"])
    return (f"auth-svc user={user} login ok from {_outside_ip(rng)} "
            f"method={_pick(rng, ['password', 'token'])} latency={rng.integers(20, 400)}ms")


def _password_spray(rng: np.random.Generator) -> str:
    return (f"auth-svc user={_pick(rng, USERS)} login failed bad password from "
            f"{_outside_ip(rng)} attempt={rng.integers(25, 400)}")


def _huge_charge(rng: np.random.Generator) -> str:
    # Large amounts are printed with a thousands separator, as the payment provider does.
    return (f"payments-api charge tx-{rng.integers(10**6, 10**7)} "
            f"amount={rng.uniform(12000, 99000):,.2f} {_pick(rng, CURRENCIES)} "
            f"card=****{rng.integers(1000, 9999)} status=approved "
            f"latency={rng.integers(80, 900)}ms")


def _refund_by_service(rng: np.random.Generator) -> str:
    return (f"payments-api refund tx-{rng.integers(10**6, 10**7)} amount={_money(rng, 900, 9000)} "
            f"{_pick(rng, CURRENCIES)} by user={_pick(rng, ['svc-backup', 'svc-report'])} "
            "status=approved")


def _empty_order(rng: np.random.Generator) -> str:
    return (f"orders-svc order {rng.integers(10**5, 10**6)} created items=0 "
            f"total={_money(rng, 300, 5000)} {_pick(rng, CURRENCIES)} "
            f"region={_pick(rng, REGIONS)}")


def _slow_request(rng: np.random.Generator) -> str:
    return (f"gateway GET /api/v{rng.integers(1, 3)}/{_pick(rng, RESOURCES)}/"
            f"{rng.integers(1, 99999)} 200 {rng.uniform(15, 90):.1f}s "
            f"client={_outside_ip(rng)} ua={_pick(rng, AGENTS)}")


def _killed_job(rng: np.random.Generator) -> str:
    return (f"scheduler job {_pick(rng, JOBS)} completed in {rng.integers(0, 2)}s "
            f"exit={_pick(rng, ['137', '139', '-9'])}")


def _negative_compaction(rng: np.random.Generator) -> str:
    return (f"storage-node-{rng.integers(1, 7)} compaction finished segments=0 "
            f"freed=-{rng.integers(16, 4096)}MB in {rng.integers(1, 120)}s")


NORMAL: list[tuple[Line, float]] = [
    (_login_ok, 3), (_login_failed, 1), (_charge, 3), (_refund, 1), (_order, 3),
    (_request, 5), (_job, 1.5), (_compaction, 1),
]
ANOMALOUS: list[Line] = [
    _admin_from_outside, _password_spray, _huge_charge, _refund_by_service, _empty_order,
    _slow_request, _killed_job, _negative_compaction,
]


def generate_demo_records(
    n: int = 3000, *, anomaly_rate: float = 0.05, labelled_fraction: float = 0.6, seed: int = 7
) -> pd.DataFrame:
    """Demo records: columns id, text, label (Int64; NA = unlabelled), created_at (UTC)."""
    if n < 100:
        raise ValueError(f"n must be at least 100 to hold both classes, got {n}")
    if not 0 < anomaly_rate < 0.5:
        raise ValueError(f"anomaly_rate must be in (0, 0.5), got {anomaly_rate}")
    if not 0 < labelled_fraction <= 1:
        raise ValueError(f"labelled_fraction must be in (0, 1], got {labelled_fraction}")
    rng = np.random.default_rng(seed)
    is_anomaly = np.zeros(n, dtype=bool)
    is_anomaly[rng.choice(n, size=round(n * anomaly_rate), replace=False)] = True
    weights = np.array([w for _, w in NORMAL])
    normal_kind = rng.choice(len(NORMAL), size=n, p=weights / weights.sum())
    anomaly_kind = rng.integers(len(ANOMALOUS), size=n)
    texts = [ANOMALOUS[anomaly_kind[i]](rng) if is_anomaly[i] else NORMAL[normal_kind[i]][0](rng)
             for i in range(n)]
    labelled = rng.random(n) < labelled_fraction
    labels = pd.array(np.where(labelled, is_anomaly.astype(int), 0), dtype="Int64")
    labels[~labelled] = pd.NA
    start = datetime(2026, 10, 1, tzinfo=UTC)
    offsets = np.sort(rng.uniform(0, 30 * 24 * 3600, size=n))
    created = pd.to_datetime([start + timedelta(seconds=float(s)) for s in offsets], utc=True)
    return pd.DataFrame({"id": np.arange(1, n + 1, dtype=np.int64), "text": texts,
                         "label": labels, "created_at": created})


def demo_records_csv(path: Path, n: int = 3000, *, seed: int = 7) -> Path:
    """Write demo records as a CSV (id,text,label; empty label = unlabelled)."""
    path = Path(path)
    generate_demo_records(n, seed=seed)[["id", "text", "label"]].to_csv(path, index=False)
    return path

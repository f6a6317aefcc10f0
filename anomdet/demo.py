"""Deterministic demo records: log lines from the services behind a small online shop.

Normal traffic comes from a gateway, an auth service, payments, orders, inventory, a job
scheduler, a database replica, a cache, a mailer, a search service and a deployer. Each anomaly
family reuses one of those normal line shapes with words that normal lines use too; what makes it
anomalous is the combination (an admin login without a second factor, a five-digit card charge
on the low-value 3-D Secure exemption, a backup that finished in seconds with no output, an order
shipped straight from "created"). No single word gives the anomalies away, yet a bag of word
pairs and character n-grams can learn most of them, as a fine-tuned BERT should.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

logger = logging.getLogger(__name__)

Rng = np.random.Generator
# A line maker draws k lines of one kind at once, so numpy does the random work per kind.
LineMaker = Callable[[Rng, int], list[str]]

START = pd.Timestamp("2025-09-01T00:00:00Z")
SPAN = pd.Timedelta(days=30)

CUSTOMER_AGENTS = ["Mozilla/5.0", "okhttp/4.12", "ShopApp-iOS/7.3", "python-requests/2.32",
                   "curl/8.5"]
AGENT_WEIGHTS = [55, 20, 15, 6, 4]
PUBLIC_FIRST_OCTETS = [31, 37, 46, 62, 77, 78, 81, 84, 85, 88, 91, 93, 95, 104, 109, 151, 176,
                       178, 185, 188, 193, 194, 212, 213, 217]
STAFF = ["j.meyer", "a.rossi", "p.novak", "s.garcia", "t.berg", "m.dubois", "e.larsen",
         "h.kaya", "c.silva", "d.okafor", "n.weber", "y.tanaka"]
ADMINS = ["k.ito", "m.kowalski", "r.patel", "l.nguyen"]
SERVICE_ACCOUNTS = ["svc-etl", "svc-backup", "svc-ci", "svc-reports"]
SUPPORT = ["support.anna", "support.ben", "support.chen", "support.dana"]
COUNTRIES = ["DE", "FR", "NL", "PL", "ES", "IT", "GB", "SE", "US", "BR", "IN", "JP", "SG", "AU"]
REGIONS = ["eu-west", "eu-central", "us-east", "ap-south"]
CURRENCIES = ["EUR", "EUR", "EUR", "GBP", "USD"]
WAREHOUSES = ["ams-1", "ams-2", "wro-1", "mad-1"]
SEARCH_TERMS = ["red dress", "usb c cable", "running shoes", "wool socks", "desk lamp",
                "phone case", "gift card", "rain jacket", "coffee grinder", "yoga mat",
                "kids backpack", "hdmi adapter", "linen shirt", "water bottle", "board game",
                "sofa cover", "garden hose", "ski gloves", "printer ink", "dog bed"]


# --- vectorised building blocks ---------------------------------------------------------------

def _pick(rng: Rng, items: Sequence[str], k: int, weights: Sequence[float] | None = None
          ) -> list[str]:
    p = None if weights is None else np.asarray(weights, dtype=float) / float(np.sum(weights))
    return np.asarray(items, dtype=object)[rng.choice(len(items), size=k, p=p)].tolist()


def _ints(rng: Rng, low: int, high: int, k: int) -> list[int]:
    """k integers in [low, high], both ends included."""
    return rng.integers(low, high + 1, size=k).tolist()


def _ips(rng: Rng, k: int, *, internal: bool) -> list[str]:
    octets = rng.integers(0, 255, size=(k, 3)).tolist()
    if internal:
        # The office and cluster networks are 10.0.0.0/14; shape matters, not realism of routing.
        firsts = ["10"] * k
        octets = [[o[0] % 4, o[1], o[2] + 1] for o in octets]
    else:
        firsts = _pick(rng, [str(o) for o in PUBLIC_FIRST_OCTETS], k)
    return [f"{f}.{a}.{b}.{c}" for f, (a, b, c) in zip(firsts, octets, strict=True)]


def _money(values: np.ndarray) -> list[str]:
    # Payment providers print four-digit amounts and up with a thousands separator.
    return [f"{v:,.2f}" if v >= 1000 else f"{v:.2f}" for v in values.tolist()]


def _order_ids(rng: Rng, k: int) -> list[str]:
    return [f"O-{i}" for i in _ints(rng, 100_000, 999_999, k)]


def _customers(rng: Rng, k: int) -> list[str]:
    return [f"u{i}" for i in _ints(rng, 100_000, 999_999, k)]


def _level(codes: list[int]) -> list[str]:
    return ["ERROR" if c >= 500 else "WARN" if c >= 400 else "INFO" for c in codes]


# --- normal lines -----------------------------------------------------------------------------

def _api_request(rng: Rng, k: int) -> list[str]:
    resource = _pick(rng, ["products", "carts", "orders", "reviews", "wishlist"], k,
                     [45, 20, 15, 10, 10])
    method = _pick(rng, ["GET", "POST", "PUT", "DELETE"], k, [75, 14, 7, 4])
    code = np.asarray(_pick(rng, ["200", "304", "400", "401", "404", "429", "500", "502"], k,
                            [80, 5, 2, 2, 6, 2, 1.5, 1.5])).astype(int)
    code = np.where((code == 200) & (np.asarray(method) == "POST"), 201, code).tolist()
    latency = np.clip(rng.lognormal(np.log(45), 0.8, size=k), 2, 1900).astype(int).tolist()
    internal = rng.random(k) < 0.1
    ips = np.where(internal, _ips(rng, k, internal=True), _ips(rng, k, internal=False)).tolist()
    ua = _pick(rng, CUSTOMER_AGENTS, k, AGENT_WEIGHTS)
    return [f"{lv} gateway {m} /api/v2/{r}/{i} {c} {ms}ms ua={a} ip={ip}"
            for lv, m, r, i, c, ms, a, ip in zip(_level(code), method, resource,
                                                 _ints(rng, 1, 99_999, k), code, latency, ua,
                                                 ips, strict=True)]


def _api_timeout(rng: Rng, k: int) -> list[str]:
    resource = _pick(rng, ["products", "carts", "orders", "search"], k)
    seconds = np.round(rng.uniform(30.0, 30.4, size=k), 1).tolist()
    return [f"ERROR gateway GET /api/v2/{r}/{i} 504 {s}s ua={a} ip={ip}"
            for r, i, s, a, ip in zip(resource, _ints(rng, 1, 99_999, k), seconds,
                                      _pick(rng, CUSTOMER_AGENTS, k, AGENT_WEIGHTS),
                                      _ips(rng, k, internal=False), strict=True)]


def _report_request(rng: Rng, k: int) -> list[str]:
    # Back-office reports and exports are slow by nature and come from inside the network.
    is_export = rng.random(k) < 0.45
    report = _pick(rng, ["sales", "stock", "returns"], k)
    month = _ints(rng, 1, 12, k)
    export = _pick(rng, ["users", "orders"], k)
    seconds = np.round(rng.uniform(3.0, 48.0, size=k), 1).tolist()
    ips = _ips(rng, k, internal=True)
    return [f"INFO gateway GET /api/v2/{e}/export?format=csv 200 {s}s ua=report-worker/3.1 ip={ip}"
            if x else
            f"INFO gateway GET /api/v2/reports/{r}?month=2025-{mo:02d} 200 {s}s ua=Mozilla/5.0 "
            f"ip={ip}"
            for x, r, mo, e, s, ip in zip(is_export, report, month, export, seconds, ips,
                                          strict=True)]


def _health_probe(rng: Rng, k: int) -> list[str]:
    # Few distinct values on purpose: probes repeat, and real logs carry such exact duplicates.
    return [f"INFO gateway GET /healthz 200 {ms}ms ua=kube-probe/1.29 ip=10.0.0.{h}"
            for ms, h in zip(_ints(rng, 1, 3, k), _ints(rng, 1, 12, k), strict=True)]


def _login_ok(rng: Rng, k: int) -> list[str]:
    role = _pick(rng, ["customer", "staff", "admin", "service"], k, [60, 15, 12, 13])
    customer_auth = _pick(rng, ["password", "google"], k, [75, 25])
    customer_mfa = _pick(rng, ["none", "totp", "push"], k, [55, 25, 20])
    staff_mfa = _pick(rng, ["totp", "webauthn", "push"], k)
    users = {"customer": _customers(rng, k), "staff": _pick(rng, STAFF, k),
             "admin": _pick(rng, ADMINS, k), "service": _pick(rng, SERVICE_ACCOUNTS, k)}
    # Staff sign in through the company SSO with a second factor; services use keys.
    auth = {"customer": customer_auth, "staff": ["sso"] * k, "admin": ["sso"] * k,
            "service": ["key"] * k}
    mfa = {"customer": customer_mfa, "staff": staff_mfa, "admin": staff_mfa,
           "service": ["none"] * k}
    inside, outside = _ips(rng, k, internal=True), _ips(rng, k, internal=False)
    office = rng.random(k) < 0.6
    lines = []
    for i, r in enumerate(role):
        ip = inside[i] if r == "service" or (r != "customer" and office[i]) else outside[i]
        lines.append(f"INFO auth-svc login ok user={users[r][i]} role={r} auth={auth[r][i]} "
                     f"mfa={mfa[r][i]} ip={ip}")
    return lines


def _login_failed(rng: Rng, k: int) -> list[str]:
    reason = _pick(rng, ["bad_password", "unknown_user", "mfa_timeout", "expired_password"], k,
                   [60, 15, 15, 10])
    user = np.where(rng.random(k) < 0.85, _customers(rng, k), _pick(rng, STAFF + ADMINS, k))
    return [f"WARN auth-svc login failed user={u} reason={r} attempt={a} ip={ip}"
            for u, r, a, ip in zip(user.tolist(), reason, _ints(rng, 1, 5, k),
                                   _ips(rng, k, internal=False), strict=True)]


NEAR = [("DE", "FR"), ("DE", "PL"), ("FR", "ES"), ("NL", "DE"), ("GB", "NL"), ("IT", "FR"),
        ("SE", "DE"), ("ES", "IT")]
FAR = [("DE", "BR"), ("FR", "JP"), ("PL", "US"), ("GB", "SG"), ("NL", "AU"), ("ES", "IN"),
       ("IT", "US"), ("SE", "JP")]


def _country_moves(rng: Rng, k: int, pairs: list[tuple[str, str]]) -> list[str]:
    chosen = rng.choice(len(pairs), size=k).tolist()
    flip = (rng.random(k) < 0.5).tolist()
    return [f"{pairs[c][f]}->{pairs[c][1 - f]}" for c, f in zip(chosen, flip, strict=True)]


def _session_refresh(rng: Rng, k: int) -> list[str]:
    home = _pick(rng, COUNTRIES, k)
    kind = _pick(rng, ["same", "near", "far"], k, [72, 18, 10])
    near, far = _country_moves(rng, k, NEAR), _country_moves(rng, k, FAR)
    hours, minutes = _ints(rng, 1, 9, k), _ints(rng, 2, 55, k)
    short = (rng.random(k) < 0.5).tolist()
    users = _customers(rng, k)
    lines = []
    for i, kd in enumerate(kind):
        # Travel takes time: a far move needs at least half a day, a near one a few hours.
        if kd == "same":
            move, seen = f"{home[i]}->{home[i]}", (f"{minutes[i]} minutes" if short[i]
                                                  else f"{hours[i]} hours")
        elif kd == "near":
            move, seen = near[i], f"{hours[i] + 1} hours"
        else:
            move, seen = far[i], f"{hours[i] * 3 + 9} hours"
        lines.append(f"INFO auth-svc session refreshed user={users[i]} "
                     f"geo={'same' if kd == 'same' else 'changed'} {move} last_seen={seen} ago")
    return lines


def _charge(rng: Rng, k: int) -> list[str]:
    method = _pick(rng, ["card", "paypal", "invoice"], k, [66, 19, 15])
    small = np.round(np.clip(rng.lognormal(np.log(45), 0.9, size=k), 3, 900), 2)
    # Some card baskets are big-ticket items; business customers pay large, round invoices.
    big_ticket = np.where(rng.random(k) < 0.08, np.round(rng.uniform(1000, 4000, size=k), 2),
                          small)
    invoice = rng.integers(12, 400, size=k) * 100.0
    amount = np.where(np.asarray(method) == "invoice", invoice,
                      np.where(np.asarray(method) == "card", big_ticket, small))
    # Card payments under 30 mostly take the 3-D Secure low-value exemption.
    detail = [f"card={'new' if n else 'saved'} 3ds={'skipped' if a < 30 and s else 'passed'}"
              if m == "card" else "terms=net30" if m == "invoice" else "wallet=verified"
              for m, a, s, n in zip(method, amount.tolist(), rng.random(k) < 0.9,
                                    rng.random(k) < 0.3, strict=True)]
    return [f"INFO payments-api charge ok order={o} amount={a} {c} method={m} {t} risk={r}"
            for o, a, c, m, t, r in zip(_order_ids(rng, k), _money(amount),
                                        _pick(rng, CURRENCIES, k), method, detail,
                                        np.round(rng.uniform(0, 0.35, size=k), 2).tolist(),
                                        strict=True)]


def _charge_declined(rng: Rng, k: int) -> list[str]:
    amount = np.round(np.clip(rng.lognormal(np.log(60), 0.9, size=k), 3, 1500), 2)
    reason = _pick(rng, ["insufficient_funds", "do_not_honor", "expired_card", "3ds_failed"], k)
    return [f"WARN payments-api charge declined order={o} amount={a} {c} method=card "
            f"reason={r} risk={s}"
            for o, a, c, r, s in zip(_order_ids(rng, k), _money(amount),
                                     _pick(rng, CURRENCIES, k), reason,
                                     np.round(rng.uniform(0.05, 0.9, size=k), 2).tolist(),
                                     strict=True)]


def _refund(rng: Rng, k: int) -> list[str]:
    amount = np.round(np.clip(rng.lognormal(np.log(40), 0.8, size=k), 3, 600), 2)
    reason = _pick(rng, ["damaged", "not_received", "wrong_size", "cancelled", "goodwill"], k,
                   [25, 20, 20, 25, 10])
    return [f"INFO payments-api refund ok order={o} amount={a} {c} reason={r} by={b}"
            for o, a, c, r, b in zip(_order_ids(rng, k), _money(amount),
                                     _pick(rng, CURRENCIES, k), reason,
                                     _pick(rng, SUPPORT, k), strict=True)]


def _order_created(rng: Rng, k: int) -> list[str]:
    items = rng.integers(1, 9, size=k)
    total = np.round(items * rng.uniform(6, 70, size=k), 2)
    return [f"INFO orders-svc order {o} created items={i} total={t} {c} channel={ch} region={r}"
            for o, i, t, c, ch, r in zip(_order_ids(rng, k), items.tolist(), _money(total),
                                         _pick(rng, CURRENCIES, k),
                                         _pick(rng, ["web", "ios", "android"], k, [55, 25, 20]),
                                         _pick(rng, REGIONS, k), strict=True)]


# Normal order life cycle: (from, to, who moves it, whether the order is paid by then).
TRANSITIONS = [
    ("created", "paid", "payments-api", "yes"), ("paid", "packed", "warehouse", "yes"),
    ("packed", "shipped", "warehouse", "yes"), ("shipped", "delivered", "carrier", "yes"),
    ("created", "cancelled", "customer", "no"), ("created", "expired", "scheduler", "no"),
    ("paid", "refunded", "support", "yes"), ("delivered", "returned", "customer", "yes"),
]


def _order_state(rng: Rng, k: int) -> list[str]:
    shares = np.array([24, 20, 18, 16, 8, 6, 4, 4]) / 100
    step = rng.choice(len(TRANSITIONS), size=k, p=shares).tolist()
    return [f"INFO orders-svc order {o} state {TRANSITIONS[s][0]} -> {TRANSITIONS[s][1]} "
            f"by={TRANSITIONS[s][2]} paid={TRANSITIONS[s][3]}"
            for o, s in zip(_order_ids(rng, k), step, strict=True)]


def _stock_reserve(rng: Rng, k: int) -> list[str]:
    return [f"INFO inventory-svc reserve sku=SKU-{s} qty={q} left={left} warehouse={w}"
            for s, q, left, w in zip(_ints(rng, 10_000, 99_999, k),
                                     _ints(rng, 1, 3, k), _ints(rng, 0, 480, k),
                                     _pick(rng, WAREHOUSES, k),
                                     strict=True)]


def _stock_adjust(rng: Rng, k: int) -> list[str]:
    reason = _pick(rng, ["stocktake", "damaged", "restock"], k)
    delta = [f"+{d}" if r == "restock" else f"-{d}" if r == "damaged" else f"{d - 6:+d}"
             for r, d in zip(reason, _ints(rng, 1, 40, k), strict=True)]
    return [f"INFO inventory-svc adjust sku=SKU-{s} delta={d} reason={r} warehouse={w}"
            for s, d, r, w in zip(_ints(rng, 10_000, 99_999, k), delta, reason,
                                  _pick(rng, WAREHOUSES, k), strict=True)]


# Scheduled jobs: (name, shortest and longest run in seconds, smallest and largest output in MB).
JOBS = [("db-backup", 240, 2100, 2_000, 38_000), ("search-reindex", 60, 540, 120, 900),
        ("invoice-export", 5, 90, 1, 40), ("sitemap-build", 10, 120, 2, 8),
        ("cache-warmup", 2, 40, 0, 0), ("session-cleanup", 1, 20, 0, 0)]


def _took(seconds: int) -> str:
    return f"{seconds} sec" if seconds < 60 else f"{seconds // 60} min"


def _size(megabytes: float) -> str:
    if megabytes <= 0:
        return "0 bytes"
    return f"{megabytes / 1000:.1f} GB" if megabytes >= 1000 else f"{megabytes:.0f} MB"


def _job_finished(rng: Rng, k: int) -> list[str]:
    job = rng.choice(len(JOBS), size=k, p=np.array([40, 10, 15, 10, 12, 13]) / 100).tolist()
    share = rng.random((k, 2)).tolist()
    failed = (rng.random(k) < 0.06).tolist()
    exit_code = _pick(rng, ["1", "2", "137"], k)
    lines = []
    for j, (s, m), f, e, run in zip(job, share, failed, exit_code, _ints(rng, 1000, 99_999, k),
                                    strict=True):
        name, low, high, small, big = JOBS[j]
        took = _took(int(low + s * (high - low)))
        if f:
            lines.append(f"ERROR scheduler job {name} run={run} failed exit={e} after {took}")
        else:
            lines.append(f"INFO scheduler job {name} run={run} finished status=ok in {took} "
                         f"wrote {_size(small + m * (big - small))}")
    return lines


def _replica(rng: Rng, k: int) -> list[str]:
    catching_up = rng.random(k) < 0.15
    lag = [f"{m}m" if c else f"{s}s" for c, m, s in
           zip(catching_up, _ints(rng, 1, 9, k), np.round(rng.uniform(0.1, 2.9, size=k), 1),
               strict=True)]
    return [f"{'WARN' if c else 'INFO'} postgres replica pg-{h}.{r} "
            f"state={'catching_up' if c else 'streaming'} lag={g}"
            for c, h, r, g in zip(catching_up, _ints(rng, 2, 3, k), _pick(rng, REGIONS, k), lag,
                                  strict=True)]


def _cache_stats(rng: Rng, k: int) -> list[str]:
    return [f"INFO cache-svc redis-{n} hit_ratio=0.{h} evictions={e}/min mem={m}%"
            for n, h, e, m in zip(_ints(rng, 1, 3, k), _ints(rng, 80, 99, k),
                                  _ints(rng, 0, 400, k), _ints(rng, 40, 85, k), strict=True)]


TRANSACTIONAL_MAIL = ["order_confirmation", "shipping_update", "password_reset", "welcome"]
BULK_MAIL = ["newsletter", "spring_sale", "cart_reminder"]
SEGMENTS = ["all-customers", "eu-customers", "inactive-90d", "vip"]


def _mail_sent(rng: Rng, k: int) -> list[str]:
    bulk = (rng.random(k) < 0.35).tolist()
    transactional = _pick(rng, TRANSACTIONAL_MAIL, k, [35, 25, 30, 10])
    campaign = _pick(rng, BULK_MAIL, k)
    segment = _pick(rng, SEGMENTS, k)
    recipients = rng.integers(800, 90_000, size=k).tolist()
    provider = _pick(rng, ["ses", "postmark"], k)
    return [f"INFO mailer sent template={c} audience=segment:{s} recipients={r:,} provider={p}"
            if b else f"INFO mailer sent template={t} audience=user:{u} recipients=1 provider={p}"
            for b, t, c, s, r, p, u in zip(bulk, transactional, campaign, segment, recipients,
                                           provider, _customers(rng, k), strict=True)]


def _search(rng: Rng, k: int) -> list[str]:
    hits = np.where(rng.random(k) < 0.08, 0, rng.integers(1, 2400, size=k)).tolist()
    latency = np.clip(rng.lognormal(np.log(30), 0.6, size=k), 3, 700).astype(int).tolist()
    return [f'INFO search-svc query q="{q}" hits={h} {ms}ms index=products-v8'
            for q, h, ms in zip(_pick(rng, SEARCH_TERMS, k), hits, latency, strict=True)]


DEPLOYED = ["payments-api", "orders-svc", "auth-svc", "search-svc", "inventory-svc", "gateway"]


def _rollout(rng: Rng, k: int) -> list[str]:
    replicas = rng.integers(2, 7, size=k)
    complete = rng.random(k) < 0.5
    ready = np.where(complete, replicas, (rng.random(k) * replicas).astype(int)).tolist()
    # Progress is reported every few seconds; a whole rollout takes minutes.
    took = [f"in {m} min" if c else f"after {s} sec" for c, m, s in
            zip(complete, _ints(rng, 2, 14, k), _ints(rng, 5, 55, k), strict=True)]
    return [f"INFO deployer rollout {s} v2.{mi}.{p} {'complete' if c else 'progressing'} "
            f"{r}/{n} ready {t}"
            for s, mi, p, c, r, n, t in zip(_pick(rng, DEPLOYED, k), _ints(rng, 0, 40, k),
                                            _ints(rng, 0, 9, k), complete, ready,
                                            replicas.tolist(), took, strict=True)]


# --- anomalies: normal line shapes, unusual combinations --------------------------------------

def _export_from_outside(rng: Rng, k: int) -> list[str]:
    # Bulk exports are normal from the report worker inside; from a browser outside they are not.
    seconds = np.round(rng.uniform(3.0, 48.0, size=k), 1).tolist()
    return [f"INFO gateway GET /api/v2/{e}/export?format=csv 200 {s}s ua={a} ip={ip}"
            for e, s, a, ip in zip(_pick(rng, ["users", "orders"], k), seconds,
                                   _pick(rng, ["Mozilla/5.0", "python-requests/2.32", "curl/8.5"],
                                         k), _ips(rng, k, internal=False), strict=True)]


def _admin_without_mfa(rng: Rng, k: int) -> list[str]:
    return [f"INFO auth-svc login ok user={u} role=admin auth=password mfa=none ip={ip}"
            for u, ip in zip(_pick(rng, ADMINS, k), _ips(rng, k, internal=False), strict=True)]


def _impossible_travel(rng: Rng, k: int) -> list[str]:
    return [f"INFO auth-svc session refreshed user={u} geo=changed {m} last_seen={g} minutes ago"
            for u, m, g in zip(_customers(rng, k), _country_moves(rng, k, FAR),
                               _ints(rng, 3, 45, k), strict=True)]


def _large_exempt_charge(rng: Rng, k: int) -> list[str]:
    # The 3-D Secure low-value exemption on an invoice-sized card payment.
    amount = rng.integers(120, 400, size=k) * 100.0
    return [f"INFO payments-api charge ok order={o} amount={a} {c} method=card card={n} "
            f"3ds=skipped risk={r}"
            for o, a, c, n, r in zip(_order_ids(rng, k), _money(amount), _pick(rng, CURRENCIES, k),
                                     _pick(rng, ["saved", "new"], k, [70, 30]),
                                     np.round(rng.uniform(0, 0.2, size=k), 2).tolist(),
                                     strict=True)]


def _refund_by_service(rng: Rng, k: int) -> list[str]:
    # Refunds are issued by support staff; a service account has no business issuing them.
    amount = np.round(rng.uniform(150, 900, size=k), 2)
    return [f"INFO payments-api refund ok order={o} amount={a} {c} reason={r} by={b}"
            for o, a, c, r, b in zip(_order_ids(rng, k), _money(amount), _pick(rng, CURRENCIES, k),
                                     _pick(rng, ["goodwill", "cancelled"], k),
                                     _pick(rng, SERVICE_ACCOUNTS, k), strict=True)]


def _order_skips_states(rng: Rng, k: int) -> list[str]:
    # Shipped without ever being paid and packed, or after the customer cancelled.
    before = _pick(rng, ["created", "cancelled"], k, [60, 40])
    return [f"INFO orders-svc order {o} state {b} -> shipped by=warehouse paid=no"
            for o, b in zip(_order_ids(rng, k), before, strict=True)]


def _reserve_below_zero(rng: Rng, k: int) -> list[str]:
    return [f"INFO inventory-svc reserve sku=SKU-{s} qty={q} left=-{left} warehouse={w}"
            for s, q, left, w in zip(_ints(rng, 10_000, 99_999, k), _ints(rng, 1, 3, k),
                                     _ints(rng, 1, 12, k), _pick(rng, WAREHOUSES, k),
                                     strict=True)]


def _empty_backup(rng: Rng, k: int) -> list[str]:
    return [f"INFO scheduler job db-backup run={r} finished status=ok in {s} sec wrote 0 bytes"
            for r, s in zip(_ints(rng, 1000, 99_999, k), _ints(rng, 1, 9, k), strict=True)]


def _bulk_password_reset(rng: Rng, k: int) -> list[str]:
    return [f"INFO mailer sent template=password_reset audience=segment:{s} recipients={r:,} "
            f"provider={p}"
            for s, r, p in zip(_pick(rng, SEGMENTS, k), rng.integers(800, 90_000, size=k).tolist(),
                               _pick(rng, ["ses", "postmark"], k), strict=True)]


def _rollout_none_ready(rng: Rng, k: int) -> list[str]:
    return [f"INFO deployer rollout {s} v2.{mi}.{p} complete 0/{n} ready in {t} sec"
            for s, mi, p, n, t in zip(_pick(rng, DEPLOYED, k), _ints(rng, 0, 40, k),
                                      _ints(rng, 0, 9, k), _ints(rng, 2, 6, k),
                                      _ints(rng, 1, 9, k), strict=True)]


# (line maker, relative share of the normal traffic)
NORMAL: list[tuple[LineMaker, float]] = [
    (_api_request, 12), (_api_timeout, 1), (_report_request, 4), (_health_probe, 3),
    (_login_ok, 11), (_login_failed, 3), (_session_refresh, 7), (_charge, 12),
    (_charge_declined, 2), (_refund, 4), (_order_created, 6), (_order_state, 7),
    (_stock_reserve, 8), (_stock_adjust, 2), (_job_finished, 6), (_replica, 2),
    (_cache_stats, 2), (_mail_sent, 7), (_search, 3), (_rollout, 4),
]
# (family name, line maker); every family gets the same share of the anomalies.
ANOMALIES: list[tuple[str, LineMaker]] = [
    ("export_from_outside", _export_from_outside), ("admin_without_mfa", _admin_without_mfa),
    ("impossible_travel", _impossible_travel), ("large_exempt_charge", _large_exempt_charge),
    ("refund_by_service", _refund_by_service), ("order_skips_states", _order_skips_states),
    ("reserve_below_zero", _reserve_below_zero), ("empty_backup", _empty_backup),
    ("bulk_password_reset", _bulk_password_reset), ("rollout_none_ready", _rollout_none_ready),
]


# --- assembly ---------------------------------------------------------------------------------

def _check_arguments(n: int, anomaly_rate: float, labelled_fraction: float) -> None:
    if isinstance(n, bool) or not isinstance(n, int | np.integer):
        raise ValueError(f"generate_demo_records: n={n!r} is not a whole number; pass the number "
                         "of records as an int, at least 100")
    if n < 100:
        raise ValueError(f"generate_demo_records: n={n!r} is too small; pass at least 100 so "
                         "both classes have enough rows")
    if not 0 < anomaly_rate < 0.5:
        raise ValueError(f"generate_demo_records: anomaly_rate={anomaly_rate!r} is out of range; "
                         "pass a share strictly between 0 and 0.5 (e.g. 0.05 for 5%)")
    if not 0 < labelled_fraction <= 1:
        raise ValueError(f"generate_demo_records: labelled_fraction={labelled_fraction!r} is out "
                         "of range; pass a share above 0 and at most 1 (1 labels every row)")


def _fill(rng: Rng, out: np.ndarray, rows: np.ndarray, kinds: np.ndarray,
          makers: Sequence[LineMaker]) -> None:
    """Write lines of kind i, made by makers[i], into out at the rows whose kind is i."""
    for i, make in enumerate(makers):
        where = rows[kinds == i]
        if where.size:
            out[where] = make(rng, int(where.size))


def _texts(rng: Rng, is_anomaly: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Texts for every row, and each row's anomaly family index (-1 for normal rows)."""
    texts = np.empty(is_anomaly.size, dtype=object)
    normal_rows, anomaly_rows = np.flatnonzero(~is_anomaly), np.flatnonzero(is_anomaly)
    shares = np.array([w for _, w in NORMAL], dtype=float)
    normal_kind = rng.choice(len(NORMAL), size=normal_rows.size, p=shares / shares.sum())
    _fill(rng, texts, normal_rows, normal_kind, [make for make, _ in NORMAL])
    family = np.full(is_anomaly.size, -1)
    # Families take turns rather than being drawn, so even a small set holds each of them.
    family[anomaly_rows] = rng.permutation(np.arange(anomaly_rows.size) % len(ANOMALIES))
    _fill(rng, texts, anomaly_rows, family[anomaly_rows], [make for _, make in ANOMALIES])
    return texts, family


def _labelled(rng: Rng, is_anomaly: np.ndarray, fraction: float) -> np.ndarray:
    """Which rows carry a label: the same share of each class, at least one of each."""
    labelled = np.zeros(is_anomaly.size, dtype=bool)
    for rows in (np.flatnonzero(is_anomaly), np.flatnonzero(~is_anomaly)):
        labelled[rng.choice(rows, size=max(1, round(rows.size * fraction)), replace=False)] = True
    return labelled


def _timestamps(rng: Rng, n: int) -> pd.DatetimeIndex:
    # Exponential gaps make a Poisson-like arrival stream, scaled into the span with room for
    # one more gap so the last record falls inside it. Times are in whole milliseconds, as
    # loggers write them; adding the row index keeps them strictly increasing.
    arrivals = np.cumsum(rng.exponential(size=n))
    room = SPAN // pd.Timedelta(milliseconds=1) - n
    millis = (arrivals / (arrivals[-1] + rng.exponential()) * room).astype(np.int64)
    offsets = pd.to_timedelta(millis + np.arange(n, dtype=np.int64), unit="ms")
    return pd.DatetimeIndex(START + offsets).as_unit("ns")


def generate_demo_records(
    n: int = 3000, *, anomaly_rate: float = 0.05, labelled_fraction: float = 0.6, seed: int = 7
) -> pd.DataFrame:
    """Demo log records: columns id (1..n), text, label (Int64: 1, 0 or NA), created_at (UTC).

    Exactly round(n * anomaly_rate) rows are anomalous; about labelled_fraction of each class
    is labelled and the rest have label NA. Times span 30 days and increase with id. The same
    seed gives the same frame.
    """
    _check_arguments(n, anomaly_rate, labelled_fraction)
    rng = np.random.default_rng(seed)
    is_anomaly = np.zeros(n, dtype=bool)
    is_anomaly[rng.choice(n, size=max(1, round(n * anomaly_rate)), replace=False)] = True
    texts, _ = _texts(rng, is_anomaly)
    label = pd.array(is_anomaly.astype("int64"), dtype="Int64")
    label[~_labelled(rng, is_anomaly, labelled_fraction)] = pd.NA
    frame = pd.DataFrame({"id": np.arange(1, n + 1, dtype=np.int64),
                          "text": pd.Series(texts, dtype="str"), "label": label,
                          "created_at": _timestamps(rng, n)})
    logger.debug("generated %d demo records (%d anomalous, %d labelled)", n,
                 int(is_anomaly.sum()), int(frame["label"].notna().sum()))
    return frame


def demo_records_csv(path: Path | str, n: int = 3000, seed: int = 7) -> Path:
    """Write demo records to a CSV with columns id,text,label (empty label = unlabelled).

    The file is what `anomdet import-csv` reads; returns the path written.
    """
    path = Path(path)
    frame = generate_demo_records(n, seed=seed)[["id", "text", "label"]]
    frame.to_csv(path, index=False, na_rep="")
    return path

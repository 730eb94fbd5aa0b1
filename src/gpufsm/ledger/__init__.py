"""The spend ledger: what each machine cost, derived from its transition history.

A pure function of history and price. The history says exactly when each machine entered
each state; the rules (``_rates``) say what each state bills; the row carries the price
and the storage table (``_storage``) what a stopped disk costs. Nothing here reads a
database or calls a provider, so the CLI, budget policies and tests compute the same
figures from the same records. docs/cost.md states what is exact and what is estimated.
"""

from gpufsm.ledger._interval import BillingInterval, PricePoint, RateBasis
from gpufsm.ledger._intervals import accepted_at, burn_rate, clip, cost, intervals, spans
from gpufsm.ledger._rates import PRICED_STATES, Rate, current_rate, price_at, rate_for
from gpufsm.ledger._storage import HOURS_PER_MONTH, STORAGE_PRICES, StoragePrice, storage_rate
from gpufsm.ledger._summary import GroupBy, GroupTotal, InstanceCost, Ledger

__all__ = [
    "HOURS_PER_MONTH",
    "PRICED_STATES",
    "STORAGE_PRICES",
    "BillingInterval",
    "GroupBy",
    "GroupTotal",
    "InstanceCost",
    "Ledger",
    "PricePoint",
    "Rate",
    "RateBasis",
    "StoragePrice",
    "accepted_at",
    "burn_rate",
    "clip",
    "cost",
    "current_rate",
    "intervals",
    "price_at",
    "rate_for",
    "spans",
    "storage_rate",
]

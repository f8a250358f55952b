"""``manage.py cachestrat_demo``: seed the shop, run a cached read/write workload, report.

The workload is random but repeatable (``--seed``). It counts django_cachestrat's events
(``cache_hit``, ``cache_miss``, ``cache_fill``, ``cache_invalidate``) per model, prints them
as a table, flushes the write-behind writes still pending (``flusher.drain()``), and then
reads a sample of rows through the cache and compares each with the database row. Product
views are counted write-behind (``ProductStats``); the workload keeps its own tally of
every view and stamp, and each ``ProductStats`` row, read through the cache during the run
and from the database at the end, must match it exactly. Any difference is reported and
the command exits with status 1.
"""

from __future__ import annotations

import random
import re
import sys
import time
from collections import Counter, defaultdict
from decimal import Decimal

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError
from django.db import connection, models, transaction
from django.db.models import F
from django.utils import timezone
from tqdm import tqdm

from django_cachestrat import invalidate, invalidate_model, signals
from django_cachestrat.write_behind import flusher

from ...models import Customer, Order, Product, ProductStats

MODELS: tuple[type[models.Model], ...] = (Customer, Product, Order, ProductStats)

FIRST_NAMES = [
    "Ada",
    "Alan",
    "Grace",
    "Linus",
    "Barbara",
    "Ken",
    "Edsger",
    "Frances",
    "Donald",
    "Margaret",
    "Dennis",
    "Radia",
    "John",
    "Sophie",
    "Guido",
    "Hedy",
]
LAST_NAMES = [
    "Lovelace",
    "Turing",
    "Hopper",
    "Torvalds",
    "Liskov",
    "Thompson",
    "Dijkstra",
    "Allen",
    "Knuth",
    "Hamilton",
    "Ritchie",
    "Perlman",
    "Backus",
    "Wilson",
    "Rossum",
]
CITIES = ["Amsterdam", "Berlin", "Lisbon", "Madrid", "Oslo", "Paris", "Prague", "Rome", "Vienna"]
ADJECTIVES = ["Blue", "Compact", "Deluxe", "Eco", "Heavy", "Light", "Smart", "Tiny", "Quiet"]
NOUNS = ["Kettle", "Lamp", "Chair", "Backpack", "Keyboard", "Mug", "Bicycle", "Speaker", "Clock"]


class Rollback(Exception):
    """Raised inside ``atomic`` by the workload to roll a transaction back on purpose."""


def describe(report: flusher.FlushReport) -> str:
    """``report`` in a few words: rows by model, batches, dead letters, rows put back."""
    rows = ", ".join(f"{n} {label}" for label, n in sorted(report.rows.items())) or "none"
    return (
        f"rows {rows}; {report.batches} batch(es), {report.dead_letters} dead letter(s), "
        f"{report.requeued} requeued"
    )


def kind_of(problem: str) -> str:
    """Group a verification problem: the read that showed it, or the tally's check."""
    if "the workload counted" in problem or "the workload saved" in problem:
        return "database vs the workload's tally"
    how = re.search(r" via (\S+)", problem)
    kind = how.group(1) if how else "rows missing, extra or not deleted"
    return f"{kind} during the run" if "during the run" in problem else kind


def money(cents: int) -> Decimal:
    """Return ``cents`` as a Decimal amount with two places, as the database stores it."""
    return (Decimal(cents) / 100).quantize(Decimal("0.01"))


class EventCounter:
    """Counts django_cachestrat's events per model while connected."""

    KINDS = ("hit", "miss", "fill", "invalidate", "error")

    def __init__(self):
        self.counts: dict[object, Counter] = defaultdict(Counter)
        self._connected: list[tuple[object, object]] = []

    def _on_keys(self, kind):
        def receiver(sender, keys=0, **kwargs):
            self.counts[sender][kind] += keys

        return receiver

    def _on_invalidate(self, sender, pks=None, **kwargs):
        # A whole-model drop (pks=None) counts as one invalidation.
        self.counts[sender]["invalidate"] += 1 if pks is None else len(pks)

    def _on_error(self, sender, model=None, **kwargs):
        self.counts[model or sender]["error"] += 1

    def connect(self) -> None:
        """Start counting."""
        pairs = [
            (signals.cache_hit, self._on_keys("hit")),
            (signals.cache_miss, self._on_keys("miss")),
            (signals.cache_fill, self._on_keys("fill")),
            (signals.cache_invalidate, self._on_invalidate),
            (signals.cache_error, self._on_error),
        ]
        for signal, receiver in pairs:
            signal.connect(receiver, weak=False)
            self._connected.append((signal, receiver))

    def disconnect(self) -> None:
        """Stop counting."""
        for signal, receiver in self._connected:
            signal.disconnect(receiver)
        self._connected.clear()


class Workload:
    """The demo's random mix of cached reads and writes over the shop's rows."""

    def __init__(self, rng: random.Random):
        self.rng = rng
        self.customers: list[int] = list(Customer.objects.values_list("pk", flat=True))
        self.email_of: dict[int, str] = dict(Customer.objects.values_list("pk", "email"))
        self.products: list[int] = list(Product.objects.values_list("pk", flat=True))
        self.sku_of: dict[int, str] = dict(Product.objects.values_list("pk", "sku"))
        self.orders: list[int] = list(Order.objects.values_list("pk", flat=True))
        # product pk -> its ProductStats pk, and what the workload expects each stats row to
        # hold: the database's values at the start (nothing is pending then) plus every
        # view counted and every stamp saved since, write-behind.
        self.stats_of: dict[int, int] = dict(ProductStats.objects.values_list("product_id", "pk"))
        self.views: dict[int, int] = dict(ProductStats.objects.values_list("pk", "views"))
        self.last_viewed: dict[int, object] = dict(
            ProductStats.objects.values_list("pk", "last_viewed")
        )
        # Reads of a stats row during the run that did not show the workload's own writes.
        self.problems: list[str] = []
        self.counted = 0  # views this run added
        # What the in-process flushes during the run wrote (a worker would, in production).
        self.flushed = flusher.FlushReport()
        # Rows the workload wrote (checked first at the end) and rows it deleted.
        self.touched: dict[type, set] = {m: set() for m in MODELS}
        self.deleted: dict[type, set] = {m: set() for m in MODELS}
        self.done: Counter = Counter()
        # (weight, operation): mostly reads, some writes, a few bulk writes and deletes.
        self.mix = [
            (16, self.customer_by_pk),
            (9, self.customer_by_email),
            (16, self.product_by_pk),
            (9, self.product_by_sku),
            (8, self.order_by_pk),
            (5, self.many_customers),
            (7, self.many_products),
            (4, self.many_orders),
            (1, self.missing_row),
            (6, self.save_customer),
            (1, self.save_customer_update_fields),
            (1, self.save_customer_expression),
            (4, self.save_product),
            (3, self.place_order),
            (2, self.save_order),
            (1.5, self.queryset_update),
            (1, self.rolled_back_save),
            (0.5, self.raw_sql_and_invalidate),
            (0.5, self.delete_and_recreate),
            # Write-behind: product views are counted in Redis and flushed later.
            (14, self.view_product),
            (7, self.view_product_and_stamp),
            (4, self.stats_by_pk),
            (3, self.stats_by_product),
            (3, self.many_stats),
            (0.5, self.stats_update_now),
            (0.25, self.flush_write_behind),
        ]
        self._weights = [w for w, _ in self.mix]
        self._ops = [op for _, op in self.mix]

    # -- choosing rows -------------------------------------------------------------------

    def pick(self, pks: list[int]) -> int:
        """Return a pk, four times in five from the first fifth of ``pks`` (the hot rows)."""
        if self.rng.random() < 0.8:
            return pks[self.rng.randrange(max(1, len(pks) // 5))]
        return self.rng.choice(pks)

    def pick_many(self, pks: list[int], low: int = 5, high: int = 25) -> list[int]:
        """Return a handful of pks chosen as ``pick`` does (repeats allowed)."""
        return [self.pick(pks) for _ in range(self.rng.randint(low, high))]

    def step(self) -> None:
        """Run one operation drawn from the mix."""
        op = self.rng.choices(self._ops, weights=self._weights)[0]
        op()
        self.done[op.__name__] += 1

    # -- reads ---------------------------------------------------------------------------

    def customer_by_pk(self):
        """Read a customer by pk."""
        Customer.objects.get_cached(pk=self.pick(self.customers))

    def customer_by_email(self):
        """Read a customer by its unique email."""
        Customer.objects.get_cached(email=self.email_of[self.pick(self.customers)])

    def product_by_pk(self):
        """Read a product by pk."""
        Product.objects.get_cached(pk=self.pick(self.products))

    def product_by_sku(self):
        """Read a product by its unique SKU."""
        Product.objects.get_cached(sku=self.sku_of[self.pick(self.products)])

    def order_by_pk(self):
        """Read an order by pk."""
        if not self.orders:
            return self.place_order()
        Order.objects.get_cached(pk=self.pick(self.orders))

    def many_customers(self):
        """Read a batch of customers."""
        Customer.objects.get_many_cached(self.pick_many(self.customers))

    def many_products(self):
        """Read a batch of products."""
        Product.objects.get_many_cached(self.pick_many(self.products))

    def many_orders(self):
        """Read a batch of orders."""
        if not self.orders:
            return self.place_order()
        Order.objects.get_many_cached(self.pick_many(self.orders))

    def missing_row(self):
        """Read a product that does not exist: ``DoesNotExist``, as ``get()`` raises."""
        try:
            Product.objects.get_cached(pk=10**12 + self.rng.randrange(1000))
        except Product.DoesNotExist:
            return
        raise CommandError("get_cached() returned a product that does not exist")

    # -- writes --------------------------------------------------------------------------

    def _load_customer(self, pk: int) -> Customer:
        # Half the time the instance to change comes from the cache, half from the database.
        if self.rng.random() < 0.5:
            return Customer.objects.get_cached(pk=pk)
        return Customer.objects.get(pk=pk)

    def save_customer(self):
        """Change a customer and ``save()`` it: write-through stores the new row."""
        customer = self._load_customer(self.pick(self.customers))
        customer.loyalty_points += self.rng.randint(1, 50)
        customer.balance += money(self.rng.randint(-2000, 5000))
        if self.rng.random() < 0.3:
            customer.city = self.rng.choice(CITIES)
        customer.save()
        self.touched[Customer].add(customer.pk)

    def save_customer_update_fields(self):
        """``save(update_fields=...)``: write-through drops the row instead of storing it."""
        customer = self._load_customer(self.pick(self.customers))
        customer.loyalty_points += 1
        customer.save(update_fields=["loyalty_points", "updated_at"])
        self.touched[Customer].add(customer.pk)

    def save_customer_expression(self):
        """Save an ``F()`` expression: the value is the database's, so the row is dropped."""
        customer = Customer.objects.get(pk=self.pick(self.customers))
        customer.loyalty_points = F("loyalty_points") + 10
        customer.save()
        self.touched[Customer].add(customer.pk)

    def save_product(self):
        """Change a product's price, stock or availability: cache-aside drops the row."""
        product = Product.objects.get(pk=self.pick(self.products))
        what = self.rng.random()
        if what < 0.5:
            product.price = money(self.rng.randint(199, 99999))
        elif what < 0.9:
            product.stock = self.rng.randint(0, 500)
        else:
            product.active = not product.active
        product.save()
        self.touched[Product].add(product.pk)

    def place_order(self):
        """In one transaction: create an order, take stock with ``F()``, award points."""
        with transaction.atomic():
            product = Product.objects.get_cached(pk=self.pick(self.products))
            customer = Customer.objects.select_for_update().get(pk=self.pick(self.customers))
            quantity = self.rng.randint(1, 3)
            order = Order.objects.create(
                customer=customer,
                product=product,
                quantity=quantity,
                total=product.price * quantity,
            )
            Product.objects.filter(pk=product.pk).update(stock=F("stock") - quantity)
            customer.loyalty_points += quantity
            customer.save()
            # Inside the transaction that wrote it, a cached read sees the new stock.
            fresh = Product.objects.get_cached(pk=product.pk)
            if fresh.stock != Product.objects.get(pk=product.pk).stock:
                raise CommandError(f"read of {product} inside its transaction is stale")
        self.orders.append(order.pk)
        self.touched[Order].add(order.pk)
        self.touched[Product].add(product.pk)
        self.touched[Customer].add(customer.pk)

    def save_order(self):
        """Move an order to another status."""
        if not self.orders:
            return self.place_order()
        order = Order.objects.get_cached(pk=self.pick(self.orders))
        order.status = self.rng.choice(Order.Status.values)
        order.save()
        self.touched[Order].add(order.pk)

    def queryset_update(self):
        """A bulk ``QuerySet.update()``: every row it touched is dropped after commit."""
        kind = self.rng.randrange(3)
        if kind == 0:
            pks = self.pick_many(self.products, 5, 40)
            Product.objects.filter(pk__in=pks).update(stock=F("stock") + 10)
            self.touched[Product].update(pks)
        elif kind == 1:
            pks = self.pick_many(self.customers, 2, 10)
            Customer.objects.filter(pk__in=pks).update(city=self.rng.choice(CITIES))
            self.touched[Customer].update(pks)
        else:
            customer = Customer.objects.get_cached(pk=self.pick(self.customers))
            pks = list(customer.orders.values_list("pk", flat=True))
            customer.orders.update(status=Order.Status.SHIPPED)
            self.touched[Order].update(pks)

    def rolled_back_save(self):
        """Save in a transaction that rolls back: the cache must keep the committed row."""
        pk = self.pick(self.customers)
        try:
            with transaction.atomic():
                customer = Customer.objects.get(pk=pk)
                customer.balance += money(100_000)
                customer.save()
                product = Product.objects.get(pk=self.pick(self.products))
                product.stock += 1000
                product.save()
                raise Rollback
        except Rollback:
            pass
        self.touched[Customer].add(pk)
        self.touched[Product].add(product.pk)

    def raw_sql_and_invalidate(self):
        """A write the app cannot see (raw SQL), followed by ``invalidate()``."""
        pk = self.pick(self.products)
        with connection.cursor() as cursor:
            cursor.execute(
                f"UPDATE {Product._meta.db_table} SET stock = stock + 1 WHERE id = %s", [pk]
            )
        invalidate(Product, pk=pk)
        self.touched[Product].add(pk)

    # -- write-behind ----------------------------------------------------------------------

    def _check_stats(self, how: str, stats: ProductStats) -> None:
        """A read of a stats row must show every write the workload made, flushed or not."""
        want = (self.views[stats.pk], self.last_viewed[stats.pk])
        got = (stats.views, stats.last_viewed)
        if got != want:
            self.problems.append(
                f"shop.ProductStats pk={stats.pk} via {how} during the run: (views, "
                f"last_viewed) is {got!r}, the workload wrote {want!r}"
            )

    def _count_view(self, product_pk: int) -> int:
        """``increment_behind(views=1)`` of the product's stats row; return the row's pk."""
        pk = self.stats_of[product_pk]
        ProductStats.objects.increment_behind(pk, views=1)
        self.views[pk] += 1
        self.counted += 1
        self.touched[ProductStats].add(pk)
        return pk

    def view_product(self):
        """Show a product: read it through the cache and count the view, write-behind."""
        product = Product.objects.get_cached(pk=self.pick(self.products))
        self._count_view(product.pk)

    def view_product_and_stamp(self):
        """Count a view, then read the stats row, set ``last_viewed`` and ``save()`` it.

        The save is recorded in Redis: no query. Half of the saves are full ``save()``s
        (the counter, unchanged since the read, is not rewritten), half name the field.
        """
        product = Product.objects.get_cached(sku=self.sku_of[self.pick(self.products)])
        self._count_view(product.pk)
        stats = ProductStats.objects.get_cached(product=product.pk)
        self._check_stats("get_cached(product)", stats)
        stats.last_viewed = timezone.now()
        if self.rng.random() < 0.5:
            stats.save()
        else:
            stats.save(update_fields=["last_viewed"])
        self.last_viewed[stats.pk] = stats.last_viewed

    def stats_by_pk(self):
        """Read a product's stats by pk: the view, pending writes included."""
        pk = self.stats_of[self.pick(self.products)]
        self._check_stats("get_cached(pk)", ProductStats.objects.get_cached(pk=pk))

    def stats_by_product(self):
        """Read a product's stats by its product (the unique one-to-one field)."""
        stats = ProductStats.objects.get_cached(product=self.pick(self.products))
        self._check_stats("get_cached(product)", stats)

    def many_stats(self):
        """Read the stats of a handful of products."""
        pks = [self.stats_of[pk] for pk in self.pick_many(self.products)]
        for stats in ProductStats.objects.get_many_cached(pks).values():
            self._check_stats("get_many_cached", stats)

    def stats_update_now(self):
        """A synchronous ``update()`` of a counter with views pending: it drops the view,
        and the next read rebuilds it from the database plus the writes still pending.
        """
        pk = self.stats_of[self.pick(self.products)]
        ProductStats.objects.filter(pk=pk).update(views=F("views") + 1)
        self.views[pk] += 1
        self.counted += 1
        self.touched[ProductStats].add(pk)

    def flush_write_behind(self):
        """Flush the pending writes now, as the Celery worker does every few seconds."""
        self.flushed.merge(flusher.flush())

    def delete_and_recreate(self):
        """Delete a customer or a product (and its orders) and create it again: new pk."""
        if self.rng.random() < 0.5:
            model, pks, key, value_of = Customer, self.customers, "email", self.email_of
        else:
            model, pks, key, value_of = Product, self.products, "sku", self.sku_of
        index = self.rng.randrange(len(pks))
        old_pk = pks[index]
        old = model.objects.get(pk=old_pk)
        gone_orders = set(old.orders.values_list("pk", flat=True))
        # A product's stats row goes with it (CASCADE), and so do its pending writes.
        gone_stats = self.stats_of.pop(old_pk, None) if model is Product else None
        old.delete()
        new = model.objects.create(
            **{
                f.attname: getattr(old, f.attname)
                for f in model._meta.concrete_fields
                if not f.primary_key
            }
        )
        pks[index] = new.pk
        del value_of[old_pk]
        value_of[new.pk] = getattr(new, key)
        self.deleted[model].add(old_pk)
        self.touched[model].add(new.pk)
        self.deleted[Order] |= gone_orders
        self.touched[Order] -= gone_orders
        self.orders = [pk for pk in self.orders if pk not in gone_orders]
        if gone_stats is not None:
            self.deleted[ProductStats].add(gone_stats)
            self.touched[ProductStats].discard(gone_stats)
            del self.views[gone_stats], self.last_viewed[gone_stats]
        if model is Product:
            stats = ProductStats.objects.create(product=new)  # a new row: inserted at once
            self.stats_of[new.pk] = stats.pk
            self.views[stats.pk] = 0
            self.last_viewed[stats.pk] = None
            self.touched[ProductStats].add(stats.pk)


class Command(BaseCommand):
    """Seed the shop, run a read/write workload through the cache, report, and verify."""

    help = (
        "Seed the demo shop (idempotent), run a random but repeatable workload of cached "
        "reads and writes (product views counted write-behind), print hits/misses/fills/"
        "invalidations per model, flush the write-behind writes, and check a sample of "
        "cached rows and every product stats row against the database (exit status 1 on "
        "a mismatch)."
    )

    def add_arguments(self, parser):
        """Sizes of the data and of the workload, the seed, and output switches."""
        parser.add_argument("--customers", type=int, default=200, help="customers to seed")
        parser.add_argument("--products", type=int, default=500, help="products to seed")
        parser.add_argument("--orders", type=int, default=1000, help="orders to seed")
        parser.add_argument("--ops", type=int, default=5000, help="operations to run")
        parser.add_argument("--seed", type=int, default=42, help="random seed")
        parser.add_argument(
            "--verify",
            type=int,
            default=300,
            metavar="N",
            help="rows per model the workload did not write to check as well (default 300)",
        )
        parser.add_argument(
            "--warm",
            action="store_true",
            help="keep what the cache holds; by default every model's rows are dropped first",
        )
        parser.add_argument("--no-progress", action="store_true", help="no progress bar")

    def handle(self, *args, **options):
        """Seed, run, report, verify."""
        for name in ("customers", "products", "orders", "ops", "verify"):
            if options[name] < 0:
                raise CommandError(f"--{name} must be >= 0")
        if options["customers"] < 1 or options["products"] < 1:
            raise CommandError("--customers and --products must be at least 1")
        alias = getattr(settings, "CACHESTRAT", {}).get("CACHE_ALIAS", "default")
        url = settings.CACHES[alias].get("LOCATION")
        self.stdout.write(f"Cache backend: {url} ({settings.CACHES[alias]['BACKEND']})")
        self._ping(alias, url)
        # The workload's tally of views starts from the database: nothing may be pending.
        leftovers = self.drain("before the workload")
        if leftovers.batches:
            self.stdout.write(
                "Flushed the write-behind writes an earlier run left: " + describe(leftovers)
            )

        rng = random.Random(options["seed"])
        self.seed(rng, options["customers"], options["products"], options["orders"])
        if not options["warm"]:
            for model in MODELS:
                invalidate_model(model)
            self.stdout.write(
                "Cold start: dropped every cached row of "
                + ", ".join(m._meta.label for m in MODELS)
                + "."
            )

        workload = Workload(rng)
        counter = EventCounter()
        counter.connect()
        started = time.perf_counter()
        try:
            bar = tqdm(
                range(options["ops"]),
                desc="workload",
                unit="op",
                file=sys.stderr,
                disable=options["no_progress"],
                dynamic_ncols=True,
                # Off a terminal (a log file), a line every few seconds is plenty.
                mininterval=0.1 if sys.stderr.isatty() else 5,
            )
            for _ in bar:
                workload.step()
        finally:
            counter.disconnect()
        elapsed = time.perf_counter() - started

        self.stdout.write(
            f"\nRan {options['ops']} operations in {elapsed:.1f}s (seed {options['seed']}): "
            + ", ".join(f"{name} {n}" for name, n in sorted(workload.done.items()))
            + "\n"
        )
        self.report(counter)
        flushes = workload.done["flush_write_behind"]
        self.stdout.write(
            f"Write-behind flushes during the run ({flushes}, in-process): "
            + describe(workload.flushed)
        )
        # What the worker would write within FLUSH_INTERVAL seconds, written now.
        report = self.drain("after the workload")
        self.stdout.write(f"Write-behind drain at the end (flusher.drain()): {describe(report)}")
        workload.flushed.merge(report)
        self.stdout.write("")
        self.verify(workload, random.Random(options["seed"] + 1), options["verify"])

    def drain(self, when: str, patience: float = 15) -> flusher.FlushReport:
        """``flusher.drain()``, until nothing is pending; return what it wrote.

        Batches a Celery worker has claimed are its to finish: wait up to ``patience``
        seconds for them, then fail (the view counts could not be checked exactly).
        """
        total = flusher.FlushReport()
        deadline = time.monotonic() + patience
        while True:
            total.merge(flusher.drain())
            waiting = flusher.waiting()
            if not waiting:
                return total
            if time.monotonic() > deadline:
                raise CommandError(
                    f"Write-behind writes still pending {when}: "
                    + ", ".join(
                        f"{label}: {rows} row(s), {batches} batch(es) in flight"
                        for label, (rows, batches) in sorted(waiting.items())
                    )
                    + ". Stop the Celery workers and run manage.py cachestrat_flush --reclaim."
                )
            time.sleep(0.2)

    def _ping(self, alias: str, url: str) -> None:
        from django_redis import get_redis_connection
        from redis.exceptions import RedisError

        try:
            get_redis_connection(alias).ping()
        except RedisError as exc:
            reason = str(exc).rstrip(".")
            raise CommandError(
                f"Cannot reach the cache at {url} ({reason}). Start Redis or Valkey there, "
                "set REDIS_URL, or run scripts/demo, which starts one."
            ) from exc

    # -- seeding -------------------------------------------------------------------------

    def seed(self, rng: random.Random, customers: int, products: int, orders: int) -> None:
        """Create whatever rows are missing up to the requested sizes (idempotent)."""
        with transaction.atomic():
            emails = [f"customer{i:05d}@example.org" for i in range(customers)]
            have = set(Customer.objects.filter(email__in=emails).values_list("email", flat=True))
            new_customers = [
                Customer(
                    name=f"{rng.choice(FIRST_NAMES)} {rng.choice(LAST_NAMES)}",
                    email=email,
                    city=rng.choice(CITIES),
                    loyalty_points=rng.randint(0, 1000),
                    balance=money(rng.randint(0, 100_000)),
                )
                for email in emails
                if email not in have
            ]
            Customer.objects.bulk_create(new_customers, batch_size=500)

            skus = [f"SKU-{i:06d}" for i in range(products)]
            have = set(Product.objects.filter(sku__in=skus).values_list("sku", flat=True))
            new_products = [
                Product(
                    sku=sku,
                    name=f"{rng.choice(ADJECTIVES)} {rng.choice(NOUNS)}",
                    price=money(rng.randint(199, 99999)),
                    stock=rng.randint(0, 500),
                )
                for sku in skus
                if sku not in have
            ]
            Product.objects.bulk_create(new_products, batch_size=500)

            missing = orders - Order.objects.count()
            new_orders = []
            if missing > 0:
                customer_pks = list(Customer.objects.values_list("pk", flat=True))
                prices = dict(Product.objects.values_list("pk", "price"))
                product_pks = list(prices)
                for _ in range(missing):
                    product_pk = rng.choice(product_pks)
                    quantity = rng.randint(1, 3)
                    new_orders.append(
                        Order(
                            customer_id=rng.choice(customer_pks),
                            product_id=product_pk,
                            quantity=quantity,
                            total=prices[product_pk] * quantity,
                            status=rng.choice(Order.Status.values),
                        )
                    )
                Order.objects.bulk_create(new_orders, batch_size=500)

            # Every product has its stats row (write-behind saves update existing rows).
            new_stats = [
                ProductStats(product_id=pk)
                for pk in Product.objects.filter(stats__isnull=True).values_list("pk", flat=True)
            ]
            ProductStats.objects.bulk_create(new_stats, batch_size=500)
        self.stdout.write(
            f"Seeded {len(new_customers)} customers, {len(new_products)} products, "
            f"{len(new_orders)} orders and {len(new_stats)} product stats; the database has "
            f"{Customer.objects.count()} customers, {Product.objects.count()} products, "
            f"{Order.objects.count()} orders and {ProductStats.objects.count()} product stats."
        )

    # -- the report ----------------------------------------------------------------------

    def report(self, counter: EventCounter) -> None:
        """Print hits, misses, fills, invalidations and the hit rate of each model."""
        header = ("model", "strategy", "hits", "misses", "fills", "invalidations", "hit rate %")
        rows = []
        total: Counter = Counter()
        for model in MODELS:
            counts = counter.counts.get(model, Counter())
            total.update(counts)
            rows.append((model._meta.label, model.cache_strategy.name, counts))
        rows.append(("total", "", total))

        def cells(label, strategy, counts):
            looked = counts["hit"] + counts["miss"]
            rate = f"{100 * counts['hit'] / looked:.1f}" if looked else "-"
            return (
                label,
                strategy,
                str(counts["hit"]),
                str(counts["miss"]),
                str(counts["fill"]),
                str(counts["invalidate"]),
                rate,
            )

        table = [header, *(cells(*row) for row in rows)]
        widths = [max(len(line[i]) for line in table) for i in range(len(header))]

        def line(values):
            return "  ".join(
                v.ljust(w) if i < 2 else v.rjust(w)
                for i, (v, w) in enumerate(zip(values, widths, strict=True))
            )

        rule = "  ".join("-" * w for w in widths)
        self.stdout.write(line(table[0]))
        self.stdout.write(rule)
        for values in table[1:-1]:
            self.stdout.write(line(values))
        self.stdout.write(rule)
        self.stdout.write(line(table[-1]))
        errors = sum(c["error"] for c in counter.counts.values())
        if errors:
            self.stdout.write(self.style.WARNING(f"cache errors (Redis failures): {errors}"))
        self.stdout.write("")

    # -- the correctness check -----------------------------------------------------------

    def verify(self, workload: Workload, rng: random.Random, untouched: int) -> None:
        """Read a sample of rows through the cache and compare each with the database.

        The sample is every row the workload wrote plus ``untouched`` others per model.
        Each row is read with ``get_cached(pk=...)``, with ``get_cached`` by each of the
        model's lookups, and with ``get_many_cached``; rows the workload deleted must be
        gone from all of them. Then every ``ProductStats`` row in the database must hold
        exactly the views and stamps the workload counted (nothing lost, nothing twice).
        Raises ``CommandError`` (exit status 1) on any difference.
        """
        problems: list[str] = list(workload.problems)
        checked = 0
        for model in MODELS:
            existing = set(model._base_manager.values_list("pk", flat=True))
            touched = sorted(workload.touched[model] & existing)
            others = sorted(existing - workload.touched[model])
            sample = touched + rng.sample(others, min(untouched, len(others)))
            rng.shuffle(sample)
            expected = model._base_manager.in_bulk(sample)
            attnames = [f.attname for f in model._meta.concrete_fields]
            lookups = list(getattr(getattr(model, "CacheMeta", None), "lookups", ()))

            def compare(how, pk, got, model=model, attnames=attnames, expected=expected):
                want = expected[pk]
                for name in attnames:
                    if getattr(got, name) != getattr(want, name):
                        problems.append(
                            f"{model._meta.label} pk={pk} via {how}: {name} is "
                            f"{getattr(got, name)!r} in the cache, "
                            f"{getattr(want, name)!r} in the database"
                        )

            for pk in sample:
                compare("get_cached(pk)", pk, model.objects.get_cached(pk=pk))
                for name in lookups:
                    value = getattr(expected[pk], model._meta.get_field(name).attname)
                    compare(f"get_cached({name})", pk, model.objects.get_cached(**{name: value}))
            for start in range(0, len(sample), 100):
                chunk = sample[start : start + 100]
                got = model.objects.get_many_cached(chunk)
                for pk in chunk:
                    if pk not in got:
                        problems.append(
                            f"{model._meta.label} pk={pk}: missing from get_many_cached"
                        )
                    else:
                        compare("get_many_cached", pk, got[pk])
            checked += len(sample)

            gone = sorted(workload.deleted[model] - existing)
            for pk in gone:
                try:
                    model.objects.get_cached(pk=pk)
                except model.DoesNotExist:
                    pass
                else:
                    problems.append(
                        f"{model._meta.label} pk={pk}: deleted, yet get_cached found it"
                    )
            if gone and model.objects.get_many_cached(gone):
                problems.append(f"{model._meta.label}: get_many_cached returned deleted rows")

        total = self.verify_stats(workload, problems)

        if problems:
            for problem in problems[:20]:
                self.stderr.write(f"MISMATCH {problem}")
            if len(problems) > 20:
                self.stderr.write(f"... and {len(problems) - 20} more")
            kinds = Counter(kind_of(problem) for problem in problems)
            self.stderr.write(
                "mismatches by kind: " + ", ".join(f"{k} {n}" for k, n in kinds.most_common())
            )
            in_db = ProductStats.objects.aggregate(views=models.Sum("views"))["views"] or 0
            if in_db != total:
                self.stderr.write(
                    f"product views: {in_db} in the database, {total} counted ({in_db - total:+d})"
                )
            raise CommandError(
                f"{len(problems)} mismatch(es) between reads through the cache, the "
                f"database and the workload's tally ({checked} rows checked)."
            )
        deleted = sum(len(workload.deleted[m]) for m in MODELS)
        self.stdout.write(
            self.style.SUCCESS(
                f"verified {checked} rows against the database "
                f"(and {deleted} deleted rows are gone from the cache)"
            )
        )
        self.stdout.write(
            self.style.SUCCESS(
                f"verified all {len(workload.views)} product stats rows in the database "
                f"against the workload's own tally: views and last_viewed exact ({total} "
                f"views in all; {workload.counted} counted by this run, with rows it deleted)"
            )
        )

    def verify_stats(self, workload: Workload, problems: list[str]) -> int:
        """Compare every ``ProductStats`` row in the database with the workload's tally.

        Append a line to ``problems`` for each difference; return the views in all.
        """
        rows = {
            pk: (views, last_viewed)
            for pk, views, last_viewed in ProductStats.objects.values_list(
                "pk", "views", "last_viewed"
            )
        }
        for pk in sorted(rows.keys() - workload.views.keys()):
            problems.append(f"shop.ProductStats pk={pk}: in the database, not in the tally")
        for pk in sorted(workload.views.keys() - rows.keys()):
            problems.append(f"shop.ProductStats pk={pk}: in the tally, not in the database")
        for pk in sorted(rows.keys() & workload.views.keys()):
            views, last_viewed = rows[pk]
            if views != workload.views[pk]:
                problems.append(
                    f"shop.ProductStats pk={pk}: views is {views} in the database, the "
                    f"workload counted {workload.views[pk]} ({views - workload.views[pk]:+d})"
                )
            if last_viewed != workload.last_viewed[pk]:
                problems.append(
                    f"shop.ProductStats pk={pk}: last_viewed is {last_viewed!r} in the "
                    f"database, the workload saved {workload.last_viewed[pk]!r}"
                )
        return sum(workload.views.values())

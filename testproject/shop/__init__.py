"""The demo app ``shop``: customers (write-through), products and orders (cache-aside)."""

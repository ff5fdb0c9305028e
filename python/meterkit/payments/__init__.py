"""Paid routes: the MPP `Payment` scheme and x402, one-time charges paid with EIP-3009
authorizations, settlement at the route's moment, and a durable ledger."""

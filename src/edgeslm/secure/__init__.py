"""Signing and verification of bundles (Ed25519, via cryptography)."""

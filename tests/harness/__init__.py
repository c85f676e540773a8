"""Test harnesses: real processes, loopback only."""

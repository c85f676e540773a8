"""Rampart."""

"""Disaggregated network functions whose per-connection state lives in Redis."""

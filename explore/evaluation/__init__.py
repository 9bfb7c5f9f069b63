"""Stage 3 — measure: attribute scorers (`scorers`), per-edit metrics and SDE (`metrics`), MIG / DCI / SAP
(`disentanglement`), benchmark items (`items`), scoring one edit (`scoring`), the resumable sharded runner
(`runner`), world-model quality (`quality`, `card`) and performance (`perf`)."""

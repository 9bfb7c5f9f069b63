"""Stage 1 — the model: load a pipeline (`load`), its `ModelSpec` and state (`spec`), the joint latent and the
one batched transformer call (`latent`), sampling and the EIM render (`sampling`), tiny and full-size random
pipelines for tests and benchmarks (`tiny`, `architectures`)."""

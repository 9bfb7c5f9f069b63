"""Stage 2 — Identify and Manipulate: text directions (`directions`), the settings of an edit (`settings`), the
score-distillation objectives (`objectives`), preserved directions (`preserve`), the shared loop (`loop`) and
`edit` / `sweep` / `edit_batch` (`api`); `methods` is the registry of every editing method."""

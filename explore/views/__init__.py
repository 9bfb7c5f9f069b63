"""What people look at: every matplotlib figure (`plots`), pictures as PNG bytes (`pictures`), the notebook
session with its caches (`session`, no ipywidgets) and the ipywidgets panels (`widgets`)."""

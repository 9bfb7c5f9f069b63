"""Inside the transformer: hook sites and temporary hooks (`hooks`), attention maps (`attention`), linear
probes (`probe`), activation steering (`steering`), geometry of directions (`geometry`) and whole studies
(`studies`)."""

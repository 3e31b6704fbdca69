"""Using a trained student, Lightning-free: cached per-instruction encodings, generation, and
`tagi adapter`'s PEFT export."""

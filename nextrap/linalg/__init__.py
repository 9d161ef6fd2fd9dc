"""Pure torch math on LoRA updates kept in factored form (rank-1 triplets, differences, Gram products,
refactoring); no files, no nextrap imports."""

"""reenrich: keeps every stored conversation's enriched document carrying its scaffolding."""

"""Who may run which turn: API keys, limits and budgets, prices, ownership, revocation."""

"""Plan, then apply: recipes, planning, committing, the record of each edit, and the report (plain data)."""

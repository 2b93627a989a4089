"""Reading finished runs: asrl compare, its report, and the plots."""

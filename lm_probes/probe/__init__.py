"""One preference update on a real LM: which responses it moves and why (one_step), and the
predicted-vs-observed statistics of its report (summary)."""

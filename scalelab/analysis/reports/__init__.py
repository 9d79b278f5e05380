"""Reports: markdown tables, figures and report.md (the verdict first)."""

"""Make any function safe to retry: its key and result commit with its own database writes."""

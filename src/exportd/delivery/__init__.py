"""Delivering results: signed download links and notifications (webhooks, emails)."""

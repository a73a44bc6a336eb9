"""Helpers the tests share: local servers started from the OS packages."""

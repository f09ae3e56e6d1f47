"""Tests for fedeye.sites."""

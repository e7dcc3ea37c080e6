"""Releasing a stored version: deploy, smoke-test, canary-promote, rollback and leaving serving safe."""

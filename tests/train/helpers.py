"""Only a forwarding name: the trainer micro config is tests/helpers.py's micro_train_config.

tests/train/test_train.py still imports `micro_config` from here; delete this file once it
imports from tests/helpers.py instead.
"""
from tests.helpers import micro_train_config as micro_config  # noqa: F401

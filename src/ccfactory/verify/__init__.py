"""The shipped verification suite: ``pytest --pyargs ccfactory.verify --pyinfra-inventory INV``."""

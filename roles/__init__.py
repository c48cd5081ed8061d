"""ccfactory roles, one per deploy stage. Import them as ``ccfactory.roles.<stage>``."""

# pyinfra puts the working directory on sys.path, so a clone could import this
# directory a second time as top-level "roles"; refuse, so there is one copy.
if __name__ == "roles":
    raise ImportError("import ccfactory.roles, not the top-level 'roles' directory")

"""The whole site, stage by stage: pyinfra inventories/<site>.py deploy/site.py

Stages run in order; each is also a deploy of its own (deploy/<stage>.py). A last step
registers the KBS reference values that only this run's smoke checks could supply (the SNP
launch measurement is learned from the runtime's log of the smoke-check VM; the kbs stage ran
before any guest): nothing to do on a converged site (docs/reference-values.md).
"""

from ccfactory.deploys import register_learned_reference_values, run_stages

run_stages(["preflight", "firmware", "host", "gpu", "kbs", "runtime", "verify"])
register_learned_reference_values()
